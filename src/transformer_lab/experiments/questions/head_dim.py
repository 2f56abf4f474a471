"""`head-dim`: why reduce the width per head?

With h heads of width d_k = d_model / h, the four projections stay d_model × d_model: multi-head
attention costs about what one full-width head costs. Keeping every head at full width (d_k = d_model)
multiplies the Q, K, V projections' output and W_O's input by h. Measured: parameters, FLOPs (counted)
and forward time (measured) of one attention layer, for h heads of width d/h and of width d, against
one head of width d.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.bench.harness import time_rounds
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.nn.attention import MultiHeadAttention


def attention_flops(t: int, d: int, h: int, dh: int) -> int:
    """Multiply-adds ×2 of one self-attention layer over t tokens: Q, K, V, O projections and QKᵀ, AV."""
    return 2 * (4 * t * d * h * dh + 2 * h * t * t * dh)


class HeadDim(Experiment):
    id = "head-dim"
    question_zh = "为什么在进行多头注意力的时候需要对每个head进行降维？"
    question = "Why reduce the width per head?"
    claim = "keeps total cost near one full-width head"
    rule = ("Confirmed if h heads of width d/h have within 1.1× the parameters and FLOPs of one head of width d and "
            "take at most 1.5× its measured forward time, while h heads of full width d cost at least 0.75·h× its "
            "parameters (the reduction is what keeps the cost flat); refuted if the reduced heads cost more than "
            "that.")
    budgets = {"smoke": dict(d_model=64, heads=[4], tokens=32, batch=2, steps=2, rounds=1),
               "quick": dict(d_model=512, heads=[8], tokens=128, batch=8, steps=5, rounds=3),
               "full": dict(d_model=512, heads=[2, 4, 8, 16], tokens=256, batch=8, steps=10, rounds=5)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        d, t = s["d_model"], s["tokens"]
        x = torch.randn(s["batch"], t, d)
        rows = []
        for h in s["heads"]:
            variants = {"one head, width d": MultiHeadAttention(d, 1), f"{h} heads, width d/h": MultiHeadAttention(d, h),
                        f"{h} heads, width d": MultiHeadAttention(d, h, d_head=d)}
            fns = {}
            for name, mha in variants.items():
                mha.eval()
                fns[name] = (lambda m: lambda: m(x, x))(mha)
            with torch.no_grad():
                times = time_rounds(fns, s["steps"], s["rounds"])
            for name, mha in variants.items():
                rows.append(dict(heads=h, variant=name, params=sum(p.numel() for p in mha.parameters()),
                                 flops=attention_flops(t, d, mha.n_heads, mha.d_head), seconds=times[name]))
        return {"rows": rows, "d_model": d, "tokens": t}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        rows = m["rows"]
        worst = None
        ok, full_cost = True, []
        for h in sorted({r["heads"] for r in rows}):
            one, reduced, full = (r for r in rows if r["heads"] == h)
            p_ratio, f_ratio, t_ratio = (reduced[k] / one[k] for k in ("params", "flops", "seconds"))
            ok &= p_ratio <= 1.1 and f_ratio <= 1.1 and t_ratio <= 1.5
            full_cost.append(full["params"] / one["params"] / h)
            worst = (h, p_ratio, t_ratio, full["params"] / one["params"], full["seconds"] / one["seconds"])
        h, p_ratio, t_ratio, full_p, full_t = worst
        needed = min(full_cost) >= 0.75
        because = (f"{h} heads of width d/h: {p_ratio:.2f}× the parameters and {t_ratio:.2f}× the time of one full-width "
                   f"head; {h} heads of width d: {full_p:.1f}× the parameters and {full_t:.1f}× the time")
        outcome = "confirmed" if ok and needed else "refuted" if not ok else "partly"
        return Verdict(outcome, because, {"params, h·(d/h) vs 1·d": round(p_ratio, 3), "time, h·(d/h) vs 1·d": round(t_ratio, 3),
                                          "params, h·d vs 1·d": round(full_p, 2), "time, h·d vs 1·d": round(full_t, 2)})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        rows = m["rows"]
        path = folder / "head_dim.png"
        with figure(path, f"One attention layer, d_model={m['d_model']}, {m['tokens']} tokens", ncols=3,
                    width=4.2) as axes:
            names = [r["variant"] for r in rows]
            for ax, key, label in zip(axes, ("params", "flops", "seconds"), ("parameters", "FLOPs", "forward time (s)")):
                ax.barh(names, [r[key] for r in rows])
                ax.set_xlabel(label)
                ax.tick_params(axis="y", labelsize=8)
        return [path]
