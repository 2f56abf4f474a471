"""`sinusoids`: why sine and cosine positions?

The paper's reason (§3.5): "for any fixed offset k, PE(pos+k) can be represented as a linear function
of PE(pos)". With ω_i = 10000^(-2i/d), each pair (sin ωp, cos ωp) moves to (sin ω(p+k), cos ω(p+k))
by a rotation by ωk that depends on k only; and so PE(pos)·PE(pos+k) = Σ cos(ω_i k) depends on k only.
Measured: both identities on the table the model uses, and how the dot product falls off with k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.nn.positions import sinusoid_table


def rotation(table: torch.Tensor, k: int) -> torch.Tensor:
    """M(k): the block-diagonal 2x2 rotations built from PE(k) alone. Shapes: -> (D, D)."""
    d = table.size(1)
    sin_k, cos_k = table[k, 0::2], table[k, 1::2]
    m = torch.zeros(d, d, dtype=table.dtype)
    i = torch.arange(0, d, 2)
    m[i, i], m[i, i + 1] = cos_k, sin_k
    m[i + 1, i], m[i + 1, i + 1] = -sin_k, cos_k
    return m


class Sinusoids(Experiment):
    id = "sinusoids"
    question_zh = "为什么用三角函数表示位置编码？为什么使用sin和cos？"
    question = "Why sine and cosine positions?"
    claim = "PE(pos+k) is a linear function of PE(pos), so relative positions are easy to learn"
    rule = ("The measurable part of the claim: confirmed if, on the model's own table, PE(pos+k) = M(k)·PE(pos) with "
            "M(k) built from PE(k) alone holds to within 1e-4 (max abs error, float32 table) for every pos and k "
            "tested, and PE(pos)·PE(pos+k) varies with pos by less than 1e-3 of d_model for each k (it depends on "
            "the offset only); refuted if either fails. Whether relative positions are then learned is not measured "
            "here (see `positions`).")
    budgets = {"smoke": dict(d_model=64, positions=128, offsets=[1, 5, 32]),
               "quick": dict(d_model=512, positions=1024, offsets=[1, 2, 5, 17, 64, 100, 250]),
               "full": dict(d_model=512, positions=4096, offsets=[1, 2, 5, 17, 64, 100, 250, 1000])}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        d, n = s["d_model"], s["positions"]
        table = sinusoid_table(n + max(s["offsets"]), d)  # what the model adds (float32)
        rows = []
        for k in s["offsets"]:
            pos = torch.arange(n)
            err = float((table[pos] @ rotation(table, k).T - table[pos + k]).abs().max())
            dots = (table[pos] * table[pos + k]).sum(-1)
            rows.append(dict(k=k, rotation_error=err, dot_mean=float(dots.mean()), dot_std=float(dots.std())))
        offsets = torch.arange(0, min(n, 512))
        curve = (table[0] * table[offsets]).sum(-1)
        return {"rows": rows, "d_model": d, "dot_by_offset": curve.tolist()}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        err = max(r["rotation_error"] for r in m["rows"])
        std = max(r["dot_std"] for r in m["rows"]) / m["d_model"]
        linear, relative = err <= 1e-4, std <= 1e-3
        because = (f"PE(pos+k) = M(k)·PE(pos) to within {err:.1e} for every pos and k; PE(pos)·PE(pos+k) varies with pos "
                   f"by {std:.1e} of d_model at most, so it is a function of k alone")
        return Verdict("confirmed" if linear and relative else "refuted", because,
                       {"max |M(k)·PE(pos) − PE(pos+k)|": f"{err:.2e}", "max std over pos of PE·PE / d_model": f"{std:.2e}"})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "sinusoids.png"
        table = sinusoid_table(128, m["d_model"])
        with figure(path, "Sinusoidal positions: PE(i)·PE(j) depends on i − j only", ncols=2) as (a1, a2):
            im = a1.imshow((table @ table.T).numpy(), cmap="viridis")
            a1.set_xlabel("position j")
            a1.set_ylabel("position i")
            a1.figure.colorbar(im, ax=a1, label="PE(i)·PE(j)")
            a2.plot(m["dot_by_offset"])
            a2.set_xlabel("offset k")
            a2.set_ylabel("PE(0)·PE(k)")
        return [path]
