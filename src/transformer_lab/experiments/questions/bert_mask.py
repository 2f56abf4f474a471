"""`bert-mask`: why does BERT mask tokens, not attention scores?

The decoder hides what it must not see by masking attention scores (the causal mask). BERT instead
replaces the tokens it asks about with [MASK] and lets every position attend everywhere. Two ways
to "mask in attention" instead, both measured on the small BERT pre-trained on tiny-shakespeare:

- causal attention (the decoder's trick): each position sees only its left context. Compared with
  bidirectional attention at the same steps and seeds: held-out MLM accuracy.
- hide the asked-about token's key from every query, and leave the token in place: the token still
  sits in its own position's residual stream (x + Attention(x)), so the model reads it back from
  there; its MLM accuracy under that condition climbs towards 100% (a leak, not a prediction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._bert_small import (
    held_tokens,
    pretrain,
    tail_mean,
    unigram_accuracy,
)
from transformer_lab.experiments.stats import differs, fmt, mean_spread

VARIANTS = ("bidirectional", "causal")


def smooth(values: list[float], k: int = 4) -> list[float]:
    """Running mean over the last ``k`` values (the per-batch accuracy is noisy)."""
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


class BertMask(Experiment):
    id = "bert-mask"
    question_zh = "bert的mask为何不学习transformer在attention处进行屏蔽score的技巧？"
    question = "Why does BERT mask tokens, not attention scores?"
    claim = "attention masking would hide context; BERT needs bidirectional context"
    rule = ("The small BERT (2 layers, width 128, BERT's uncased vocabulary) pre-trained by MLM on tiny-shakespeare "
            "(speeches as documents) with bidirectional attention and with a causal attention mask (left context "
            "only), the same steps and seeds. Confirmed if the held-out MLM accuracy is higher with bidirectional "
            "attention, beyond the noise (the spread over seeds, and the sampling error of an accuracy over that "
            "many held-out tokens); refuted if it is higher with the causal mask beyond the noise; inconclusive "
            "otherwise. Reported beside it, not deciding: the training MLM accuracy of a run that leaves "
            "the selected tokens in place and hides their keys in attention instead (the leak through the residual "
            "stream).")
    budgets = {"smoke": dict(steps=6, seeds=1, leak_steps=4, held_batches=2),
               "quick": dict(steps=400, seeds=2, leak_steps=100, held_batches=10),
               "full": dict(steps=2000, seeds=3, leak_steps=300, held_batches=21)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        device = str(ctx.device)
        bar = ctx.bar(len(VARIANTS) * s["seeds"] + 1, self.id)
        runs: dict[str, list[dict]] = {}
        for name in VARIANTS:
            rows = []
            for seed in range(ctx.seed, ctx.seed + s["seeds"]):
                pre = pretrain(seed, s["steps"], attention=name, device=device, held_batches=s["held_batches"])
                rows.append(dict(seed=seed, held_mlm_acc=pre.held["mlm_acc"], held_mlm_loss=pre.held["mlm_loss"],
                                 train_steps=list(pre.train_steps), train_mlm_acc=list(pre.train_mlm_acc)))
                bar.update(1)
            runs[name] = rows
        leak = pretrain(ctx.seed, s["leak_steps"], attention="keys hidden", device=device)
        bar.update(1)
        bar.close()
        return {"steps": s["steps"], "runs": runs, "unigram_acc": unigram_accuracy(s["held_batches"]),
                "held_tokens": held_tokens(s["held_batches"]),
                "leak": {"steps": s["leak_steps"], "train_steps": list(leak.train_steps),
                         "train_mlm_acc": list(leak.train_mlm_acc),
                         "final_train_mlm_acc": tail_mean(leak.train_mlm_acc, 4)}}  # its last 20 steps

    def verdict(self, m: dict[str, Any]) -> Verdict:
        bi = [r["held_mlm_acc"] for r in m["runs"]["bidirectional"]]
        causal = [r["held_mlm_acc"] for r in m["runs"]["causal"]]
        d = differs(bi, causal, m["held_tokens"])
        leak = m["leak"]["final_train_mlm_acc"]
        loss_bi = mean_spread([r["held_mlm_loss"] for r in m["runs"]["bidirectional"]])
        loss_causal = mean_spread([r["held_mlm_loss"] for r in m["runs"]["causal"]])
        because = (f"held-out MLM accuracy after {m['steps']} steps: {fmt(*mean_spread(bi))} bidirectional against "
                   f"{fmt(*mean_spread(causal))} with the causal mask (MLM loss {fmt(*loss_bi)} against "
                   f"{fmt(*loss_causal)} nats; always the commonest token: {m['unigram_acc']:.3g}); hiding the "
                   f"selected tokens' keys instead of replacing the tokens lets the model read them back: {leak:.0%} "
                   f"training MLM accuracy after {m['leak']['steps']} steps")
        outcome = "confirmed" if d > 0 else "refuted" if d < 0 else "inconclusive"
        return Verdict(outcome, because, {
            "held-out MLM accuracy, bidirectional / causal": f"{mean_spread(bi)[0]:.3f} / {mean_spread(causal)[0]:.3f}",
            "spread, bidirectional / causal": f"{mean_spread(bi)[1]:.3f} / {mean_spread(causal)[1]:.3f}",
            "held-out tokens": m["held_tokens"], "bidirectional better beyond the noise": d > 0})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "bert_mask.png"
        with figure(path, "MLM with bidirectional vs causal attention, and with the tokens' keys hidden instead of "
                          "[MASK] (small BERT, tiny-shakespeare)", ncols=2) as (a1, a2):
            stats = [mean_spread([100 * r["held_mlm_acc"] for r in m["runs"][n]]) for n in VARIANTS]
            a1.bar_label(a1.bar(VARIANTS, [x[0] for x in stats], yerr=[x[1] for x in stats], capsize=4), fmt="%.1f", padding=6)
            a1.axhline(100 * m["unigram_acc"], color="grey", ls=":", lw=1, label="always the commonest token")
            a1.legend(fontsize=8, loc="lower right")
            a1.set_ylabel("held-out MLM accuracy (% of selected tokens)")
            a1.set_title(f"after {m['steps']} steps (bars: mean over seeds, whiskers: spread)", fontsize=9)
            for name in VARIANTS:
                row = m["runs"][name][0]
                a2.plot(row["train_steps"], smooth([100 * x for x in row["train_mlm_acc"]]),
                        label=f"{name}, tokens replaced")
            leak = m["leak"]
            a2.plot(leak["train_steps"], smooth([100 * x for x in leak["train_mlm_acc"]]),
                    label="bidirectional, keys hidden, tokens left in place")
            a2.set_xlabel("training step (32 pairs each)")
            a2.set_ylabel("training-batch MLM accuracy (%, running mean)")
            a2.set_title("first seed; the leak run is shorter", fontsize=9)
            a2.legend(fontsize=8)
        return [path]
