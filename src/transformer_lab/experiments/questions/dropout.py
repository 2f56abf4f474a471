"""`dropout`: where does dropout go, and what happens at test time?

The paper (§5.4): "We apply dropout to the output of each sub-layer, before it is added to the
sub-layer input and normalized. In addition, we apply dropout to the sums of the embeddings and the
positional encodings ... P_drop = 0.1." At test time dropout is off (inverted dropout scales by
1/(1 − p) in training, so the expected activations already match). Measured on a small slice of the
date task, where a model can overfit: held-out NLL and exact match with p = 0, 0.1 and 0.3 on those
places only (attention dropout off, as the paper), and the same models tested with dropout left on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.data.batches import make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data, held_out_nll, train_dates, values
from transformer_lab.generation.search import Seq2SeqStep, greedy_search
from transformer_lab.models.transformer import Transformer
from transformer_lab.training.losses import label_smoothed_nll

PAPER_P = 0.1


@torch.no_grad()
def scores(model: Transformer, pairs, vocab, dropout_on: bool, seed: int) -> tuple[float, float]:
    """NLL per target token (teacher-forced) and greedy exact match, with dropout on (train mode, seeded)
    or off; the model is left in eval mode."""
    torch.manual_seed(seed)
    model.train(dropout_on)
    batch = make_batch(pairs, vocab)
    res = label_smoothed_nll(model(batch.src, batch.tgt_in).float(), batch.tgt_out, 0.0, vocab.pad_id)
    found = greedy_search(Seq2SeqStep(model, batch.src), len(pairs), vocab.bos_id, vocab.eos_id, batch.tgt_out.size(1) + 10)
    correct = sum(vocab.decode(t) == list(ref) for t, (_, ref) in zip(found.tokens, pairs))
    model.eval()
    return float(res.nll) / res.n_tokens, correct / len(pairs)


def _name(p: float) -> str:
    return f"p = {p:g}"


class Dropout(Experiment):
    id = "dropout"
    question_zh = "（dropout的位置与测试时的处理）"
    question = "Dropout: where, and at test time?"
    claim = "p = 0.1 on sub-layer outputs and embeddings; off at test"
    rule = ("A small slice of the date task (dates of the budget's years: a few hundred training pairs, so the model "
            "can overfit); dropout p on the sub-layer outputs and the embedding sums only (attention dropout off, as "
            "the paper), p = 0 and 0.1 (and 0.3 at full). Where: p = 0.1 ends with a lower held-out NLL than p = 0, beyond the "
            "spread over seeds. Off at test: the p = 0.1 models score a higher held-out NLL with dropout left on at "
            "test than with it off, beyond the spread. Confirmed if both hold; partly if one; refuted if p = 0.1 ends "
            "higher than p = 0, or dropout left on scores lower, beyond the spread; inconclusive otherwise. p = 0.3 "
            "and the training-set NLL (how much p = 0 overfits) are reported, not part of the rule.")
    # The dates of one year, 166 held out: 200 training pairs, which the model overfits (after 800 steps: training-set
    # NLL 0.13 against 0.30 held out; with 531 pairs and 400 steps it had not: 0.53 against 0.62).
    budgets = {"smoke": dict(years=[2000, 2000], n_test=166, steps=8, seeds=1, ps=[0.0, 0.1]),
               "quick": dict(years=[2000, 2000], n_test=166, steps=640, seeds=2, ps=[0.0, 0.1]),
               "full": dict(years=[2000, 2000], n_test=166, steps=2000, seeds=3, ps=[0.0, 0.1, 0.3])}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        years = tuple(s["years"])
        train, test, vocab = dates_data(years, s["n_test"])
        runs: dict[str, list[dict]] = {}
        bar = ctx.bar(len(s["ps"]) * s["seeds"], self.id)
        for p in s["ps"]:
            rows = []
            for i in range(s["seeds"]):
                seed = ctx.seed + i
                run = train_dates(seed, s["steps"], {"dropout": p, "attention_dropout": 0.0}, years=years,
                                  n_test=s["n_test"], device=ctx.device)
                row = dict(seed=seed, diverged=run.diverged, losses=run.losses, val_nll=run.val_nll,
                           exact_match=run.exact_match)
                if not run.diverged:
                    model = run.model.cpu()
                    row["train_nll"] = held_out_nll(model, train, vocab)  # the pairs it trained on, dropout off
                    row["val_nll_dropout_on"], row["exact_match_dropout_on"] = scores(model, test, vocab, True, seed)
                rows.append(row)
                bar.update(1)
            runs[_name(p)] = rows
        bar.close()
        return {"runs": runs, "ps": s["ps"], "n_train": len(train), "n_test": len(test), "years": list(years)}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        runs = m["runs"]
        plain, paper = runs[_name(0.0)], runs[_name(PAPER_P)]
        where = differs(values(paper, "val_nll"), values(plain, "val_nll"))  # -1: p = 0.1 lower
        on_off = differs(values(paper, "val_nll_dropout_on"), values(paper, "val_nll"))  # +1: on is worse
        nll = {n: fmt(*mean_spread(values(rows, "val_nll"))) for n, rows in runs.items()}
        em = {n: fmt(*mean_spread([100 * x for x in values(rows, "exact_match")]), 2) for n, rows in runs.items()}
        because = (f"{m['n_train']} training pairs; held-out NLL " + ", ".join(f"{n} {nll[n]}" for n in runs)
                   + f" (p = 0 training-set NLL {fmt(*mean_spread(values(plain, 'train_nll')))}); p = 0.1 tested with "
                   f"dropout on: NLL {fmt(*mean_spread(values(paper, 'val_nll_dropout_on')))}, exact match "
                   f"{fmt(*mean_spread([100 * x for x in values(paper, 'exact_match_dropout_on')]), 2)}% against "
                   f"{em[_name(PAPER_P)]}% off")
        if where > 0 or on_off < 0:
            outcome = "refuted"
        elif where < 0 and on_off > 0:
            outcome = "confirmed"
        elif where < 0 or on_off > 0:
            outcome = "partly"
        else:
            outcome = "inconclusive"
        return Verdict(outcome, because, {"p = 0.1 beats p = 0 (beyond spread)": where < 0,
                                          "dropout on at test is worse (beyond spread)": on_off > 0,
                                          "held-out NLL by p": nll})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "dropout.png"
        ps = m["ps"]
        with figure(path, f"Dropout on {m['n_train']} training dates: held-out quality by p, dropout off and on at "
                          "test", ncols=2) as (a1, a2):
            for key, label, style in (("val_nll", "held-out, dropout off at test", "o-"),
                                      ("val_nll_dropout_on", "held-out, dropout on at test", "s--"),
                                      ("train_nll", "training set, dropout off", "^:")):
                st = [mean_spread(values(m["runs"][_name(p)], key)) for p in ps]
                a1.errorbar(ps, [x[0] for x in st], yerr=[x[1] for x in st], fmt=style, capsize=3, label=label)
            a1.set_xlabel("dropout probability p (sub-layer outputs and embeddings)")
            a1.set_ylabel("NLL per target token (nats; whiskers: spread)")
            a1.legend(fontsize=8)
            for key, label, style in (("exact_match", "dropout off at test", "o-"),
                                      ("exact_match_dropout_on", "dropout on at test", "s--")):
                st = [mean_spread([100 * x for x in values(m["runs"][_name(p)], key)]) for p in ps]
                a2.errorbar(ps, [x[0] for x in st], yerr=[x[1] for x in st], fmt=style, capsize=3, label=label)
            a2.set_xlabel("dropout probability p (sub-layer outputs and embeddings)")
            a2.set_ylabel("held-out exact match (%)")
            a2.legend(fontsize=8)
        return [path]

