"""scripts/gpu_summary.py, which turns a gpu_check.sh run into the figures a device call returns: the steady
rate of a training run is measured between its first and last log rows (the first window holds start-up and
compiling), and a bench command's JSON becomes name=value pairs."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_summary.py"


def summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steady_rate_skips_the_first_window_and_names_validation(tmp_path, capsys):
    run = tmp_path / "run_m30k_compile"
    run.mkdir()
    (run / "metrics.csv").write_text(
        "step,epoch,loss,nll,lr,tokens_per_s,elapsed_s,val_loss,val_ppl\n"
        "100,0,5.0,5.0,1e-3,1000.0,60.0,,\n"      # the first window: 60 s of compiling
        "200,0,4.0,4.0,1e-3,9000.0,62.0,,\n"
        "300,0,3.5,3.5,1e-3,11000.0,64.0,,\n"
        "300,0,,,,,,3.4,30.0\n")                  # the final validation
    (run / "summary.json").write_text(json.dumps({"steps": 300, "train_seconds": 64.0, "best_val_loss": 3.4}))
    (tmp_path / "bench_gpt.json").write_text(json.dumps({"ours": 3000.0, "peer": 1500.0, "ratio": 2.0,
                                                         "train": {"ours": 4.5e5, "mfu_ours": 0.41}}))
    (tmp_path / "m30k_compile.json").write_text("")  # a training step prints nothing
    (tmp_path / "status.txt").write_text("bench_gpt rc=0 100 s\n")
    summary().main(str(tmp_path))
    out = capsys.readouterr().out
    assert "steady (steps 100-300): 50.0 steps/s, 10,000 tokens/s" in out
    assert "last loss 3.5000" in out and "best_val_loss=3.4" in out and "include validation" not in out
    assert "bench_gpt: ours=3000 peer=1500 ratio=2 train.ours=4.5e+05 train.mfu_ours=0.41" in out
    assert "\nm30k_compile:" not in out and "bench_gpt rc=0" in out
    with open(run / "metrics.csv", "a") as f:  # a validation between log rows: its time is in the rate
        f.write("350,0,3.0,3.0,1e-3,8000.0,70.0,,\n")
    summary().main(str(tmp_path))
    assert "(the rates include validation passes)" in capsys.readouterr().out
