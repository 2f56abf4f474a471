"""The trainer: exact resume, gradient accumulation, signals, the fused loss, the schedules."""

import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from conftest import sigterm_at
from transformer_lab.data.synthetic import DateTask
from transformer_lab.data.batches import ShuffledBatches, make_batch
from transformer_lab.data.vocab import Vocab
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.runs import load_model
from transformer_lab.training.losses import label_smoothed_cross_entropy, label_smoothed_nll
from transformer_lab.training.schedules import warmup_cosine_lr, warmup_linear_lr
from transformer_lab.tasks.translation import seq2seq_loss
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.loop import Trainer

VOCAB = Vocab(DateTask.symbols())
PAIRS = DateTask(first_year=1990, last_year=1990, n_test=5).pairs()[0]  # 360 pairs


def model(**kw) -> Transformer:
    torch.manual_seed(3)
    return Transformer(preset("tiny", src_vocab_size=len(VOCAB), tgt_vocab_size=len(VOCAB), d_model=32,
                              d_ff=64, n_heads=2, **kw))


def trainer(tmp, steps, m=None, **kw) -> Trainer:
    cfg = TrainConfig(max_steps=steps, warmup=5, log_every=1, progress=False, accumulate=2, **kw)
    # 360 pairs / 32 = 11 batches per epoch: with accumulate=2, resume lands mid-epoch and crosses epochs
    return Trainer(m or model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp, seq2seq_loss(cfg.label_smoothing))


def test_resume_is_exact(tmp_path):
    """RELIABILITY 14-15: N steps straight == N/2 steps, a new process state, resume, N/2 steps:
    the same losses and the same weights, bit for bit (dropout on, so the RNG matters too)."""
    straight = trainer(tmp_path / "a", 14)
    straight.fit()
    first = trainer(tmp_path / "b", 7)
    first.fit()
    torch.manual_seed(12345)  # disturb the RNG: resume must restore it
    second = trainer(tmp_path / "b", 14)
    second.resume(tmp_path / "b" / "checkpoints" / "last")
    second.fit()
    losses = lambda t: [r["loss"] for r in t.state.history if "loss" in r]  # noqa: E731
    assert losses(second) == losses(straight)
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.state.epoch == straight.state.epoch == 2  # crossed epoch boundaries (11 batches each)
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_resume_errors(tmp_path):
    t = trainer(tmp_path / "a", 2)
    t.fit()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        trainer(tmp_path / "b", 4).resume(tmp_path / "nowhere")
    other = Transformer(preset("tiny", src_vocab_size=len(VOCAB), tgt_vocab_size=len(VOCAB)))
    with pytest.raises(ValueError, match="model differs"):
        trainer(tmp_path / "c", 4, m=other).resume(tmp_path / "a" / "checkpoints" / "last")


def test_resume_from_another_kind_of_model_is_a_clear_error(tmp_path):
    """A GPT run resumed into a Transformer's trainer: an error naming both (was an AttributeError on
    the config's fields)."""
    from transformer_lab.models.gpt import GPT, GPTConfig
    from transformer_lab.runs import save_checkpoint

    save_checkpoint(tmp_path / "gpt", GPT(GPTConfig(vocab_size=len(VOCAB), max_len=16, d_model=16, n_heads=2, n_layers=1,
                                                    d_ff=32)), {"step": 0})
    with pytest.raises(ValueError, match="holds a GPT model, this run trains a Transformer"):
        trainer(tmp_path / "b", 4).resume(tmp_path / "gpt")


def test_resume_without_the_runs_adapter_is_a_clear_error(tmp_path):
    """A LoRA run resumed without --peft lora: an error naming the adapter (was a RuntimeError listing
    some 50 missing and unexpected state-dict keys)."""
    from transformer_lab.adapters import AdapterConfig, apply_adapter

    first = trainer(tmp_path / "a", 2, m=apply_adapter(model(), AdapterConfig(method="lora")))
    first.fit()
    with pytest.raises(ValueError, match=r"checkpoint holds a lora adapter and this run has none: resume with"):
        trainer(tmp_path / "b", 4).resume(tmp_path / "a")
    # another seed only: the message names that field, not two whole configurations
    with pytest.raises(ValueError, match=r"differs from this run's: \{'seed': \(0, 6\)\}"):
        trainer(tmp_path / "c", 4, m=apply_adapter(model(), AdapterConfig(method="lora", seed=6))).resume(tmp_path / "a")
    # a full run resumed with an adapter: named, not printed as {'': (None, AdapterConfig(...))}
    trainer(tmp_path / "full", 2).fit()
    with pytest.raises(ValueError, match=r"checkpoint has no adapter and this run adds a lora adapter: that is a new run"):
        trainer(tmp_path / "d", 4, m=apply_adapter(model(), AdapterConfig(method="lora"))).resume(tmp_path / "full")


