"""The command line: help everywhere, the main job end to end on a short run, the benchmark's JSON."""

import json
import subprocess
import sys

import pytest

from transformer_lab.models.transformer import Transformer

from transformer_lab.cli.main import main
from transformer_lab.tasks import dates

COMMANDS = [[], ["train"], ["model"], ["model", "summary"], ["bench"], ["bench", "model"], ["finetune", "translate"],
            ["peft", "merge"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_on_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: transformer-lab" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "transformer_lab", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "transformer-lab" in out.stdout


def test_train_demo_short_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--max-steps", "60", "--n-test", "40", "--no-progress", "--seed", "3",
               "--json"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out) == summary  # --json: stdout is the summary, one object
    assert summary["steps"] == 60 and summary["n_test"] == 40
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("loss")]) for r in rows[1:]]
    assert losses[-1] < 0.6 * losses[0]  # it learns
    for png in ("loss.png", "lr.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, vocab = dates.load(out / "checkpoints" / "last")
    accuracy, outputs = dates.exact_match(model, dates.DateTask(n_test=40, seed=3).pairs()[1], vocab)
    assert accuracy == summary["exact_match"]  # the checkpoint is the model that was scored
    # 60 steps are too few for exact dates, not for their shape: "the <day> of <month> <year>"
    months = set(dates.DateTask.symbols()) & {"january", "february", "march", "april", "may", "june", "july", "august",
                                               "september", "october", "november", "december"}
    assert all(o[0] == "the" and "of" in o and o[o.index("of") + 1] in months for o in outputs), outputs[:3]


@pytest.mark.parametrize("flag, value", [("--max-steps", "0"), ("--clip-norm", "-1"), ("--lr", "-0.1"),
                                         ("--batch-size", "0"), ("--warmup", "x"), ("--eval-every", "-5"),
                                         ("--time-budget", "0"), ("--label-smoothing", "1.0")])
def test_bad_argument_is_a_clean_error(tmp_path, capsys, flag, value):
    """A value the run cannot use stops the command before any work, naming the flag (exit 2)."""
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "r"), flag, value, "--no-progress"])
    assert e.value.code == 2
    assert f"argument {flag}: expected" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["--schedule", "cosine"], "--lr: --schedule cosine reads --lr as the peak rate"),
    (["--schedule", "noam", "--warmup", "0", "--lr", "1"], "warmup: expected >= 1"),
])
def test_a_recipe_change_that_cannot_mean_what_it_says_is_refused(tmp_path, capsys, args, message):
    """The demo's recipe is noam with lr 1.0, a factor; `--schedule cosine` alone trained at a peak rate of
    1.0 (loss 131, 0% exact match). Switching between noam's reading of --lr and the others' now needs
    --lr; noam cannot take --warmup 0 (its formula divides by it), the other schedules can."""
    assert main(["train", "--out", str(tmp_path / "r"), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_no_warm_up_and_a_warm_up_as_long_as_the_run(tmp_path, caplog):
    """`--warmup 0` under a schedule that reads it as a ramp is a run at full rate from step 1; a warm-up
    longer than the run is a warning: the rate never reaches its peak."""
    import logging

    with caplog.at_level(logging.WARNING):
        assert main(["train", "--out", str(tmp_path / "a"), "--no-progress", "--max-steps", "2", "--n-test", "10",
                     "--schedule", "constant", "--lr", "1e-3", "--warmup", "0"]) == 0
    from transformer_lab.training.records import read_metrics_csv

    rows = [r for r in read_metrics_csv(tmp_path / "a" / "metrics.csv", 2) if r.get("lr") is not None]
    assert rows and all(r["lr"] == pytest.approx(1e-3) for r in rows)  # (a warm-up of w steps: 2/w of it)
    assert "never reaches its peak" not in caplog.text
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--out", str(tmp_path / "b"), "--no-progress", "--max-steps", "2", "--n-test", "10"]) == 0
    assert "the warm-up (400 steps) is as long as the run (2)" in caplog.text


def test_bench_model_json_has_ours_peer_ratio(capsys):
    rc = main(["bench", "model", "--preset", "tiny", "--vocab-size", "100", "--batch", "4", "--length", "8",
               "--steps", "1", "--rounds", "1", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert {"ours", "peer", "ratio"} <= set(result)
    assert result["ratio"] == pytest.approx(result["ours"] / result["peer"], rel=1e-2)
    assert result["inference"]["peer_name"] == "torch.nn.TransformerEncoder"
    assert "mfu_ours" not in result  # no peak known on a CPU


def test_bench_model_mfu_against_a_given_peak_and_bf16_refused_on_cpu(capsys):
    """MFU = (6·N + 12·(L_enc + 2·L_dec)·T·d) FLOPs per target token x tokens/s / peak (issue 14: `bench model`
    takes --device/--precision/--compile and prints MFU)."""
    from transformer_lab.models.presets import preset

    rc = main(["bench", "model", "--preset", "tiny", "--vocab-size", "100", "--batch", "4", "--length", "8",
               "--steps", "1", "--rounds", "1", "--peak-tflops", "2", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    cfg = preset("tiny", src_vocab_size=100, tgt_vocab_size=100)
    n = sum(p.numel() for p in Transformer(cfg).parameters())
    flops = 6 * n + 12 * (cfg.n_encoder_layers + 2 * cfg.n_decoder_layers) * 8 * cfg.d_model
    assert r["mfu_ours"] == pytest.approx(flops * r["ours"] / 2e12, rel=2e-2, abs=1e-4)
    assert r["peak_tflops"] == 2 and r["device"] == "cpu" and r["precision"] == "fp32"
    assert main(["bench", "model", "--preset", "tiny", "--precision", "bf16"]) == 2
    assert "bf16 is a GPU feature" in capsys.readouterr().err


def test_bench_gpt_reports_the_same_tokens_and_mfu_against_a_given_peak(capsys):
    """One GPT-2-shaped layer on the CPU: the generation rows agree token for token with transformers',
    and with ``--peak-tflops`` the training row carries MFU = 6·N + 12·L·T·d FLOPs per token x tokens/s
    / peak. bf16 on a CPU is refused (a GPU feature here)."""
    rc = main(["bench", "gpt", "--n-layers", "1", "--batches", "1", "--prompt-len", "4", "--new-tokens", "2",
               "--train-batch", "1", "--train-len", "8", "--rounds", "1", "--train-rounds", "1",
               "--peak-tflops", "1", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["generate_b1_cache"]["same_tokens"] and res["device"] == "cpu"
    assert res["generate_b1_static"]["same_tokens"]  # static caches on both sides
    flops = 6 * res["parameters"] + 12 * 1 * 8 * 768
    assert res["train"]["mfu_ours"] == pytest.approx(flops * res["train"]["ours"] / 1e12, rel=1e-3, abs=1e-4)
    assert main(["bench", "gpt", "--n-layers", "1", "--precision", "bf16"]) == 2
    assert "GPU feature" in capsys.readouterr().err


@pytest.mark.slow
def test_default_demo_reaches_high_exact_match(tmp_path):
    """The README's main job with its defaults (about 2 minutes on 2 cores)."""
    assert main(["train", "--out", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["exact_match"] >= 0.95


def test_nan_loss_stops_with_a_message_naming_the_step(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "r"), "--max-steps", "20", "--lr", "1e12", "--warmup", "1",
               "--n-test", "10", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "loss is nan at step" in err or "loss is inf at step" in err
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing written from a diverged run


def test_an_unknown_option_is_named_by_its_command(capsys):
    """argparse reported an unknown option with the top-level usage (`transformer-lab [-h] COMMAND`); the
    command that was given it now says so, with its own usage."""
    with pytest.raises(SystemExit) as e:
        main(["finetune", "classify", "--model", "m", "--train", "t", "--dev", "d", "--out", "o", "--bogus", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "usage: transformer-lab finetune classify" in err
    assert "transformer-lab finetune classify: error: unrecognized arguments: --bogus 1" in err


def test_a_bare_command_prints_the_help(capsys):
    """`transformer-lab` alone said "error: the following arguments are required: COMMAND"."""
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


def test_a_folder_or_a_pipe_as_a_data_file(tmp_path, capsys):
    """A folder given as a text file said "no such file"; a pipe (`--text <(zcat a.gz)`) said the same,
    as it is not a regular file. A folder is now named as one, and a pipe reads."""
    import os
    import threading

    from transformer_lab.tokenizers.corpus import read_lines

    assert main(["tokenizer", "train", "--algo", "bpe", "--merges", "5", "--out", str(tmp_path / "t"), str(tmp_path)]) == 2
    assert "a folder, not a file" in capsys.readouterr().err
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("one line\ntwo lines\n"))
    writer.start()
    assert list(read_lines(fifo)) == ["one line", "two lines"]
    writer.join()


def test_threads_sets_torchs_threads(tmp_path, monkeypatch):
    """`--threads N` on a training command, and on the commands that run a model (generate, translate,
    evaluate, serve, embed ... had none): torch computes with N threads (other work may share the cores),
    and main() called in-process leaves torch's count as it found it."""
    import torch

    before, real, seen = torch.get_num_threads(), torch.set_num_threads, []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append((n, torch.get_num_threads())), real(n)))
    assert main(["train", "--out", str(tmp_path / "r"), "--max-steps", "1", "--n-test", "10", "--no-progress",
                 "--threads", "1"]) == 0
    assert main(["translate", "--checkpoint", str(tmp_path / "r"), "--threads", "1", "1987-03-21"]) == 0
    assert seen == [(1, before), (before, 1)] * 2 and torch.get_num_threads() == before


def test_os_errors_read_without_pythons_errno_prefix(tmp_path, capsys):
    """"[Errno 20] afile: a file, not a run folder": an OS error is printed as its message (and its file)."""
    (tmp_path / "afile").write_text("")
    assert main(["train", "--out", str(tmp_path / "afile"), "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a file, not a run folder" in err and "Errno" not in err
    from transformer_lab.cli.main import message

    assert message(FileNotFoundError(2, "No such file or directory", "/x/y")) == "/x/y: No such file or directory"


@pytest.mark.parametrize("args", [["--src", "fr", "--tgt", "en"], ["--max-tokens", "800"], ["--vocab-size", "300"],
                                  ["--context", "16"], ["--bleu-sample", "5"]])
def test_the_demo_refuses_the_options_of_other_tasks(tmp_path, capsys, args):
    """`train --src fr --tgt en` (no --data) trained the dates demo, ignoring both; so did every translation or
    language-model option given to it."""
    assert main(["train", *args, "--out", str(tmp_path / "r"), "--max-steps", "1", "--no-progress"]) == 2
    assert f"{args[0]}" in capsys.readouterr().err and not (tmp_path / "r").exists()
