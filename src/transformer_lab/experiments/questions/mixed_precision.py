"""`mixed-precision`: mixed precision and gradient accumulation.

Gradient accumulation: k micro-batches of b sentences, the loss normalised by the step's total tokens,
give the gradients of one batch of k·b (exact up to summation order). Mixed precision: matrix products
in bf16 or fp16 under autocast, fp32 master weights, fp16 with a loss scale that skips a step whose
gradients overflow. Measured on the date task's model: the accumulation error in float64, the drift of
the training loss from fp32 after the same steps, the steps fp16 skipped, the time per step on this
device (a CPU's bf16/fp16 matrix units may be slow or absent: time savings are a GPU property), and the
memory: what autograd keeps for the backward pass (counted by a ``saved_tensors_hooks`` on one batch, so
the same on any device), beside the fp32 weights, gradients and Adam moments that mixed precision keeps.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from transformer_lab.data.batches import ShuffledBatches, make_batch
from transformer_lab.data.synthetic import DateTask
from transformer_lab.data.vocab import Vocab
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import outcome_of
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.runtime import Runtime
from transformer_lab.tasks.translation import seq2seq_loss
from transformer_lab.training.config import TrainConfig
from transformer_lab.experiments.training import fit
from transformer_lab.training.loop import Trainer

PRECISIONS = ("fp32", "bf16", "fp16")
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_BATCH = 64  # sentences in the batch whose saved activations are counted


def _model(vocab: Vocab, seed: int, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(preset("tiny", src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), **kw))


def _trainer(model, pairs, vocab, steps: int, precision: str, folder: Path, device: torch.device) -> Trainer:
    cfg = TrainConfig(max_steps=steps, warmup=max(1, steps // 4), lr=1.0, precision=precision, log_every=1,
                      progress=False, save_every=0)
    return Trainer(model, ShuffledBatches(pairs, vocab, 32, seed=0), cfg, folder, seq2seq_loss(0.1),
                   runtime=Runtime(device), allow_cpu_low_precision=True)


def saved_for_backward(model: Transformer, batch, precision: str) -> dict[str, int]:
    """Bytes autograd keeps between the forward and the backward pass of ``batch`` (the output
    log-probabilities included), by dtype: every storage a saved tensor lives in, once, except the parameters' own (they are
    resident anyway); autocast's low-precision copies of the weights count. Counted with
    ``torch.autograd.graph.saved_tensors_hooks``, so the figure does not depend on the device's allocator."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[int, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = (storage.nbytes(), str(t.dtype).removeprefix("torch."))
        return t

    low = LOW.get(precision)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=low or torch.bfloat16, enabled=low is not None):
        model(batch.src, batch.tgt_in)
    by_dtype: dict[str, int] = {}
    for nbytes, dtype in seen.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + nbytes
    return by_dtype


