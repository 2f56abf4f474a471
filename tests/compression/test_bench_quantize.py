"""`bench quantize`: every engine gets quality, speed and size in one JSON object with ours, peer and
ratio (a tiny run: the figures themselves come from the full benchmark)."""

import json

from transformer_lab.cli.main import main


def test_bench_quantize_json_rows(shared_data, capsys):
    assert main(["bench", "quantize", "--task", "embed", "--data", str(shared_data / "sst2"), "--limit", "24",
                 "--variants", "dynamic,static-kl,dynamic-emb", "--batch", "2", "--length", "16", "--steps", "1",
                 "--rounds", "1", "--calib-samples", "16", "--threads", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"ours", "peer", "ratio"} <= set(r) and r["peer_name"] in ("torch.ao", "ort-int8")
    assert r["threads"] == 1  # (--threads: figures on cores other work shares swung 60x)
    rows = r["rows"]
    assert set(rows) == {"fp32", "dynamic", "static-kl", "dynamic-emb", "torch.ao", "ort-fp32", "ort-int8"}
    assert rows["fp32"]["min_cosine_to_fp32"] == 1.0 and rows["ort-fp32"]["min_cosine_to_fp32"] > 0.9999
    assert rows["dynamic"]["min_cosine_to_fp32"] > 0.97  # per-token activations keep MiniLM close
    assert rows["fp32"]["linear_weight_bytes"] > 3.9 * rows["dynamic"]["linear_weight_bytes"]
    assert rows["dynamic-emb"]["model_bytes"] < 0.3 * rows["fp32"]["model_bytes"]  # the table is half the model
    assert all(row["batch_per_s"] > 0 and row["single_per_s"] > 0 for row in rows.values())