def test_a_decaying_schedule_resumed_longer_takes_the_new_schedules_rate_at_once(tmp_path):
    """A linear schedule of 10 steps resumed to 20: the first resumed step trained at the old schedule's end
    rate (0), not the new one's; the rate of every step now follows the schedule of the run's length."""
    first = trainer(tmp_path / "a", 10, schedule="linear", lr=1e-3)
    first.fit()
    second = trainer(tmp_path / "a", 20, schedule="linear", lr=1e-3)
    second.resume(tmp_path / "a")
    second.fit()
    rates = {r["step"]: r["lr"] for r in second.state.history if "lr" in r}
    for step in (11, 12, 20):
        assert rates[step] == pytest.approx(warmup_linear_lr(step, 1e-3, 5, 20)), step


def test_resume_warns_of_changed_settings(tmp_path, caplog):
    """RELIABILITY 17: changed hyper-parameters on resume are a warning listing them: the task's own
    settings (recorded by the task: its data and batching) and, for a schedule that decays over the
    run, a new length (the rest of the schedule is stretched over it)."""
    def cosine_run(n: int, n_test: int, **more) -> Trainer:
        return Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1),
                       TrainConfig(max_steps=n, warmup=2, schedule="cosine", lr=1e-3, log_every=1, progress=False),
                       tmp_path / "a", seq2seq_loss(0.0), settings={"n_test": n_test, "data": "100:abc", **more})

    cosine_run(4, 10).fit()
    with caplog.at_level("WARNING", logger="transformer_lab.training.loop"):
        cosine_run(8, 1000).resume(tmp_path / "a")
    text = caplog.text
    assert "'max_steps': (4, 8)" in text
    assert "changed data or task settings" in text and "'n_test': (10, 1000)" in text and "'data'" not in text
    caplog.clear()
    with caplog.at_level("WARNING", logger="transformer_lab.training.loop"):
        cosine_run(4, 10).resume(tmp_path / "a")
    assert "changed" not in caplog.text
    # a setting the checkpoint has and the task no longer records is no change (an older run's "steps"); one
    # the task records now and the checkpoint lacks is (a form of data that did not exist then)
    cosine_run(4, 10, steps=4).fit()
    caplog.clear()
    with caplog.at_level("WARNING", logger="transformer_lab.training.loop"):
        cosine_run(4, 10).resume(tmp_path / "a")
    assert "changed" not in caplog.text
    with caplog.at_level("WARNING", logger="transformer_lab.training.loop"):
        cosine_run(4, 10, pairs="segments").resume(tmp_path / "a")
    assert "'pairs': (None, 'segments')" in caplog.text


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """k micro-batches of b vs one batch of k·b, float64, dropout off: same gradients (1e-10 rel)."""
    batch_pairs = PAIRS[:24]
    m1 = model(dropout=0.0, attention_dropout=0.0).double()
    m2 = model(dropout=0.0, attention_dropout=0.0).double()
    t1, t2 = trainer(tmp_path / "a", 1, m1), trainer(tmp_path / "b", 1, m2)
    t1.backward([make_batch(batch_pairs, VOCAB)])
    t2.backward([make_batch(batch_pairs[i : i + 8], VOCAB) for i in (0, 8, 16)])
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-10, atol=1e-14, msg=name)


def test_signal_saves_once_and_stops(tmp_path, monkeypatch):
    """RELIABILITY 19: SIGTERM mid-step finishes the step, saves, stops; a second signal does not save twice."""
    t = trainer(tmp_path, 50)
    saves = []
    real_save = t.save
    monkeypatch.setattr(t, "save", lambda *a, **k: saves.append(a) or real_save(*a, **k))
    sigterm_at(t, 3, monkeypatch, times=2)
    result = t.fit()
    assert result.stopped_by == "signal" and result.signum == signal.SIGTERM
    assert t.state.step == 4 and len(saves) == 1
    assert (tmp_path / "checkpoints" / "last" / "train_state.pt").is_file()


