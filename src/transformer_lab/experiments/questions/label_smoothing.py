"""`label-smoothing`: what label smoothing does.

The paper (§5.4): "label smoothing of value ε_ls = 0.1 ... hurts perplexity, as the model learns to be
more unsure, but improves accuracy and BLEU score." Measured on the date task: ε = 0 and ε = 0.1, the
held-out perplexity (NLL per token) and the exact-match accuracy of greedy translations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread, outcome_of
from transformer_lab.experiments.training import DATES_BUDGETS, sweep, values


class LabelSmoothing(Experiment):
    id = "label-smoothing"
    question_zh = "（标签平滑）"
    question = "Label smoothing"
    claim = "hurts perplexity, helps BLEU (the paper)"
    rule = ("The date task's model trained with ε = 0 and ε = 0.1. Perplexity part: held-out NLL higher with ε = 0.1, "
            "beyond the spread over seeds. Accuracy part: held-out exact match higher with ε = 0.1, beyond the noise "
            "(the spread, and the sampling error of an accuracy over the held-out dates). Confirmed if both parts "
            "hold; partly if one holds; refuted if neither holds and one goes the other way beyond the noise; "
            "inconclusive if neither leaves the noise (experiments.stats.outcome_of).")
    budgets = DATES_BUDGETS

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        runs = sweep(ctx, {"ε = 0": {"train": {"label_smoothing": 0.0}}, "ε = 0.1": {"train": {"label_smoothing": 0.1}}},
                     s["seeds"], s["steps"], self.id, n_test=s["n_test"])
        return {"runs": runs, "n_test": s["n_test"]}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        plain, smooth = m["runs"]["ε = 0"], m["runs"]["ε = 0.1"]
        d_nll = differs(values(smooth, "val_nll"), values(plain, "val_nll"))
        d_em = differs(values(smooth, "exact_match"), values(plain, "exact_match"), m["n_test"])
        because = (f"held-out NLL {fmt(*mean_spread(values(smooth, 'val_nll')))} with ε = 0.1 against "
                   f"{fmt(*mean_spread(values(plain, 'val_nll')))} without; exact match "
                   f"{fmt(*mean_spread(values(smooth, 'exact_match')))} against {fmt(*mean_spread(values(plain, 'exact_match')))}")
        outcome = outcome_of([d_nll, d_em])
        return Verdict(outcome, because, {"perplexity hurt (beyond spread)": d_nll > 0, "accuracy helped (beyond the noise)": d_em > 0,
                                          "NLL ε=0.1 / ε=0": f"{mean_spread(values(smooth, 'val_nll'))[0]:.3f} / "
                                                             f"{mean_spread(values(plain, 'val_nll'))[0]:.3f}"})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "label_smoothing.png"
        names = list(m["runs"])
        with figure(path, "Label smoothing on the date task (bars: mean over seeds, whiskers: spread)", ncols=2) as (a1, a2):
            for ax, key, label in ((a1, "val_nll", "held-out NLL per token (log perplexity)"),
                                   (a2, "exact_match", "held-out exact match")):
                stats = [mean_spread(values(m["runs"][n], key)) for n in names]
                ax.bar(names, [x[0] for x in stats], yerr=[x[1] for x in stats])
                ax.set_ylabel(label)
        return [path]