class MixedPrecision(Experiment):
    id = "mixed-precision"
    question_zh = "（混合精度与梯度累积）"
    question = "Mixed precision, gradient accumulation"
    claim = "saves memory and time with little accuracy loss"
    rule = ("Accuracy: gradient accumulation matches one big batch to 1e-9 (relative, float64), and after the same "
            "training steps the bf16 and fp16 losses are within 5% of fp32's (against if not). Memory: the bytes "
            "autograd keeps for the backward pass of one batch of 64 under bf16 autocast are at most 0.75× fp32's "
            "(against if not below them; the fp32 weights, gradients and Adam moments, the same in both, are "
            "reported). Time: a bf16 step takes at most 0.8× an fp32 step on the device the experiment runs on "
            "(against if not below 1×). Confirmed if all three hold; partly if one or two hold; refuted if none holds "
            "(the accuracy part then goes against; experiments.stats.outcome_of).")
    budgets = {"smoke": dict(steps=4, years=[1990, 1991], accumulate=3),
               "quick": dict(steps=40, years=[1990, 1999], accumulate=3),
               "full": dict(steps=300, years=[1950, 2049], accumulate=4)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:  # the trainers' checkpoints are not results
            return self._run(s, ctx, Path(tmp))

    def _run(self, s: dict[str, Any], ctx: Context, folder: Path) -> dict[str, Any]:
        vocab = Vocab(DateTask.symbols())
        pairs = DateTask(first_year=s["years"][0], last_year=s["years"][1], n_test=5).pairs()[0]
        # accumulation, float64, dropout off
        k = s["accumulate"]
        batch = pairs[: 8 * k]
        one, many = (_model(vocab, s["seed"], dropout=0.0, attention_dropout=0.0).double() for _ in range(2))
        _trainer(one, pairs, vocab, 1, "fp32", folder / "acc1", torch.device("cpu")).backward([make_batch(batch, vocab)])
        _trainer(many, pairs, vocab, 1, "fp32", folder / "acc2", torch.device("cpu")).backward(
            [make_batch(batch[i: i + 8], vocab) for i in range(0, len(batch), 8)])
        # relative to the largest gradient entry of the model: some gradients are exactly zero in theory
        # (W_K's bias: softmax ignores a shift common to a row) and only rounding noise in practice
        scale = max(float(b.grad.abs().max()) for b in many.parameters())
        acc_err = max(float((a.grad - b.grad).abs().max()) for a, b in zip(one.parameters(), many.parameters())) / scale
        # memory: what one batch's forward keeps for the backward pass, by precision (dropout off: its masks
        # are the same bytes in both and only add noise to the count)
        model = _model(vocab, s["seed"], dropout=0.0, attention_dropout=0.0)
        batch = make_batch(pairs[:MEMORY_BATCH], vocab)
        saved = {p: saved_for_backward(model, batch, p) for p in PRECISIONS}
        n_params = sum(p.numel() for p in model.parameters())
        runs = {}
        bar = ctx.bar(len(PRECISIONS), self.id)
        for p in PRECISIONS:
            t = _trainer(_model(vocab, s["seed"]), pairs, vocab, s["steps"], p, folder / p, ctx.device)
            result = fit(t)
            rows = [r for r in result.state.history if "loss" in r]
            losses = [r["loss"] for r in rows]
            first = len(rows) // 4  # time per step after a warm-up (the first steps pay one-time costs)
            seconds = (rows[-1]["elapsed_s"] - rows[first]["elapsed_s"]) / max(1, len(rows) - 1 - first)
            runs[p] = dict(losses=losses, seconds_per_step=seconds,
                           loss_scale=float(t.scaler.get_scale()) if p == "fp16" else None)
            bar.update(1)
        bar.close()
        return {"accumulation_rel_error": acc_err, "runs": runs, "device": str(ctx.device), "steps": s["steps"],
                "saved_bytes": saved, "memory_batch": len(batch.src), "parameters": n_params,
                # fp32 weights, gradients and Adam's two moments: kept in fp32 by mixed precision too
                "state_bytes": 16 * n_params}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        runs = m["runs"]
        final = {p: sum(r["losses"][-5:]) / len(r["losses"][-5:]) for p, r in runs.items()}
        drift = {p: abs(final[p] - final["fp32"]) / final["fp32"] for p in ("bf16", "fp16")}
        speed = runs["bf16"]["seconds_per_step"] / runs["fp32"]["seconds_per_step"]
        accurate = m["accumulation_rel_error"] <= 1e-9 and max(drift.values()) <= 0.05
        saved = {p: sum(by_dtype.values()) for p, by_dtype in m["saved_bytes"].items()}
        memory = saved["bf16"] / saved["fp32"]
        whole = (saved["bf16"] + m["state_bytes"]) / (saved["fp32"] + m["state_bytes"])
        low_share = m["saved_bytes"]["bf16"].get("bfloat16", 0) / saved["bf16"]
        because = (f"accumulation matches one batch to {m['accumulation_rel_error']:.0e}; after {m['steps']} steps the "
                   f"loss drifts {drift['bf16']:.1%} (bf16) and {drift['fp16']:.1%} (fp16) from fp32; what a batch of "
                   f"{m['memory_batch']} keeps for backward is {memory:.2f}× fp32's under bf16 ({saved['fp32'] / 2**20:.1f} "
                   f"→ {saved['bf16'] / 2**20:.1f} MiB; {low_share:.0%} of it bf16, the rest what autocast keeps in "
                   f"fp32), {whole:.2f}× with the fp32 weights, gradients and Adam moments "
                   f"({m['state_bytes'] / 2**20:.1f} MiB, unchanged); a bf16 step takes {speed:.1f}× an fp32 step on "
                   f"{m['device']}")
        outcome = outcome_of([1 if accurate else -1, 1 if memory <= 0.75 else -1 if memory >= 1 else 0,
                              1 if speed <= 0.8 else -1 if speed >= 1 else 0])
        return Verdict(outcome, because, {"accumulation error": f"{m['accumulation_rel_error']:.1e}",
                                          "bf16 loss drift": round(drift["bf16"], 4), "fp16 loss drift": round(drift["fp16"], 4),
                                          "bf16/fp32 bytes kept for backward": round(memory, 3),
                                          "bf16/fp32 with weights, gradients, Adam": round(whole, 3),
                                          f"bf16/fp32 step time ({m['device']})": round(speed, 2)})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "mixed_precision.png"
        with figure(path, f"Training loss, step time and memory by precision ({m['device']})", ncols=3) as (a1, a2, a3):
            for p, r in m["runs"].items():
                a1.plot(range(1, len(r["losses"]) + 1), r["losses"], label=p)
            a1.set_xlabel("step")
            a1.set_ylabel("training loss (label-smoothed)")
            a1.legend()
            a2.bar(list(m["runs"]), [r["seconds_per_step"] * 1e3 for r in m["runs"].values()])
            a2.set_ylabel("ms per step")
            names = list(m["saved_bytes"])
            bottom = [0.0] * len(names)
            for dtype in sorted({d for by in m["saved_bytes"].values() for d in by}):
                mib = [m["saved_bytes"][n].get(dtype, 0) / 2**20 for n in names]
                a3.bar(names, mib, bottom=bottom, label=dtype)
                bottom = [b + x for b, x in zip(bottom, mib)]
            a3.axhline(m["state_bytes"] / 2**20, color="grey", ls=":", lw=1, label="fp32 weights, grads, Adam")
            a3.set_ylabel(f"MiB kept for backward (batch of {m['memory_batch']})")
            a3.legend(fontsize=8)
        return [path]