def test_a_run_stopped_between_log_rows_records_its_last_step(tmp_path, monkeypatch):
    """A run stopped (signal, time budget) before its next log row wrote no row for its last steps, and one
    stopped before its first wrote no plots: metrics.csv now ends at the step the run stopped at, and the
    plots are drawn from it."""
    from transformer_lab.training.records import read_metrics_csv

    cfg = TrainConfig(max_steps=50, warmup=5, log_every=20, progress=False)
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path, seq2seq_loss(0.1))
    sigterm_at(t, 6, monkeypatch)
    assert t.fit().stopped_by == "signal" and t.state.step == 7
    rows = [r for r in read_metrics_csv(tmp_path / "metrics.csv", 50) if r.get("loss") is not None]
    assert [r["step"] for r in rows] == [7] and math.isfinite(rows[0]["loss"])
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "lr.png").is_file()


def test_fused_loss_equals_readable_loss():
    logits = torch.randn(3, 5, 17, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 17, (3, 5))
    target[0, 3:] = 0
    a = label_smoothed_cross_entropy(logits, target, 0.1, 0)
    b = label_smoothed_nll(F.log_softmax(logits, -1), target, 0.1, 0)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.nll, b.nll)
    ga, = torch.autograd.grad(a.loss, logits)
    gb, = torch.autograd.grad(b.loss, logits)
    torch.testing.assert_close(ga, gb)


def compiled_through_written_out_loss(fn, *args):
    """``fn(*args)`` under torch.compile, asserting that the trace went through _SmoothedCrossEntropy."""
    from transformer_lab.training.losses import _SmoothedCrossEntropy

    torch._dynamo.reset()
    traced = []
    original = _SmoothedCrossEntropy.forward

    def spy(ctx, *a):
        traced.append(torch.compiler.is_compiling())
        return original(ctx, *a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_SmoothedCrossEntropy, "forward", staticmethod(spy))
        out = torch.compile(fn, dynamic=False)(*args)
    assert traced and all(traced)  # the compiled call went through the written-out loss
    return out


def test_compiled_cpu_loss_equals_torch_cross_entropy():
    """The written-out loss and gradient the compiled CPU path takes, called directly, against
    F.cross_entropy(label_smoothing, ignore_index) and autograd's gradient of it; then
    label_smoothed_cross_entropy compiled against itself eager."""
    from transformer_lab.training.losses import _SmoothedCrossEntropy

    logits = (4 * torch.randn(6, 7, 23, dtype=torch.float64)).requires_grad_()
    target = torch.randint(1, 23, (6, 7))
    target[2, 4:] = 0
    flat, tgt = logits.reshape(-1, 23), target.reshape(-1)
    loss, nll = _SmoothedCrossEntropy.apply(flat, tgt, 0.1, 0)
    ref = F.cross_entropy(flat, tgt, ignore_index=0, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(nll, F.cross_entropy(flat, tgt, ignore_index=0, reduction="sum"))
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(ref, logits)[0],
                               rtol=1e-12, atol=1e-12)  # (q built in the logits' dtype)
    # epsilon = 0 with a -inf logit: finite, as F.cross_entropy (no 0 * inf smoothing term)
    z = flat.detach().clone()
    z[0, 5] = float("-inf")
    unsmoothed, _ = _SmoothedCrossEntropy.apply(z, tgt.masked_fill(tgt == 5, 6), 0.0, 0)
    torch.testing.assert_close(unsmoothed, F.cross_entropy(z, tgt.masked_fill(tgt == 5, 6), ignore_index=0,
                                                           reduction="sum"))

    x = logits.detach().float().requires_grad_()
    compiled = compiled_through_written_out_loss(lambda z, t: label_smoothed_cross_entropy(z, t, 0.1, 0), x, target)
    eager = label_smoothed_cross_entropy(x, target, 0.1, 0)
    assert compiled.n_tokens == eager.n_tokens == 39
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(compiled.nll, eager.nll, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(compiled.loss, x)[0], torch.autograd.grad(eager.loss, x)[0],
                               rtol=1e-5, atol=1e-6)


