"""`layernorm`: why LayerNorm, not BatchNorm?

LayerNorm normalises each token over its own D features; BatchNorm normalises each feature over the
batch's tokens, so a token's output depends on the other sentences in the batch — on their padding
too, when pad positions enter the statistics — and at test time it uses running averages gathered in
training. The canon's reasons: padding and variable lengths corrupt the batch statistics, and small
batches make them noisy. Measured on the date task's model (post-LN, as the paper) with LayerNorm,
BatchNorm with padding in its statistics (what ``nn.BatchNorm1d`` on the tokens does) and BatchNorm
with masked statistics (real tokens only), at a small and a large batch size: held-out NLL in eval
mode (BatchNorm on its running statistics). And directly: the same held-out sentences padded ever
longer, how far the padding-included mean of each normalised feature moves from the real tokens' mean;
and how far the running means used at test time sit from the held-out tokens' own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from transformer_lab.data.batches import make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data, sweep
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.layers import TokenBatchNorm

NORMS = {"LayerNorm": "layer", "BatchNorm, padding in statistics": "batch", "BatchNorm, masked statistics": "batch-masked"}
SHIFT_THRESHOLD = 0.1  # mean |Δμ| / σ over the features: a tenth of a standard deviation


def _name(norm: str, batch: int) -> str:
    return f"{norm}, batch {batch}"


def _norms(model: Transformer) -> list[tuple[str, TokenBatchNorm]]:
    """Every BatchNorm of the blocks, with the side whose padding it sees ("src" or "tgt")."""
    out = [("src", sl.norm) for layer in model.encoder.layers for sl in layer.sublayers]
    out += [("tgt", sl.norm) for layer in model.decoder.layers for sl in layer.sublayers]
    return [(side, norm) for side, norm in out if isinstance(norm, TokenBatchNorm)]


@torch.no_grad()
def norm_inputs(model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm's input on one teacher-forced pass in eval mode (dropout off, so a real token's
    input does not depend on the padding: padded keys are masked), with its real-token mask."""
    model.eval()
    real = {"src": src != model.config.pad_id, "tgt": tgt_in != model.config.pad_id}
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [norm.register_forward_pre_hook(lambda mod, args, side=side: seen.append((args[0], real[side])))
               for side, norm in _norms(model)]
    try:
        model(src, tgt_in)
    finally:
        for h in handles:
            h.remove()
    return seen


def mean_shift(x: torch.Tensor, real: torch.Tensor, mean: torch.Tensor | None = None) -> float:
    """How far a mean sits from the real tokens' per-feature mean, in their standard deviations
    (averaged over the D features): ``mean`` given, or the mean over every position, padding included."""
    flat, keep = x.reshape(-1, x.size(-1)), real.reshape(-1)
    mu_real, sd_real = flat[keep].mean(0), flat[keep].std(0, unbiased=False)
    other = flat.mean(0) if mean is None else mean
    return float(((other - mu_real).abs() / (sd_real + 1e-5)).mean())


def padding_shift(model: Transformer, pairs, vocab, extra_pads: list[int]) -> list[dict[str, float]]:
    """The same sentences with ``k`` more pad columns on both sides: the padding share of the batch and the
    shift of the padding-included batch mean (mean over the model's BatchNorms)."""
    batch = make_batch(pairs, vocab)
    rows = []
    for k in extra_pads:
        src = torch.nn.functional.pad(batch.src, (0, k), value=vocab.pad_id)  # (B, S + k)
        tgt = torch.nn.functional.pad(batch.tgt_in, (0, k), value=vocab.pad_id)  # (B, T + k)
        shifts = [mean_shift(x, real) for x, real in norm_inputs(model, src, tgt)]
        pads = int((src == vocab.pad_id).sum() + (tgt == vocab.pad_id).sum())
        rows.append(dict(extra_pads=k, pad_share=pads / (src.numel() + tgt.numel()), shift=sum(shifts) / len(shifts)))
    return rows


def running_shift(model: Transformer, pairs, vocab) -> float:
    """Train/test mismatch: how far the running means BatchNorm uses at test time sit from the held-out
    real tokens' own means (mean over the model's BatchNorms)."""
    batch = make_batch(pairs, vocab)
    inputs = norm_inputs(model, batch.src, batch.tgt_in)
    shifts = [mean_shift(x, real, norm.running_mean) for (x, real), (_, norm) in zip(inputs, _norms(model))]
    return sum(shifts) / len(shifts)


def scored(rows: list[dict], vocab_size: int) -> list[float]:
    """Held-out NLL per seed; a diverged run scores what a uniform guess scores (ln V)."""
    return [math.log(vocab_size) if r["diverged"] else r["val_nll"] for r in rows]


