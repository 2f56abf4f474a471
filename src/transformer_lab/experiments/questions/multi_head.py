"""`multi-head`: why several heads, not one?

h heads of width d/h cost what one head of width d costs (see `head-dim`), but each can attend to a
different place: one head averages its values with one set of weights per query, h heads with h.
Measured on the date task at a fixed d_model: held-out quality for h ∈ {1, ...}, and how far each head
of the trained model looks (mean |i − j| under its attention): do the heads differ?
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.data.batches import make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data, encoder_attention, sweep, values


@torch.no_grad()
def head_distances(model, src: torch.Tensor) -> list[list[float]]:
    """Per encoder layer, per head: the mean attention distance Σ_j w_ij |i − j| over real queries."""
    real = src != 0
    out = []
    for w in encoder_attention(model, src):  # (B, H, S, S)
        s = w.size(-1)
        dist = (torch.arange(s)[:, None] - torch.arange(s)[None, :]).abs().float()
        per_query = (w * dist).sum(-1)  # (B, H, S)
        mask = real[:, None, :].expand_as(per_query)
        out.append([float(per_query[:, h][mask[:, h]].mean()) for h in range(w.size(1))])
    return out


class MultiHead(Experiment):
    id = "multi-head"
    question_zh = "Transformer为何使用多头注意力机制？为什么不使用一个头？"
    question = "Why several heads, not one?"
    claim = "heads attend to different subspaces, like CNN filters; \"sometimes one head is enough\""
    rule = ("The date task's model at a fixed d_model with h heads, seeds as the budget says. Confirmed if the best "
            "h > 1 reaches a lower held-out NLL than h = 1, beyond the spread, and the heads of the trained "
            "multi-head model differ (their mean attention distances span at least 1.5×); refuted if one head is "
            "better beyond the spread; inconclusive if the NLL difference stays inside the spread (then one head "
            "is enough here).")
    budgets = {"smoke": dict(steps=20, seeds=1, heads=[1, 4], n_test=20),
               "quick": dict(steps=380, seeds=2, heads=[1, 2, 8], n_test=200),
               "full": dict(steps=2000, seeds=3, heads=[1, 2, 4, 8, 16], n_test=1000)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        variants = {f"h={h}": {"model": {"n_heads": h}} for h in s["heads"]}
        runs = sweep(ctx, variants, s["seeds"], s["steps"], self.id, n_test=s["n_test"])
        _, test, vocab = dates_data((1900, 2099), s["n_test"])
        widest = f"h={max(s['heads'])}"
        return {"runs": runs, "distances": head_distances(ctx.models[widest], make_batch(test, vocab).src),
                "distances_of": widest}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        runs = m["runs"]
        one = values(runs["h=1"], "val_nll")
        multi = {n: values(r, "val_nll") for n, r in runs.items() if n != "h=1"}
        best = min(multi, key=lambda n: mean_spread(multi[n])[0])
        d = differs(multi[best], one)
        spans = [max(layer) / max(min(layer), 1e-9) for layer in m["distances"]]
        diverse = max(spans) >= 1.5
        because = (f"held-out NLL {fmt(*mean_spread(one))} with one head, {fmt(*mean_spread(multi[best]))} with {best}; "
                   f"the heads of {m['distances_of']} look {min(min(x) for x in m['distances']):.1f}–"
                   f"{max(max(x) for x in m['distances']):.1f} positions away on average")
        if d < 0 and diverse:
            outcome = "confirmed"
        elif d > 0:
            outcome = "refuted"
        elif d < 0:
            outcome = "partly"
        else:
            outcome = "inconclusive"
        return Verdict(outcome, because, {"NLL, 1 head": round(mean_spread(one)[0], 4),
                                          f"NLL, {best}": round(mean_spread(multi[best])[0], 4),
                                          "head distance span (max/min), widest layer": round(max(spans), 2)})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "multi_head.png"
        names = list(m["runs"])
        with figure(path, "Heads on the date task (fixed d_model)", ncols=2) as (a1, a2):
            stats = [mean_spread(values(m["runs"][n], "val_nll")) for n in names]
            a1.bar(names, [x[0] for x in stats], yerr=[x[1] for x in stats])
            a1.set_ylabel("held-out NLL per token")
            for i, layer in enumerate(m["distances"]):
                a2.plot(range(1, len(layer) + 1), layer, "o-", label=f"encoder layer {i + 1}")
            a2.set_xlabel(f"head ({m['distances_of']})")
            a2.set_ylabel("mean attention distance (positions)")
            a2.legend()
        return [path]