def test_language_models_compiled_loss_is_the_written_out_one_and_equals_torch():
    """cross_entropy_sum (the LM task's loss): F.cross_entropy's sum eagerly; compiled on a CPU, traced
    through _SmoothedCrossEntropy at epsilon 0, with the same value and gradient."""
    from transformer_lab.training.losses import cross_entropy_sum

    from transformer_lab.data.batches import LMBatch
    from transformer_lab.models.gpt import GPT, GPTConfig
    from transformer_lab.tasks.lm import lm_loss

    x = (3 * torch.randn(40, 31)).requires_grad_()
    y = torch.randint(0, 31, (40,))
    y[:5] = -100  # ignored rows, as F.cross_entropy's default
    eager = cross_entropy_sum(x, y)
    torch.testing.assert_close(eager, F.cross_entropy(x, y, reduction="sum"))
    compiled = compiled_through_written_out_loss(cross_entropy_sum, x, y)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(compiled, x)[0], torch.autograd.grad(eager, x)[0],
                               rtol=1e-5, atol=1e-6)
    # the LM task's loss itself, compiled as the Trainer compiles it
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=31, max_len=16, d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0,
                        attention_dropout=0.0))
    ids = torch.randint(0, 31, (3, 9))
    batch = LMBatch(ids[:, :-1], ids[:, 1:])
    res = compiled_through_written_out_loss(lambda b: lm_loss(gpt, b, torch.device("cpu")), batch)
    torch.testing.assert_close(res.loss, F.cross_entropy(gpt(batch.x).flatten(0, 1), batch.y.flatten(), reduction="sum"),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("step", [1, 50, 100, 101, 550, 1000])
def test_linear_and_cosine_schedules(step):
    warm, total, peak = 100, 1000, 3e-4
    expect_lin = peak * step / warm if step < warm else peak * (total - step) / (total - warm)
    assert warmup_linear_lr(step, peak, warm, total) == pytest.approx(expect_lin)
    progress = (step - warm) / (total - warm)
    expect_cos = peak * step / warm if step < warm else peak * 0.5 * (1 + math.cos(math.pi * progress))
    assert warmup_cosine_lr(step, peak, warm, total) == pytest.approx(expect_cos)


def test_low_precision_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="GPU feature"):
        trainer(tmp_path, 1, precision="bf16")


def test_fp16_loss_scaling_skips_an_overflowing_step(tmp_path):
    """RELIABILITY 6 (the fp16 path, run on CPU via allow_cpu_low_precision; CUDA runs the same
    code with device "cuda"): a step whose scaled gradients overflow changes no weight and no
    optimizer state, halves the scale, and training goes on with finite losses."""
    cfg = TrainConfig(max_steps=4, warmup=5, log_every=1, progress=False, precision="fp16")
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path, seq2seq_loss(0.1),
                allow_cpu_low_precision=True)
    t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    t.train_step(*t._next_batches())  # one good step
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    scale = t.scaler.get_scale()
    original = t.loss_fn

    def overflowing(m, b, device):
        res = original(m, b, device)
        res.loss = res.loss * 1e34  # finite in fp32 (~1e37), inf once scaled by 2^16
        return res

    t.loss_fn = overflowing
    steps_before = t.optimizer.state_dict()["state"][0]["step"].item()
    t.train_step(*t._next_batches())
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    assert t.scaler.get_scale() == scale / 2
    assert t.optimizer.state_dict()["state"][0]["step"].item() == steps_before  # Adam did not step
    t.loss_fn = original
    row = t.train_step(*t._next_batches())
    assert math.isfinite(row["loss"])
    assert any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def nan_from_step(t: Trainer, step: int) -> None:
    """Make ``t``'s loss NaN from optimizer step ``step`` on."""
    original = t.loss_fn

    def loss_fn(m, b, device):
        res = original(m, b, device)
        if t.state.step + 1 >= step:
            res.loss = res.loss * float("nan")
        return res

    t.loss_fn = loss_fn


