"""`positions`: which position encodings are there, and what is each good for?

The canon lists them (learned, relative, hybrid, ...); what tells them apart in use is what happens
at lengths the model never trained on. Press et al. (2022, "Train Short, Test Long") claim that
ALiBi keeps its perplexity on inputs several times longer than the training windows, where
sinusoidal and rotary positions degrade and a learned table cannot go at all.

Measured: one character-level GPT per encoding (sinusoidal, learned, rotary, ALiBi, T5 bias, Shaw)
on tiny-shakespeare, same size, steps and data, trained on windows of L characters; then the mean
next-character loss over validation windows of L, 2L, 4L, 8L (every position of a window counts, as
in the paper's figures), and the loss at each position of the longest windows. A learned table holds
L positions: beyond L it has no answer, and is reported so, not scored as a number.
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
from transformer_lab.experiments.training import fit
from transformer_lab.models.gpt import GPT
from transformer_lab.models.presets import gpt_preset
from transformer_lab.runtime import Runtime
from transformer_lab.tasks.lm import SHAKESPEARE_CHAR, LMData, lm_loss, loss_by_position, make_validate, prepare_lm_data
from transformer_lab.training.loop import Trainer

ENCODINGS = ("sinusoidal", "learned", "rotary", "alibi", "t5", "shaw")
RELATIVE = ("alibi", "t5", "shaw", "rotary")


def train_encoding(data: LMData, position: str, s: dict[str, Any], seed: int, device: torch.device) -> GPT:
    """A char GPT with ``position``, trained on windows of s["context"]. A sinusoidal table is built
    long enough for the longest evaluation (its rows past the context are never trained on, but they
    exist), and the token vectors are scaled by √d_model as the paper pairs them (unscaled, GPT-2's
    0.02-std vectors drown under unit sinusoids: validation loss 3.41 against the learned table's 2.25
    after the quick budget's 400 steps, measured); a learned table holds the training context only."""
    longest = s["context"] * max(s["factors"])
    max_len = longest if position == "sinusoidal" else s["context"]
    torch.manual_seed(seed)
    model = GPT(gpt_preset("shakespeare-char", vocab_size=data.tokenizer.vocab_size, max_len=max_len,
                           position=position, scale_embeddings=position == "sinusoidal", **s["model"]))
    cfg = replace(SHAKESPEARE_CHAR, max_steps=s["steps"], warmup=s["warmup"], eval_every=s["steps"], seed=seed,
                  progress=False, log_every=max(1, s["steps"] // 10))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, RandomWindows(data.train, s["batch"], s["context"], seed), cfg, Path(tmp), lm_loss,
                          make_validate(data, s["context"], windows=16), runtime=Runtime(device))
        fit(trainer)
    return trainer.model.eval()


def eval_windows(data: LMData, length: int, n: int, seed: int) -> torch.Tensor:
    """``n`` validation windows of length + 1 tokens at seeded random offsets: (n, length + 1)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(len(data.valid) - length - 1, (n,), generator=g)
    return data.valid[offsets[:, None] + torch.arange(length + 1)]


def can_run(model: GPT, length: int) -> bool:
    limit = model.embed.position.max_len
    return limit is None or length <= limit


def keeps(m: dict[str, Any], enc: str, factor: int) -> bool | None:
    """Whether ``enc``'s mean loss at factor·L is not above its loss at L beyond the spread over seeds
    (None: it cannot run at that length)."""
    at = m["loss"][enc]
    if at.get(str(factor)) is None:
        return None
    return differs(at[str(factor)], at["1"]) <= 0


class Positions(Experiment):
    id = "positions"
    question_zh = "你还了解哪些关于位置编码的技术，各自的优缺点是什么？"
    question = "Other position encodings?"
    claim = "learned, relative, hybrid, …"
    rule = ("What each is good for, measured as the ALiBi paper measures it: a char-level GPT per encoding (sinusoidal, "
            "learned, rotary, ALiBi, T5 bias, Shaw), same size, steps and data, trained on windows of L characters; mean "
            "next-character loss over validation windows of L, 2L, 4L, 8L (all positions). An encoding keeps its loss at "
            "4L if its mean loss there is not above its loss at L beyond the spread over seeds (a learned table cannot "
            "run past L: it does not keep it). Confirmed if ALiBi keeps its loss at 4L and the sinusoidal encoding does "
            "not (the paper's claim: relative biases extrapolate, absolute positions do not); partly if ALiBi keeps it "
            "and sinusoidal does too, or ALiBi does not but another relative encoding (T5, Shaw, rotary) does; refuted "
            "if no relative encoding keeps it. Losses at L (quality at the training length) are reported beside.")
    budgets = {"smoke": dict(context=16, factors=[1, 2, 4], steps=4, warmup=2, batch=8, seeds=1, windows=4,
                             model=dict(n_layers=1, d_model=32, n_heads=2, d_ff=64)),
               "quick": dict(context=64, factors=[1, 2, 4, 8], steps=400, warmup=40, batch=32, seeds=2, windows=48,
                             model=dict(n_layers=2, d_model=64, n_heads=4, d_ff=256)),
               "full": dict(context=128, factors=[1, 2, 4, 8, 16], steps=1500, warmup=100, batch=32, seeds=3,
                            windows=96, model=dict(n_layers=4, d_model=128, n_heads=4, d_ff=512))}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        data = prepare_lm_data(data_file("tinyshakespeare/input.txt"), "char", context=s["context"])
        lengths = [s["context"] * f for f in s["factors"]]
        windows = {n: eval_windows(data, n, s["windows"], ctx.seed) for n in lengths}
        loss: dict[str, dict[str, list[float] | None]] = {e: {str(f): [] for f in s["factors"]} for e in ENCODINGS}
        curves: dict[str, list[float]] = {}
        bar = ctx.bar(len(ENCODINGS) * s["seeds"], self.id)
        for enc in ENCODINGS:
            for i in range(s["seeds"]):
                model = train_encoding(data, enc, s, ctx.seed + i, ctx.device)
                for f, n in zip(s["factors"], lengths):
                    if not can_run(model, n):
                        loss[enc][str(f)] = None
                        continue
                    per_position = loss_by_position(model, windows[n])
                    loss[enc][str(f)].append(float(per_position.mean()))
                    if i == 0 and n == max(lengths):
                        curves[enc] = per_position.tolist()
                    if i == 0 and n == s["context"] and enc == "learned":
                        curves[enc] = per_position.tolist()
                bar.update(1)
        bar.close()
        return {"context": s["context"], "factors": s["factors"], "loss": loss, "curves": curves}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        f4 = 4 if 4 in m["factors"] else max(m["factors"])
        kept = {e: keeps(m, e, f4) for e in ENCODINGS}
        alibi, sin = bool(kept["alibi"]), bool(kept["sinusoidal"])
        other = [e for e in RELATIVE if e != "alibi" and kept[e]]

        def at(e: str, f: int) -> str:
            v = m["loss"][e].get(str(f))
            return "cannot run" if v is None else fmt(*mean_spread(v))

        because = (f"mean loss (nats/char) at L={m['context']} and at {f4}L: "
                   + "; ".join(f"{e} {at(e, 1)} → {at(e, f4)}" for e in ENCODINGS))
        if alibi and not sin:
            outcome = "confirmed"
        elif alibi or other:
            outcome = "partly"
        else:
            outcome = "refuted"
        best = min((e for e in ENCODINGS), key=lambda e: mean_spread(m["loss"][e]["1"])[0])
        return Verdict(outcome, because, {f"keeps its loss at {f4}L": {e: k for e, k in kept.items()},
                                          "best at the training length": best,
                                          **{f"{e}: loss at L / {f4}L": f"{at(e, 1)} / {at(e, f4)}" for e in ENCODINGS}})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "positions.png"
        L = m["context"]
        with figure(path, f"Position encodings trained on {L} characters, evaluated on longer windows", ncols=2,
                    width=7.5) as (a1, a2):
            for n, enc in enumerate(ENCODINGS):
                pts = [(f * L, mean_spread(v)[0]) for f, v in ((f, m["loss"][enc].get(str(f))) for f in m["factors"])
                       if v]
                a1.plot(*zip(*pts), marker="o", color=f"C{n}", label=enc)
                if enc in m["curves"]:
                    curve = torch.tensor(m["curves"][enc])
                    k = max(1, L // 8)  # smoothed over bands of L/8 positions
                    smooth = curve[: len(curve) // k * k].view(-1, k).mean(1)
                    a2.plot((torch.arange(len(smooth)) * k + k / 2).tolist(), smooth.tolist(), color=f"C{n}", label=enc)
            a1.set_xscale("log", base=2)
            a1.set_xlabel("evaluation window (characters)")
            a1.set_ylabel("mean loss over the window (nats/char)")
            a1.axvline(L, color="grey", ls=":", lw=1)
            a2.axvline(L, color="grey", ls=":", lw=1)
            a2.set_xlabel("position in the longest window")
            a2.set_ylabel("loss at that position")
            a2.set_ylim(top=min(5.0, a2.get_ylim()[1]))
            a1.legend(fontsize=8)
        return [path]