class LayerNormQuestion(Experiment):
    id = "layernorm"
    question_zh = "为什么Transformer块使用LayerNorm而不是BatchNorm？"
    question = "Why LayerNorm, not BatchNorm?"
    claim = "padding and variable lengths corrupt batch statistics; small batches"
    rule = ("The date task's model with LayerNorm, BatchNorm with padding in its statistics and BatchNorm with masked "
            "statistics, at the budget's smallest and largest batch size; held-out NLL in eval mode (a diverged run "
            "scores ln V). Padding part: padding the same held-out sentences longer moves the padding-included mean "
            f"of the normalised features by at least {SHIFT_THRESHOLD} of the real tokens' standard deviation (mean "
            "over features and BatchNorms) at the largest padding share, and at the largest batch size BatchNorm with "
            "padding in its statistics ends with a higher NLL than with masked statistics, beyond the spread over "
            "seeds. Small-batch part: at the smallest batch size masked BatchNorm ends higher than LayerNorm beyond "
            "the spread, and its per-seed gap to LayerNorm is larger there than at the largest batch size, beyond "
            "the spread. Confirmed if both parts hold; partly if one; refuted if neither holds and no BatchNorm ends "
            "higher than LayerNorm beyond the spread at any batch size; inconclusive otherwise.")
    budgets = {"smoke": dict(batch_sizes=[8, 16], steps=8, seeds=1, n_test=20, extra_pads=[0, 16]),
               "quick": dict(batch_sizes=[8, 64], steps=250, seeds=2, n_test=100, extra_pads=[0, 6, 12, 24, 48]),
               "full": dict(batch_sizes=[4, 16, 64], steps=1000, seeds=3, n_test=500, extra_pads=[0, 6, 12, 24, 48])}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        runs: dict[str, list[dict]] = {}
        for b in s["batch_sizes"]:
            variants = {_name(n, b): {"model": {"norm": kind}} for n, kind in NORMS.items()}
            runs.update(sweep(ctx, variants, s["seeds"], s["steps"], f"{self.id} (batch {b})", n_test=s["n_test"],
                              batch_size=b))
        _, test, vocab = dates_data((1900, 2099), s["n_test"])
        held_out = test[:64]
        big = max(s["batch_sizes"])
        padded = ctx.models[_name("BatchNorm, padding in statistics", big)]
        return {"runs": runs, "vocab_size": len(vocab), "batch_sizes": s["batch_sizes"],
                "padding_shift": padding_shift(padded, held_out, vocab, s["extra_pads"]),
                "running_shift": {n: running_shift(ctx.models[_name(n, big)], held_out, vocab)
                                  for n in ("BatchNorm, padding in statistics", "BatchNorm, masked statistics")}}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        small, big = min(m["batch_sizes"]), max(m["batch_sizes"])

        def nll(norm: str, b: int) -> list[float]:
            return scored(m["runs"][_name(norm, b)], m["vocab_size"])

        ln, padded, masked = "LayerNorm", "BatchNorm, padding in statistics", "BatchNorm, masked statistics"
        shift = max(m["padding_shift"], key=lambda r: r["pad_share"])
        stats_move = shift["shift"] >= SHIFT_THRESHOLD
        padding_hurts = differs(nll(padded, big), nll(masked, big)) > 0
        gap = {b: [x - y for x, y in zip(nll(masked, b), nll(ln, b))] for b in (small, big)}
        small_hurts = differs(nll(masked, small), nll(ln, small)) > 0 and differs(gap[small], gap[big]) > 0
        padding_part = stats_move and padding_hurts
        bn_worse = any(differs(nll(n, b), nll(ln, b)) > 0 for n in (padded, masked) for b in m["batch_sizes"])
        because = (f"padding the same sentences to {shift['pad_share']:.0%} padding moves the batch mean by "
                   f"{shift['shift']:.2f} σ; held-out NLL at batch {big}: LayerNorm {fmt(*mean_spread(nll(ln, big)))}, "
                   f"BatchNorm with padding {fmt(*mean_spread(nll(padded, big)))}, masked "
                   f"{fmt(*mean_spread(nll(masked, big)))}; at batch {small}: {fmt(*mean_spread(nll(ln, small)))}, "
                   f"{fmt(*mean_spread(nll(padded, small)))}, {fmt(*mean_spread(nll(masked, small)))}")
        if padding_part and small_hurts:
            outcome = "confirmed"
        elif padding_part or small_hurts:
            outcome = "partly"
        else:
            outcome = "inconclusive" if bn_worse else "refuted"
        return Verdict(outcome, because, {
            "batch-mean shift at the largest padding share (σ)": round(shift["shift"], 3),
            "padding in statistics worse than masked (beyond spread)": padding_hurts,
            "small batches widen BatchNorm's gap to LayerNorm (beyond spread)": small_hurts,
            "some BatchNorm worse than LayerNorm (beyond spread)": bn_worse,
            "running-mean shift from held-out tokens (σ)": {k: round(v, 3) for k, v in m["running_shift"].items()}})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "layernorm.png"
        sizes = m["batch_sizes"]
        with figure(path, "LayerNorm vs BatchNorm on the date task: quality by batch size, and what padding does to "
                          "batch statistics", ncols=3, width=5.0) as (a1, a2, a3):
            width = 0.8 / len(NORMS)
            for i, norm in enumerate(NORMS):
                stats = [mean_spread(scored(m["runs"][_name(norm, b)], m["vocab_size"])) for b in sizes]
                a1.bar([j + i * width for j in range(len(sizes))], [x[0] for x in stats], width,
                       yerr=[x[1] for x in stats], label=norm)
            a1.set_xticks([j + width for j in range(len(sizes))], [f"batch {b}" for b in sizes])
            a1.set_ylabel("held-out NLL per token (nats), eval mode")
            a1.set_title("bars: mean over seeds, whiskers: spread", fontsize=9)
            a1.legend(fontsize=7)
            rows = m["padding_shift"]
            a2.plot([100 * r["pad_share"] for r in rows], [r["shift"] for r in rows], "o-",
                    label="padding in statistics")
            a2.plot([100 * r["pad_share"] for r in rows], [0.0] * len(rows), "s--", label="masked statistics (0 by design)")
            a2.set_xlabel("padding share of the batch's positions (%)")
            a2.set_ylabel("batch-mean shift from the real tokens' mean (σ)")
            a2.legend(fontsize=7)
            names = list(m["running_shift"])
            a3.bar(range(len(names)), [m["running_shift"][n] for n in names])
            a3.set_xticks(range(len(names)), [n.split(", ")[1] for n in names])
            a3.set_ylabel("running mean vs held-out tokens' mean (σ)")
            a3.set_title(f"train/test mismatch at test time (batch {max(sizes)})", fontsize=9)
        return [path]