def test_a_non_finite_loss_stops_the_run_before_it_reaches_the_weights(tmp_path):
    """RELIABILITY: on a CPU the loss is read back every step: a NaN at step 3 stops the run there, its
    weights those of step 2."""
    cfg = TrainConfig(max_steps=6, warmup=5, log_every=1, progress=False)
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path, seq2seq_loss(0.1))
    nan_from_step(t, 3)
    seen = {}
    t.model.register_forward_pre_hook(lambda m, a: seen.update({t.state.step: {k: v.clone() for k, v in m.state_dict().items()}}))
    with pytest.raises(FloatingPointError, match="loss is nan at step 3; stopped before it reached the weights"):
        t.fit()
    assert t.state.step == 2
    assert all(torch.equal(seen[2][k], v) for k, v in t.model.state_dict().items())


def test_on_a_gpu_the_step_reads_nothing_back_and_a_non_finite_loss_stops_at_the_next_write(tmp_path, monkeypatch):
    """Issue 14 (no host sync in a GPU step; its logic run here on a CPU with the GPU's setting): neither the
    trainer nor the loss reads a tensor back to the host in a step (the loss stays on the device until a log
    row; the models' own checks: test_host_reads.py; the batch's token count is read
    from the batch on the host); a NaN from step 3 stops the run at the next log row (step 4), before step
    4's checkpoint, naming the steps."""
    import traceback

    cfg = TrainConfig(max_steps=8, warmup=5, log_every=4, save_every=4, progress=False)
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path, seq2seq_loss(0.1))
    t.defer_finite_check = True
    reads = []

    def reading(original, name):
        def read(self, *a):
            caller = traceback.extract_stack()[-2]
            if caller.filename.endswith(("training/loop.py", "training/losses.py", "tasks/translation.py")):
                reads.append(f"{name} at {caller.filename}:{caller.lineno}")
            return original(self, *a)
        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, reading(getattr(torch.Tensor, name), name))
    t.train_step(*t._next_batches())
    monkeypatch.undo()
    assert not reads, reads
    t.state.step = 1
    nan_from_step(t, 3)
    with pytest.raises(FloatingPointError, match="not finite at step 3 \\(seen at step 4"):
        t.fit()
    assert t.state.step == 4 and not t.run.checkpoint().exists()
    clean = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path / "clean", seq2seq_loss(0.1))
    clean.defer_finite_check, clean.cfg.max_steps = True, 4
    clean.fit()
    assert clean.run.checkpoint().exists()  # (the same run without a NaN writes that checkpoint)


def test_bf16_autocast_trains(tmp_path):
    """The bf16 autocast path (CPU here, opted in): matmuls run in bf16, the loss in fp32, and
    the loss falls."""
    cfg = TrainConfig(max_steps=30, warmup=5, log_every=1, progress=False, precision="bf16", lr=2.0)
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path, seq2seq_loss(0.1),
                allow_cpu_low_precision=True)
    seen = []
    hook = t.model.encoder.layers[0].ffn.w_1.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    t.fit()
    hook.remove()
    assert seen and seen[0] == torch.bfloat16
    losses = [r["loss"] for r in t.state.history if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights stay fp32


def test_resume_with_weight_decay_switched_is_a_clear_error(tmp_path):
    t = trainer(tmp_path / "a", 2)
    t.fit()
    other = trainer(tmp_path / "b", 4, weight_decay=0.1)
    with pytest.raises(ValueError, match="weight decay was switched"):
        other.resume(tmp_path / "a" / "checkpoints" / "last")


def test_signal_during_validation_stops_at_once(tmp_path):
    """Issue 9, item 8: SIGTERM during LM training waited for a whole validation pass (13 s) before
    exiting. A validation pass is abandoned at the signal (it changes nothing), the step's checkpoint
    is written, and the loop stops."""
    import time

    state = {"validations": 0}

    def slow_validation(model):
        state["validations"] += 1
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):  # a 10-second pass, in small pieces as a real one over batches
            time.sleep(0.05)
        return {"val_loss": 1.0}

    cfg = TrainConfig(max_steps=50, warmup=5, log_every=1, progress=False, eval_every=3)
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path, seq2seq_loss(0.1), slow_validation)
    t0 = time.perf_counter()
    result = t.fit()
    assert time.perf_counter() - t0 < 8  # not the 10 s of the validation pass
    assert result.stopped_by == "signal" and result.signum == signal.SIGTERM and t.state.step == 3
    assert state["validations"] == 1  # no second (final) validation after the signal
    assert (tmp_path / "checkpoints" / "last" / "train_state.pt").is_file()
    assert not (tmp_path / "checkpoints" / "best").exists()  # the abandoned pass's figures are dropped


