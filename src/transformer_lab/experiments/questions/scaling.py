"""`scaling`: why divide the scores by √d_k?

For q, k with independent unit-variance components, q·k is a sum of d_k unit-variance products: its
variance is d_k. Unscaled, the logits of a softmax over T keys grow like √d_k; the softmax saturates
(one weight near 1) and its Jacobian, through which every gradient to the scores flows, vanishes.
Measured here on random vectors: the variance, the softmax's peak weight and the norm of its Jacobian
J = diag(p) − p pᵀ, scaled and unscaled, across d_k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure


def softmax_stats(logits: torch.Tensor) -> tuple[float, float]:
    """Mean peak probability and mean Frobenius norm of the softmax Jacobian. Shapes: (N, T)."""
    p = logits.softmax(-1)
    # ||diag(p) - p p^T||_F^2 = sum p_i^2 - 2 sum p_i^3 + (sum p_i^2)^2
    s2, s3 = (p**2).sum(-1), (p**3).sum(-1)
    jac = (s2 - 2 * s3 + s2**2).clamp(min=0).sqrt()
    return float(p.max(-1).values.mean()), float(jac.mean())


class Scaling(Experiment):
    id = "scaling"
    question_zh = "Attention的计算公式中为什么要除以根号dk？维度与点积大小的关系是怎么样的？"
    question = "Why divide by √d_k?"
    claim = "q·k has variance d_k; large scores saturate softmax and its gradients vanish"
    rule = ("Three parts. (a) variance: var(q·k)/d_k in [0.85, 1.15] at every d_k. (b) saturation: unscaled, the "
            "mean peak softmax weight reaches >= 0.9 at the largest d_k, while scaled by 1/√d_k it stays <= 0.2 at "
            "every d_k. (c) vanishing gradient: the unscaled softmax Jacobian norm (the factor every gradient to the "
            "scores passes through) is below half the scaled one both at the largest d_k and at d_k = 64, the "
            "paper's head width. Confirmed if (a), (b) and (c); partly if (a) and (b) but (c) fails at d_k = 64; "
            "refuted if (a) or (b) fails.")
    budgets = {"smoke": dict(d_k=[4, 64, 1024], samples=2000, keys=64),
               "quick": dict(d_k=[4, 16, 64, 256, 1024], samples=20000, keys=64),
               "full": dict(d_k=[2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048], samples=100000, keys=64)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        g = torch.Generator().manual_seed(s["seed"])
        rows = []
        bar = ctx.bar(len(s["d_k"]), self.id)
        for d in s["d_k"]:
            q = torch.randn(s["samples"], d, generator=g)
            k = torch.randn(s["samples"], d, generator=g)
            var = float((q * k).sum(-1).var())
            keys = torch.randn(s["samples"] // 10, s["keys"], d, generator=g)
            logits = torch.einsum("nd,ntd->nt", q[: len(keys)], keys)
            peak_u, jac_u = softmax_stats(logits)
            peak_s, jac_s = softmax_stats(logits / d**0.5)
            rows.append(dict(d_k=d, var=var, var_ratio=var / d, peak_unscaled=peak_u, peak_scaled=peak_s,
                             jacobian_unscaled=jac_u, jacobian_scaled=jac_s))
            bar.update(1)
        bar.close()
        return {"rows": rows}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        rows = m["rows"]
        by_d = {r["d_k"]: r for r in rows}
        ratios = [r["var_ratio"] for r in rows]
        a = all(0.85 <= x <= 1.15 for x in ratios)
        last = rows[-1]
        b = last["peak_unscaled"] >= 0.9 and all(r["peak_scaled"] <= 0.2 for r in rows)
        shrink = {d: r["jacobian_unscaled"] / r["jacobian_scaled"] for d, r in by_d.items()}
        at_64 = shrink.get(64)
        c_last = shrink[last["d_k"]] < 0.5
        c_64 = at_64 is not None and at_64 < 0.5
        deciding = {"var(q·k)/d_k": f"{min(ratios):.3f}..{max(ratios):.3f}",
                    f"peak weight unscaled at d_k={last['d_k']}": round(last["peak_unscaled"], 3),
                    f"Jacobian unscaled/scaled at d_k={last['d_k']}": round(shrink[last["d_k"]], 3),
                    "Jacobian unscaled/scaled at d_k=64": None if at_64 is None else round(at_64, 3)}
        because = (f"var(q·k)/d_k is {min(ratios):.2f}–{max(ratios):.2f}; unscaled, the softmax saturates (peak weight "
                   f"{last['peak_unscaled']:.2f} at d_k={last['d_k']}) and its Jacobian is {shrink[last['d_k']]:.2f}× "
                   f"the scaled one there" + ("" if at_64 is None else f", but {at_64:.2f}× at the paper's d_k=64"))
        if not (a and b):
            outcome = "refuted"
        else:
            outcome = "confirmed" if c_last and c_64 else "partly"
        return Verdict(outcome, because, deciding)

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        rows = m["rows"]
        d = [r["d_k"] for r in rows]
        path = folder / "scaling.png"
        with figure(path, "Why 1/√d_k: score variance, softmax saturation and its gradient", ncols=2) as (a1, a2):
            a1.loglog(d, [r["var"] for r in rows], "o-", label="measured var(q·k)")
            a1.loglog(d, d, "k--", label="d_k")
            a1.set_xlabel("d_k (head width)")
            a1.set_ylabel("variance of q·k")
            a1.legend()
            a2.semilogx(d, [r["jacobian_unscaled"] for r in rows], "o-", label="softmax Jacobian norm, unscaled")
            a2.semilogx(d, [r["jacobian_scaled"] for r in rows], "s-", label="… scaled by 1/√d_k")
            a2.semilogx(d, [r["peak_unscaled"] for r in rows], "o:", label="peak weight, unscaled")
            a2.semilogx(d, [r["peak_scaled"] for r in rows], "s:", label="peak weight, scaled")
            a2.set_xlabel("d_k (head width)")
            a2.set_ylabel("norm / probability")
            a2.legend(fontsize=8)
        return [path]
