"""`causal-mask`: why the sequence (look-ahead) mask?

In training the decoder reads the whole target at once (teacher forcing). Without the look-ahead
mask, position i sees the answer at i+1 and learns to copy it: the training loss looks excellent. At
inference the future does not exist yet, and the copying model has nothing to copy. Measured on the
date task: the same model trained with and without the mask, its teacher-forced loss on held-out
dates, and its greedy translations of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import DATES_BUDGETS, sweep, values


class CausalMask(Experiment):
    id = "causal-mask"
    question_zh = "为什么要用带掩码masked？Decoder阶段的多头自注意力和encoder的有什么区别？"
    question = "Why the sequence (causal) mask?"
    claim = "the decoder must not see future tokens"
    rule = ("The date task's model, trained with and without the decoder's look-ahead mask (seeds as the budget "
            "says). Confirmed if without the mask the teacher-forced held-out loss is lower (beyond the spread: it "
            "copies the future) while the greedy exact match is below half of the masked model's (the future is not "
            "there at inference); partly if only the exact match falls; refuted if it does not fall that far (below "
            "half, and beyond the noise: the spread over seeds and the sampling error of an accuracy over the "
            "held-out dates).")
    budgets = DATES_BUDGETS

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        runs = sweep(ctx, {"causal mask (the paper)": {}, "no mask": {"model": {"decoder_causal": False}}},
                     s["seeds"], s["steps"], self.id, n_test=s["n_test"])
        return {"runs": runs, "steps": s["steps"], "n_test": s["n_test"]}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        masked, peek = m["runs"]["causal mask (the paper)"], m["runs"]["no mask"]
        nll_m, nll_p = values(masked, "val_nll"), values(peek, "val_nll")
        em_m, em_p = values(masked, "exact_match"), values(peek, "exact_match")
        looks_better = differs(nll_p, nll_m) < 0
        fails = differs(em_p, em_m, m["n_test"]) < 0 and mean_spread(em_p)[0] < 0.5 * mean_spread(em_m)[0]
        because = (f"without the mask the teacher-forced held-out loss is {fmt(*mean_spread(nll_p))} (with it "
                   f"{fmt(*mean_spread(nll_m))}) but greedy decoding gets {fmt(*mean_spread(em_p))} of the dates exactly "
                   f"right (with it {fmt(*mean_spread(em_m))})")
        outcome = "confirmed" if looks_better and fails else "partly" if fails else "refuted"
        return Verdict(outcome, because, {"val NLL, no mask / mask": f"{mean_spread(nll_p)[0]:.3f} / {mean_spread(nll_m)[0]:.3f}",
                                          "exact match, no mask / mask": f"{mean_spread(em_p)[0]:.3f} / {mean_spread(em_m)[0]:.3f}"})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "causal_mask.png"
        with figure(path, "Decoder trained with and without the look-ahead mask (date task)", ncols=2) as (a1, a2):
            for name, rows in m["runs"].items():
                a1.plot(rows[0]["losses"], label=name)
            a1.set_xlabel("step")
            a1.set_ylabel("training loss (teacher forcing)")
            a1.set_yscale("log")
            a1.legend()
            names = list(m["runs"])
            a2.bar(names, [mean_spread(values(m["runs"][n], "exact_match"))[0] for n in names],
                   yerr=[mean_spread(values(m["runs"][n], "exact_match"))[1] for n in names])
            a2.set_ylabel("held-out exact match, greedy decoding")
        return [path]
