"""`universal`: why can a network represent anything?

The universal approximation theorem: one hidden layer with a non-polynomial activation approximates
any continuous function on a compact set, given enough units. A demonstration, not a proof: fit
f(x) = sin(3x) + ½ sin(7x) + ¼|x| on [−π, π] with one hidden ReLU layer of growing width, and with
the same layers and no activation (a composition of linear maps is linear).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import mean_spread


def target(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(3 * x) + 0.5 * torch.sin(7 * x) + 0.25 * x.abs()


def fit(width: int, activation: bool, iterations: int, seed: int) -> float:
    """Relative test MSE (MSE / var f) of a one-hidden-layer network fitted to 512 random points with
    L-BFGS in float64 (a 1-D fit is an optimisation problem L-BFGS solves far better than Adam, so the
    error measures what the network can represent rather than how patient the optimiser was)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = (torch.rand(512, 1, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    test = torch.linspace(-math.pi, math.pi, 1000, dtype=torch.float64)[:, None]
    net = nn.Sequential(nn.Linear(1, width), nn.ReLU() if activation else nn.Identity(), nn.Linear(width, 1)).double()
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)
    y = target(x)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((net(x / math.pi) - y) ** 2).mean()  # inputs scaled to [-1, 1]
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        yt = target(test)
        return float(((net(test / math.pi) - yt) ** 2).mean() / yt.var())


class Universal(Experiment):
    id = "universal"
    question_zh = "为什么Neuron Network能够代表任意复杂度的信息？"
    question = "Why can networks represent anything?"
    claim = "universal approximation; nonlinearity"
    rule = ("Mean relative test error (MSE / variance of f) over seeds. Confirmed if the ReLU network's error falls "
            "at least 10× from the narrowest to the widest layer and ends below 0.02, while the same network without "
            "the activation stays above 0.5 at every width; partly if only one of the two holds; refuted otherwise.")
    budgets = {"smoke": dict(widths=[2, 64], iterations=200, seeds=1),
               "quick": dict(widths=[2, 8, 32, 128, 512], iterations=2000, seeds=2),
               "full": dict(widths=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], iterations=4000, seeds=3)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        rows = []
        seeds = [s["seed"] + i for i in range(s["seeds"])]
        bar = ctx.bar(len(s["widths"]) * 2 * len(seeds), self.id)
        for w in s["widths"]:
            for act in (True, False):
                errors = []
                for seed in seeds:
                    errors.append(fit(w, act, s["iterations"], seed))
                    bar.update(1)
                rows.append(dict(width=w, activation="relu" if act else "none", errors=errors))
        bar.close()
        return {"rows": rows}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        relu = [r for r in m["rows"] if r["activation"] == "relu"]
        linear = [r for r in m["rows"] if r["activation"] == "none"]
        first, last = mean_spread(relu[0]["errors"]), mean_spread(relu[-1]["errors"])
        approximates = first[0] / max(last[0], 1e-12) >= 10 and last[0] < 0.02
        linear_best = min(mean_spread(r["errors"])[0] for r in linear)
        needs_nonlinearity = linear_best > 0.5
        because = (f"with ReLU the relative error falls from {first[0]:.3f} (width {relu[0]['width']}) to "
                   f"{last[0]:.4f} ± {last[1]:.4f} (width {relu[-1]['width']}); without an activation it never gets "
                   f"below {linear_best:.2f}")
        outcome = ("confirmed" if approximates and needs_nonlinearity else
                   "partly" if approximates or needs_nonlinearity else "refuted")
        return Verdict(outcome, because, {"ReLU error, widest": round(last[0], 5), "ReLU error, narrowest": round(first[0], 4),
                                          "no activation, best": round(linear_best, 3)})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "universal.png"
        with figure(path, "Fitting f(x) = sin 3x + ½ sin 7x + ¼|x| with one hidden layer") as (ax,):
            for act, style in (("relu", "o-"), ("none", "s--")):
                rows = [r for r in m["rows"] if r["activation"] == act]
                means = [mean_spread(r["errors"]) for r in rows]
                ax.errorbar([r["width"] for r in rows], [x[0] for x in means], yerr=[x[1] for x in means], fmt=style,
                            label="ReLU" if act == "relu" else "no activation (linear)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("hidden units")
            ax.set_ylabel("test MSE / variance of f")
            ax.legend()
        return [path]