def test_a_validation_cut_by_a_signal_is_done_on_resume(tmp_path):
    """A signal during a validation abandoned it, and the resumed run never did it: its row was missing
    from metrics.csv and "best" and --patience could differ from an uninterrupted run's. The checkpoint
    now remembers it; the resumed run validates first, and its history equals the straight run's."""
    def validation(model, signal_at=None):
        if signal_at is not None and t.state.step == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        with torch.no_grad():
            return {"val_loss": float(sum(p.double().square().sum() for p in model.parameters()))}

    import time

    cfg = TrainConfig(max_steps=9, warmup=5, log_every=1, progress=False, eval_every=3)
    straight = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path / "a", seq2seq_loss(0.1),
                       validation)
    straight.fit()
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path / "b", seq2seq_loss(0.1),
                lambda m: validation(m, signal_at=6))
    assert t.fit().stopped_by == "signal" and t.state.step == 6 and t.state.pending_eval
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path / "b", seq2seq_loss(0.1), validation)
    t.resume(tmp_path / "b")
    t.fit()
    rows = lambda tr: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s") and v is not None}  # noqa: E731
                       for r in tr.state.history]  # (rows read back from metrics.csv hold every column)
    assert rows(t) == rows(straight)
    assert [r["step"] for r in rows(t) if "val_loss" in r] == [3, 6, 9]


def test_a_run_on_another_rank_writes_nothing(tmp_path):
    """The Runtime seam: only the main process writes checkpoints, metrics and plots."""
    from transformer_lab.runtime import Runtime

    class SecondRank(Runtime):
        rank = 1

    cfg = TrainConfig(max_steps=2, warmup=5, log_every=1, progress=False)
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path / "r", seq2seq_loss(0.1),
                runtime=SecondRank("cpu"))
    assert t.fit().state.step == 2 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage", [dict(optimizer=5), dict(trainer={"step": "x", "bogus": 1}), dict(rng={})])
def test_a_state_that_does_not_fit_is_a_clear_error(tmp_path, damage):
    """A training state with the right entries but wrong contents (crafted, or from another program)
    is one ValueError naming the file, not a KeyError or TypeError from deep inside."""
    t = trainer(tmp_path / "a", 2)
    t.fit()
    path = tmp_path / "a" / "checkpoints" / "last" / "train_state.pt"
    state = torch.load(path, weights_only=True)
    torch.save({**state, **damage}, path)
    with pytest.raises(ValueError, match="train_state.pt: does not fit this run"):
        trainer(tmp_path / "b", 4).resume(tmp_path / "a")


def test_compiled_training_takes_the_eager_steps(tmp_path):
    """``TrainConfig.compile``: the task's loss with the model inside under torch.compile (forward and
    backward through inductor) against the same steps eager, dropout off: the same losses within float
    rounding, and a checkpoint of the plain model (no compiled wrapper is saved)."""
    torch._dynamo.reset()
    eager = trainer(tmp_path / "eager", 3, dropout=0.0)
    eager.fit()
    compiled = trainer(tmp_path / "compiled", 3, dropout=0.0, compile=True)
    assert compiled._compiled_loss is not None  # the loss (and the model inside it) compiled
    compiled.fit()
    losses = lambda t: [r["loss"] for r in t.state.history if "loss" in r]  # noqa: E731
    assert max(abs(a - b) for a, b in zip(losses(eager), losses(compiled))) < 1e-5, (losses(eager), losses(compiled))
    a, b = eager.model.state_dict(), compiled.runtime.unwrap(compiled.model).state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a if not k.endswith("w_k.bias")) < 1e-4
    saved = load_model(tmp_path / "compiled" / "checkpoints" / "last").model.state_dict()
    assert all(torch.equal(saved[k], b[k]) for k in saved)
    dropped = trainer(tmp_path / "dropout", 3, dropout=0.1, compile=True)  # hashed masks (nn/dropout.py)
    dropped.fit()
    assert all(math.isfinite(x) for x in losses(dropped)) and losses(dropped)[0] != losses(compiled)[0]


