"""Checkpoint folders (``runs.checkpoint``): round trip, atomic replacement, what a crash or a full disk
leaves behind, and files that are damaged, crafted or contradict each other: each refused with a
message naming the file, never a traceback, never silently."""

import errno
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import padded_batch
from transformer_lab.data.vocab import Vocab
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.gpt import GPT, GPTConfig
from transformer_lab.models.presets import preset
from transformer_lab.models.registry import register_model_kind
from transformer_lab.models.transformer import Transformer
from transformer_lab.runs import clean_stale_temporaries, load_model, load_train_state, save_checkpoint


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("tiny", src_vocab_size=10, tgt_vocab_size=10, **kw))


def test_checkpoint_round_trip_and_atomic_replace(tmp_path):
    vocab = Vocab([str(i) for i in range(20)])
    model = Transformer(preset("tiny", src_vocab_size=len(vocab), tgt_vocab_size=len(vocab))).eval()
    save_checkpoint(tmp_path / "ckpt", model, {"step": 1}, {"vocab.json": vocab.save})
    with torch.no_grad():
        model.encoder.layers[0].ffn.w_1.weight.add_(1.0)
    save_checkpoint(tmp_path / "ckpt", model, {"step": 2}, {"vocab.json": vocab.save})  # replaces the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or .old left
    ck = load_model(tmp_path / "ckpt")
    assert ck.meta["step"] == 2 and Vocab.load(ck.path / "vocab.json").itos == vocab.itos
    src, tgt = padded_batch(2, 5, len(vocab)), padded_batch(2, 4, len(vocab))
    torch.testing.assert_close(ck.model.eval()(src, tgt), model(src, tgt), atol=0, rtol=0)
    assert ck.model.generator.proj.weight is ck.model.src_embed.token.weight  # tying survives


@pytest.mark.parametrize("model", [
    lambda: GPT(GPTConfig(vocab_size=50, max_len=16, d_model=16, n_heads=2, n_layers=1, d_ff=32)),
    lambda: Bert(BertConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16, pretraining_heads=True)),
], ids=["gpt", "bert"])
def test_tied_heads_round_trip(tmp_path, model):
    """The LM head (GPT) and MLM decoder (BERT) are modules tied to the embedding table: stored once,
    tied again on load."""
    m = model().eval()
    save_checkpoint(tmp_path / "c", m, {})
    got = load_model(tmp_path / "c").model.eval()
    x = torch.randint(1, 50, (2, 7))
    if isinstance(m, GPT):
        assert got.lm_head.weight is got.embed.token.weight
        torch.testing.assert_close(got(x), m(x), atol=0, rtol=0)
    else:
        assert got.mlm.decoder.weight is got.embed.token.weight
        torch.testing.assert_close(got(x).mlm_logits, m(x).mlm_logits, atol=0, rtol=0)


def test_wrapped_and_derived_models_are_saved_as_their_kind(tmp_path):
    """The registry of model kinds: a torch.compile wrapper is taken off (the plain model is saved),
    a subclass (a model with replaced layers) is its base kind, an unknown class is a clear error,
    and a new kind can register itself."""
    m = tiny().eval()
    save_checkpoint(tmp_path / "compiled", torch.compile(m), {})  # wrapping compiles nothing until called
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["model_type"] == "transformer"
    assert set(load_model(tmp_path / "compiled").model.state_dict()) == set(m.state_dict())

    class Adapted(Transformer):
        pass

    save_checkpoint(tmp_path / "derived", Adapted(m.config), {})
    assert type(load_model(tmp_path / "derived").model) is Transformer
    with pytest.raises(ValueError, match="no checkpoint format for Linear.*register_model_kind"):
        save_checkpoint(tmp_path / "x", torch.nn.Linear(2, 2), {})
    with pytest.raises(ValueError, match="already registered"):
        register_model_kind("gpt", BertConfig, Bert)


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nowhere")
    model = Transformer(preset("tiny", src_vocab_size=10, tgt_vocab_size=10))
    save_checkpoint(tmp_path / "c", model, {})
    (tmp_path / "c" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_model(tmp_path / "c")
    save_checkpoint(tmp_path / "d", model, {})
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["d_ff"] = 64
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="d_ff: 64 in config.json, 512 in the weights"):
        load_model(tmp_path / "d")
    # weights saved without their config (before the metadata existed): the shapes still catch it
    import safetensors.torch

    weights = tmp_path / "d" / "model.safetensors"
    safetensors.torch.save_file(safetensors.torch.load_file(str(weights)), str(weights))
    with pytest.raises(ValueError, match="do not fit the config; shape mismatch"):
        load_model(tmp_path / "d")


@pytest.mark.parametrize("key, value", [("n_heads", 2), ("pad_id", 1), ("layer_norm_eps", 1e-6),
                                        ("activation", "gelu"), ("norm_first", True)])
def test_config_that_contradicts_the_weights_is_refused(tmp_path, key, value):
    """Issue 9, item 7: values that change the function but no shape (heads, padding id, LayerNorm ε,
    activation, norm placement) edited into config.json were accepted silently; the weights' own copy
    of the config now catches them."""
    save_checkpoint(tmp_path / "c", tiny(), {})
    path = tmp_path / "c" / "config.json"
    cfg = json.loads(path.read_text())
    assert cfg[key] != value
    path.write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=f"config.json: contradicts .*{key}: {value!r} in config.json"):
        load_model(tmp_path / "c")
    path.write_text(json.dumps({**cfg, "attention_impl": "reference"}))  # a kernel choice, not the function
    assert load_model(tmp_path / "c").model.config.attention_impl == "reference"


