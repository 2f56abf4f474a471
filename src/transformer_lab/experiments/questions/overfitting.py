"""`overfitting`: do more data, regularisation and early stopping remedy over-fitting?

A character-level GPT trained many epochs on a small slice of tiny-shakespeare over-fits: its training
loss keeps falling while its validation loss turns up. Each remedy is the baseline with one change:

- more data: a training slice ``more_data`` times longer, same steps;
- regularisation: dropout (embeddings, residual branches, attention weights) and AdamW weight decay;
- early stopping: the baseline stopped after ``patience`` validations without improvement, keeping
  the best checkpoint (the training loop's own ``patience`` and ``checkpoints/best``).

The validation split is cut in two halves: the curves' validation loss, and so early stopping's choice of
checkpoint, read the first (a fixed sample of its windows every ``eval_every`` steps); the figure each run
is judged by, the validation loss of the model it ends with (for early stopping, the best checkpoint), is
taken on the whole second half (its first ``val_chars`` characters at smoke), which nothing was chosen on.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from transformer_lab.data.batches import RandomWindows
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.data import data_file
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.models.gpt import GPT
from transformer_lab.models.presets import gpt_preset
from transformer_lab.runs import find_checkpoint, load_model
from transformer_lab.runtime import Runtime
from transformer_lab.tasks.lm import SHAKESPEARE_CHAR, LMData, evaluate_lm, lm_loss, make_validate, prepare_lm_data
from transformer_lab.experiments.training import fit
from transformer_lab.training.loop import Trainer

BASELINE = "baseline"
REMEDIES = ("more data", "dropout + weight decay", "early stopping")
RISE = 0.02  # the baseline over-fits if its final validation loss is above its best by more than 2%


def variant(name: str, s: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(training characters, model overrides, training overrides) of a variant."""
    chars, model, train = s["chars"], {"dropout": 0.0, "attention_dropout": 0.0}, {"weight_decay": 0.0}
    if name == "more data":
        chars *= s["more_data"]
    elif name == "dropout + weight decay":
        model = {"dropout": s["dropout"], "attention_dropout": s["dropout"]}
        train = {"weight_decay": s["weight_decay"]}
    elif name == "early stopping":
        train = {"weight_decay": 0.0, "patience": s["patience"]}
    return chars, model, train