def test_the_recipe_is_logged_and_kept_readable_with_the_checkpoint(tmp_path, caplog):
    """A run says what it trains with (the task's recipe and the command line's changes) and its
    checkpoint's meta.json keeps it, readable without torch."""
    import json
    t = trainer(tmp_path / "a", 2, schedule="cosine", lr=3e-4, min_lr=3e-5, weight_decay=0.1, dropout=0.0)
    with caplog.at_level("INFO"):
        t.fit()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe:"))
    assert line == ("recipe: 2 steps, cosine lr 0.0003 to 3e-05, warm-up 5, AdamW wd 0.1 beta2 0.98, clip 1, fp32, "
                    "label smoothing 0.1, dropout 0, 2 micro-batches per step")
    meta = json.loads((tmp_path / "a" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["train_config"]["weight_decay"] == 0.1 and meta["train_config"]["max_steps"] == 2


def test_resuming_a_finished_run_adds_no_second_validation(tmp_path):
    """A resume with no step left to take validated again: each no-op resume appended the same row to
    metrics.csv, and counted one more validation without improvement toward --patience."""
    def validation(m):
        return {"val_loss": 1.0}

    cfg = TrainConfig(max_steps=4, warmup=2, log_every=1, progress=False, eval_every=2, patience=3)
    for _ in range(3):
        t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path, seq2seq_loss(0.1), validation)
        if (tmp_path / "checkpoints").is_dir():
            t.resume(tmp_path)
        t.fit()
    assert [r["step"] for r in t.state.history if r.get("val_loss") is not None] == [2, 4]
    assert t.state.bad_evals == 1


def test_the_training_rate_leaves_out_validations_and_saves(tmp_path, monkeypatch):
    """tokens/s (summary.json's, and each metrics.csv row's) counted the validations inside its window: the
    row after one showed half the rate. They are now kept out, as fairseq's wps does; elapsed_s stays the
    wall clock the time budget reads. On a clock the test moves (a step: 10 ms, a validation: 500 ms), so
    the rates are exact."""
    import time

    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    tokens = {}

    def slow_validation(model):
        clock[0] += 0.5
        return {"val_loss": 1.0}

    cfg = TrainConfig(max_steps=7, warmup=5, log_every=1, progress=False, eval_every=2, save_every=100)
    t = Trainer(model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), cfg, tmp_path, seq2seq_loss(0.1), slow_validation)
    step = t.train_step

    def timed_step(*batches):
        row = step(*batches)
        clock[0] += 0.01
        tokens[len(tokens) + 1] = row["tokens"]
        return row

    monkeypatch.setattr(t, "train_step", timed_step)
    result = t.fit()
    st = result.state
    assert st.paused_s == pytest.approx(1.5) and st.elapsed_s == pytest.approx(7 * 0.01 + 1.5)  # validations: 2, 4, 6
    assert result.tokens_per_s == pytest.approx(sum(tokens.values()) / 0.07)
    rates = {r["step"]: r["tokens_per_s"] for r in st.history if r.get("tokens_per_s") is not None}
    assert rates == {s: pytest.approx(n / 0.01, rel=1e-3) for s, n in tokens.items()}  # (3, 5, 7 held a validation)


def test_a_resumed_runs_time_budget_counts_from_its_own_start(tmp_path, monkeypatch):
    """--time-budget read the run's whole elapsed time, the earlier commands' included: a run its budget
    stopped, resumed with the same budget, trained one more step and stopped again. The budget is the
    command's (a job's wall-clock limit). On a clock the test moves, 10 ms a step: a budget of 35 ms
    stops each command after 4 steps."""
    import time

    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def timed(t: Trainer) -> Trainer:
        step = t.train_step
        monkeypatch.setattr(t, "train_step", lambda *b: (clock.__setitem__(0, clock[0] + 0.01), step(*b))[1])
        return t

    first = timed(trainer(tmp_path / "a", 20, time_budget_s=0.035, save_every=100))
    assert first.fit().stopped_by == "time_budget" and first.state.step == 4
    second = timed(trainer(tmp_path / "a", 20, time_budget_s=0.035, save_every=100))
    second.resume(tmp_path / "a" / "checkpoints" / "last")
    assert second.fit().stopped_by == "time_budget" and second.state.step == 8
    assert second.state.elapsed_s == pytest.approx(0.08)  # (the run's whole time is still kept)
