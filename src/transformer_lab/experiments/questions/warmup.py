"""`warmup`: why a learning-rate warm-up?

The paper (§5.3) raises the rate linearly over the first 4,000 steps, then decays it. The usual
reasons: Adam's second-moment estimates are poor in the first steps (Liu et al. 2020), and a post-LN
Transformer's gradients near the output are large at initialisation (Xiong et al. 2020), so a full
rate at once can wreck the early weights. Measured on the date task's model at a high peak rate, post-LN
(the paper's) and pre-LN, with no warm-up, a short one and a long one (linear warm-up, then linear decay
to zero: every run has the same peak rate and the same sum of rates, peak · steps / 2): how many runs
fail (diverge, or collapse to a context-free guess of the target words) and the training loss they end at.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any


from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data, train_depth

PLACEMENTS = {"post-LN": False, "pre-LN": True}  # name -> norm_first
COLLAPSE = 0.95  # a held-out NLL at or above 95% of the target unigram entropy: no better than a context-free guess


def unigram_entropy(pairs, vocab) -> float:
    """Entropy (nats) of the target tokens' frequencies: the held-out NLL of the best guess that ignores
    the source and the position."""
    counts = Counter(tok for _, tgt in pairs for tok in vocab.encode(tgt) + [vocab.eos_id])
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def failed(row: dict[str, Any], entropy: float) -> bool:
    return row["diverged"] or row["val_nll"] >= COLLAPSE * entropy


def final_loss(row: dict[str, Any]) -> float:
    """Mean training loss over the last tenth of the run; a diverged run counts as its first step's loss."""
    if row["diverged"]:
        return row["losses"][0]
    tail = row["losses"][-max(1, len(row["losses"]) // 10):]
    return sum(tail) / len(tail)


def _steps(warmup: int) -> int:
    """Warm-up steps as a reader counts them: TrainConfig's warmup=1 is the full rate from the first step."""
    return 0 if warmup == 1 else warmup


def _name(placement: str, warmup: int) -> str:
    return f"{placement}, warm-up {_steps(warmup)}"


class Warmup(Experiment):
    id = "warmup"
    question_zh = "预热？可以描述一下在Transformer模型训练中常用的优化方法和训练技巧吗？"
    question = "Why learning-rate warm-up?"
    claim = "stabilises early training"
    rule = ("The date task's model, post-LN and pre-LN, at one high peak learning rate, warm-up of 0 steps and of the "
            "budget's short and long lengths (linear, then linear decay). A run fails if its loss diverges or its "
            f"held-out NLL ends at or above {COLLAPSE} × the target unigram entropy (no better than a context-free guess); "
            "the final loss is the mean training loss over the last tenth of the steps (a diverged run counts as its "
            "first loss). For each placement, warm-up helps if a warm-up length fails in fewer runs than no warm-up, "
            "or ends lower beyond the spread over seeds; it hurts if no warm-up ends lower than every warm-up length "
            "beyond the spread and fails no more often. Confirmed if warm-up helps both placements; partly if it "
            "helps one; refuted if it helps neither and hurts at least one; inconclusive otherwise.")
    budgets = {"smoke": dict(depth=2, steps=8, seeds=1, lr=1e-2, warmups=[1, 4], n_test=20),
               "quick": dict(depth=2, steps=170, seeds=2, lr=1e-2, warmups=[1, 17, 85], n_test=100),
               "full": dict(depth=2, steps=1000, seeds=3, lr=1e-2, warmups=[1, 100, 500], n_test=200)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        pairs, _, vocab = dates_data((1900, 2099), s["n_test"])
        runs: dict[str, list[dict]] = {}
        bar = ctx.bar(len(PLACEMENTS) * len(s["warmups"]) * s["seeds"], self.id)
        for placement, norm_first in PLACEMENTS.items():
            for w in s["warmups"]:
                train = {"schedule": "linear", "lr": s["lr"], "warmup": w}
                rows = []
                for i in range(s["seeds"]):
                    rows.append(train_depth(ctx.seed + i, s["steps"], s["depth"], norm_first, train, s["n_test"], ctx.device))
                    bar.update(1)
                runs[_name(placement, w)] = rows
        bar.close()
        return {"runs": runs, "warmups": s["warmups"], "lr": s["lr"], "depth": s["depth"],
                "unigram_entropy": unigram_entropy(pairs, vocab)}

    def _placement(self, m: dict[str, Any], placement: str) -> tuple[bool, bool, str]:
        """(helps, hurts, summary) for one placement."""
        h = m["unigram_entropy"]
        none, *warm = m["warmups"]
        rows = {w: m["runs"][_name(placement, w)] for w in m["warmups"]}
        fails = {w: sum(failed(r, h) for r in rows[w]) for w in rows}
        loss = {w: [final_loss(r) for r in rows[w]] for w in rows}
        helps = any(fails[w] < fails[none] or differs(loss[none], loss[w]) > 0 for w in warm)
        hurts = all(differs(loss[none], loss[w]) < 0 and fails[none] <= fails[w] for w in warm)
        summary = f"{placement}: " + ", ".join(f"warm-up {_steps(w)} {fmt(*mean_spread(loss[w]))} "
                                              f"({fails[w]}/{len(rows[w])} failed)" for w in m["warmups"])
        return helps, hurts, summary

    def verdict(self, m: dict[str, Any]) -> Verdict:
        result = {p: self._placement(m, p) for p in PLACEMENTS}
        n_help = sum(helps for helps, _, _ in result.values())
        because = (f"peak rate {m['lr']:g}, {m['depth']} layers; final training loss and failed runs, "
                   + "; ".join(summary for _, _, summary in result.values()))
        if n_help == len(PLACEMENTS):
            outcome = "confirmed"
        elif n_help:
            outcome = "partly"
        else:
            outcome = "refuted" if any(hurts for _, hurts, _ in result.values()) else "inconclusive"
        return Verdict(outcome, because, {**{f"warm-up helps {p}": result[p][0] for p in PLACEMENTS},
                                          **{f"warm-up hurts {p}": result[p][1] for p in PLACEMENTS}})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "warmup.png"
        h = m["unigram_entropy"]
        with figure(path, f"Learning-rate warm-up at peak rate {m['lr']:g} ({m['depth']} layers): final loss and "
                          "training curves", ncols=2) as (a1, a2):
            width = 0.8 / len(PLACEMENTS)
            ws = m["warmups"]
            for i, p in enumerate(PLACEMENTS):
                rows = [m["runs"][_name(p, w)] for w in ws]
                stats = [mean_spread([final_loss(r) for r in rs]) for rs in rows]
                xs = [j + i * width for j in range(len(ws))]
                a1.bar(xs, [x[0] for x in stats], width, yerr=[x[1] for x in stats], label=p)
                for x, rs, st in zip(xs, rows, stats):
                    a1.annotate(f"{sum(failed(r, h) for r in rs)}/{len(rs)} failed", (x, st[0]), ha="center",
                                va="bottom", fontsize=7)
            a1.set_xticks([j + width / 2 for j in range(len(ws))], [f"{_steps(w)} steps" for w in ws])
            a1.set_xlabel("warm-up length")
            a1.set_ylabel("final training loss (nats/token; whiskers: spread)")
            a1.legend(fontsize=8)
            for name, rows in m["runs"].items():
                a2.plot(rows[0]["losses"], "-" if name.startswith("post") else "--", label=name)
            a2.axhline(h, color="grey", lw=0.8, ls=":", label="target unigram entropy")
            a2.set_xlabel("step")
            a2.set_ylabel("training loss (nats/token, first seed)")
            a2.legend(fontsize=7)
        return [path]