def train_variant(data: LMData, name: str, s: dict[str, Any], seed: int, device: torch.device) -> dict[str, Any]:
    chars, model_over, train_over = variant(name, s)
    ctx = s["context"]
    torch.manual_seed(seed)
    model = GPT(gpt_preset("shakespeare-char", vocab_size=data.tokenizer.vocab_size, max_len=ctx,
                           **{**s["model"], **model_over}))
    cfg = replace(SHAKESPEARE_CHAR, max_steps=s["steps"], warmup=s["warmup"], eval_every=s["eval_every"], seed=seed,
                  progress=False, log_every=max(1, s["eval_every"] // 5), **train_over)
    half = len(data.valid) // 2  # choose on the first half, score on the second
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, RandomWindows(data.train[:chars], s["batch_size"], ctx, seed), cfg, Path(tmp), lm_loss,
                          make_validate(replace(data, valid=data.valid[:half]), ctx, windows=s["val_windows"]),
                          runtime=Runtime(device))
        result = fit(trainer)
        # the model this procedure hands over: early stopping keeps its best checkpoint, the others their last
        final = load_model(find_checkpoint(tmp, prefer=("best",))).model if name == "early stopping" else trainer.model
        final_val = evaluate_lm(final.to(device), data.valid[half:][: s["val_chars"]], ctx)["loss"]
    history = result.state.history
    train_curve = [dict(step=r["step"], loss=r["loss"]) for r in history if "loss" in r]
    val_curve = [dict(step=r["step"], val_loss=r["val_loss"]) for r in history if "val_loss" in r]
    return dict(seed=seed, chars=chars, steps=result.state.step, stopped_by=result.stopped_by, final_val=final_val,
                train_curve=train_curve, val_curve=val_curve)


def train_near(curve: list[dict], step: int, window: int) -> float:
    """Mean training loss over the ``window`` logged rows up to ``step`` (a single batch is noisy)."""
    rows = [r["loss"] for r in curve if r["step"] <= step][-window:]
    return sum(rows) / len(rows)


def overfits(row: dict) -> tuple[bool, float, float]:
    """(over-fits?, final / best validation loss on the curve, training loss at the end minus at the best)."""
    vals = row["val_curve"]
    best = min(vals, key=lambda r: r["val_loss"])
    rise = vals[-1]["val_loss"] / best["val_loss"]
    train_drop = train_near(row["train_curve"], vals[-1]["step"], 5) - train_near(row["train_curve"], best["step"], 5)
    return rise > 1 + RISE and train_drop < 0, rise, train_drop


class Overfitting(Experiment):
    id = "overfitting"
    question_zh = "过拟合(Overfitting)与欠拟合(Underfitting)"
    question = "Over- and under-fitting"
    claim = "more data, regularisation, early stopping"
    rule = ("A character-level GPT trained many epochs on a small slice of tiny-shakespeare (no dropout, no weight "
            "decay). It over-fits if, in every seed, its final validation loss is more than 2% above the best on its "
            "curve while its training loss is lower at the end than at that best point. Each remedy (a longer "
            "training slice; dropout and weight decay; early stopping with the best checkpoint) is judged by the "
            "validation loss of the model it ends with, on the whole validation split, against the baseline's. "
            "Inconclusive if the baseline does not over-fit; otherwise confirmed if all three remedies give a lower "
            "loss beyond the spread over seeds, partly if one or two do, refuted if none does.")
    budgets = {"smoke": dict(chars=2000, more_data=4, steps=12, warmup=2, eval_every=4, batch_size=4, context=32,
                             val_windows=16, val_chars=4000, seeds=1, patience=1, dropout=0.2, weight_decay=0.1,
                             model=dict(n_layers=1, d_model=32, n_heads=2, d_ff=64)),
               "quick": dict(chars=5000, more_data=8, steps=300, warmup=20, eval_every=30, batch_size=16, context=64,
                             val_windows=128, val_chars=None, seeds=2, patience=2, dropout=0.2, weight_decay=0.1,
                             model=dict(n_layers=2, d_model=128, n_heads=4, d_ff=512)),
               "full": dict(chars=5000, more_data=8, steps=900, warmup=50, eval_every=50, batch_size=16, context=64,
                            val_windows=240, val_chars=None, seeds=3, patience=3, dropout=0.2, weight_decay=0.1,
                            model=dict(n_layers=4, d_model=128, n_heads=4, d_ff=512))}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        data = prepare_lm_data(data_file("tinyshakespeare/input.txt"), "char", context=s["context"])
        names = (BASELINE, *REMEDIES)
        bar = ctx.bar(len(names) * s["seeds"], self.id)
        runs: dict[str, list[dict]] = {}
        for name in names:
            runs[name] = []
            for i in range(s["seeds"]):
                runs[name].append(train_variant(data, name, s, ctx.seed + i, ctx.device))
                bar.update(1)
        bar.close()
        return {"runs": runs, "chars": s["chars"], "more_data": s["more_data"], "steps": s["steps"]}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        base = [r["final_val"] for r in m["runs"][BASELINE]]
        checks = [overfits(r) for r in m["runs"][BASELINE]]
        over = all(c[0] for c in checks)
        helps = {name: differs([r["final_val"] for r in m["runs"][name]], base) for name in REMEDIES}
        n_help = sum(d < 0 for d in helps.values())
        because = (f"baseline ({m['chars']:,} training characters): final validation loss "
                   f"{fmt(*mean_spread(base))} nats/char, {100 * (min(c[1] for c in checks) - 1):.0f}–"
                   f"{100 * (max(c[1] for c in checks) - 1):.0f}% above its best on the curve; "
                   + "; ".join(f"{name} {fmt(*mean_spread([r['final_val'] for r in m['runs'][name]]))}"
                               for name in REMEDIES))
        if not over:
            outcome = "inconclusive"
        elif n_help == len(REMEDIES):
            outcome = "confirmed"
        elif n_help:
            outcome = "partly"
        else:
            outcome = "refuted"
        return Verdict(outcome, because, {"baseline over-fits": over,
                                          "final / best validation loss, baseline": [round(c[1], 3) for c in checks],
                                          **{f"{name}: lower than baseline (beyond spread)": helps[name] < 0
                                             for name in REMEDIES},
                                          "final validation loss by variant": {
                                              name: round(mean_spread([r["final_val"] for r in rows])[0], 4)
                                              for name, rows in m["runs"].items()}})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        curves = folder / "overfitting_curves.png"
        with figure(curves, "Over-fitting a char-level GPT on a small slice: training vs validation loss, each remedy",
                    ncols=2) as (a1, a2):
            for n, (name, rows) in enumerate(m["runs"].items()):
                r = rows[0]
                if name == "early stopping":  # the baseline's curve until it stops: mark the checkpoint kept
                    best = min(r["val_curve"], key=lambda p: p["val_loss"])
                    a1.plot([best["step"]], [best["val_loss"]], "*", ms=12, color=f"C{n}",
                            label=f"early stopping: best checkpoint kept (stopped at step {r['steps']})")
                    continue
                a1.plot([p["step"] for p in r["val_curve"]], [p["val_loss"] for p in r["val_curve"]], "o-", ms=3,
                        color=f"C{n}", label=f"{name}, validation")
                a1.plot([p["step"] for p in r["train_curve"]], [p["loss"] for p in r["train_curve"]], ":",
                        color=f"C{n}", label=f"{name}, training")
            a1.set_xlabel("step")
            a1.set_ylabel("loss (nats per character), first seed")
            a1.legend(fontsize=6.5, loc="upper right", ncol=2)
            names = list(m["runs"])
            stats = [mean_spread([r["final_val"] for r in m["runs"][n]]) for n in names]
            a2.bar(range(len(names)), [x[0] for x in stats], yerr=[x[1] for x in stats], capsize=4)
            a2.set_xticks(range(len(names)), [n.replace(" + ", "\n+ ") for n in names], fontsize=8)
            low = min(x[0] - x[1] for x in stats)
            a2.set_ylim(low * 0.97, max(x[0] + x[1] for x in stats) * 1.01)
            a2.set_ylabel("final validation loss, whole split (nats/char)")
        return [curves]