@pytest.mark.parametrize("name, content, message", [
    ("config.json", "[1, 2]", "expected a JSON object, got list"),
    ("config.json", "{not json", "not valid JSON"),
    ("meta.json", "{\"step\": ", "not valid JSON"),
    ("model.safetensors", "garbage", "not a readable safetensors file"),
])
def test_damaged_files_are_named(tmp_path, name, content, message):
    """Issue 9, item 7: a corrupt meta.json or a config.json holding a list gave tracebacks that did
    not name the file."""
    save_checkpoint(tmp_path / "c", tiny(), {})
    (tmp_path / "c" / name).write_text(content)
    with pytest.raises(ValueError, match=f"{name}: {message}"):
        load_model(tmp_path / "c")


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this would create the file


@pytest.mark.parametrize("content", ["empty", "truncated", "crafted", "not a state"])
def test_damaged_or_crafted_training_state_is_refused(tmp_path, content):
    """Issue 9, item 7: an empty or truncated train_state.pt gave a traceback; a crafted pickle was
    refused (weights_only) with a message suggesting weights_only=False. Now: a clear error naming
    the file, the crafted object never runs, and no advice to unpickle it."""
    from transformer_lab.training.state import rng_state

    save_checkpoint(tmp_path / "c", tiny(), {}, train_state={"optimizer": {}, "scheduler": {}, "rng": rng_state(),
                                                              "trainer": {}, "train_config": {}})
    state = tmp_path / "c" / "train_state.pt"
    good = state.read_bytes()
    marker = tmp_path / "pwned"
    if content == "empty":
        state.write_bytes(b"")
    elif content == "truncated":
        state.write_bytes(good[: len(good) // 2])
    elif content == "crafted":
        state.write_bytes(pickle.dumps({"optimizer": _WritesAFile(str(marker))}))
    else:
        torch.save({"weights": torch.zeros(2)}, state)
    with pytest.raises(ValueError) as e:
        load_train_state(tmp_path / "c")
    assert str(state) in str(e.value) and "weights_only=False" not in str(e.value)
    assert not marker.exists()


def test_a_save_that_fails_keeps_the_previous_checkpoint_and_leaves_nothing(tmp_path, monkeypatch):
    """Issue 9, item 7: a full disk during a save gave a traceback and left a temporary folder
    keeping the disk full. Now: an OSError naming the checkpoint and the cause, the temporary folder
    removed, the previous checkpoint intact."""
    import safetensors.torch

    save_checkpoint(tmp_path / "c", tiny(), {"step": 1})

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", disk_full)
    with pytest.raises(OSError, match=r"c: could not write the checkpoint .*No space left on device") as e:
        save_checkpoint(tmp_path / "c", tiny(), {"step": 2})
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert load_model(tmp_path / "c").meta["step"] == 1
    # torch.save's message for a full disk does not say so ("unexpected pos ..."): the free space does
    monkeypatch.setattr(safetensors.torch, "save_model", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5772736 vs 5772624")))
    with pytest.raises(OSError, match=r"unexpected pos .*MiB free on its disk"):
        save_checkpoint(tmp_path / "c", tiny(), {"step": 2})


def test_file_size_limit_during_training_is_a_clean_error(tmp_path):
    """The same through the command line, with a real write failure: the process may write files of
    200 kB at most (RLIMIT_FSIZE), so the 3.7 MB weights cannot be written. One line on stderr naming
    the checkpoint, exit 2, no traceback, no temporary folder."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from transformer_lab.cli.main import main\n"
        f"sys.exit(main(['train', '--out', {str(tmp_path / 'run')!r}, '--max-steps', '2', '--n-test', '10', "
        "'--no-progress']))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "could not write the checkpoint" in res.stderr and "File too large" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))


def test_kill_during_a_save_never_loses_the_last_good_checkpoint(tmp_path, monkeypatch):
    """RELIABILITY 16: a save that dies at its last rename, twice in a row, leaves step 1 readable."""
    import pathlib

    model = Transformer(preset("tiny", src_vocab_size=10, tgt_vocab_size=10))
    save_checkpoint(tmp_path / "c", model, {"step": 1})
    real_rename = pathlib.Path.rename

    def dying_rename(self, target):
        if self.name.startswith(".c.tmp"):
            raise KeyboardInterrupt("killed")  # as if the process died here
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", dying_rename)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path / "c", model, {"step": 2})
        assert load_model(tmp_path / "c").meta["step"] == 1
    monkeypatch.undo()
    save_checkpoint(tmp_path / "c", model, {"step": 3})
    assert load_model(tmp_path / "c").meta["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # the killed saves' folders are gone


def test_crash_between_renames_falls_back_to_the_previous_checkpoint(tmp_path):
    model = Transformer(preset("tiny", src_vocab_size=10, tgt_vocab_size=10))
    save_checkpoint(tmp_path / "c", model, {"step": 7})
    (tmp_path / "c").rename(tmp_path / "c.old")  # as if killed after the first rename
    (tmp_path / ".c.tmp-123").mkdir()  # and a partial new one
    assert load_model(tmp_path / "c").meta["step"] == 7


def test_stale_temporary_folders_of_dead_writers_are_removed(tmp_path):
    """Issue 9, item 3: killed saves left `.last.tmp-PID` folders behind for good. A dead process's
    (and this process's own) are removed before the next save; a live writer's stay."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    for pid in (dead_pid, os.getpid(), os.getppid()):
        (tmp_path / f".last.tmp-{pid}").mkdir()
        (tmp_path / f".last.tmp-{pid}" / "model.safetensors").write_bytes(b"x" * 1000)
    removed = clean_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".last.tmp-{dead_pid}", f".last.tmp-{os.getpid()}"])
    assert [p.name for p in tmp_path.iterdir()] == [f".last.tmp-{os.getppid()}"]  # alive: not ours to delete
