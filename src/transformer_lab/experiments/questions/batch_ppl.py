"""`batch-ppl`: does a larger batch give a lower perplexity?

The canon: larger batches give more stable gradients, and so lower perplexity. Two comparisons answer
different questions: at an equal number of *steps* a larger batch has seen more data; at an equal
number of *tokens seen* (the same compute, roughly) a smaller batch has taken more, noisier steps.
Measured on a character-level GPT trained on tiny-shakespeare (nanoGPT's recipe, a constant learning
rate after warm-up so that no run's schedule depends on its length): each batch size B trains for
S · B_max / B steps, so that every run reaches both S steps and the largest batch's S · B_max windows;
validation loss on a fixed sample of validation windows every S/2 steps. The premise, "more stable
gradients", is measured too: the cosine between a minibatch gradient of each size and the gradient of
a large batch, at the end of the largest batch's run.
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
from transformer_lab.experiments.stats import differs, fmt, mean_spread, outcome_of
from transformer_lab.models.gpt import GPT
from transformer_lab.models.presets import gpt_preset
from transformer_lab.runtime import Runtime
from transformer_lab.tasks.lm import SHAKESPEARE_CHAR, LMData, lm_loss, make_validate, prepare_lm_data
from transformer_lab.experiments.training import fit
from transformer_lab.training.loop import Trainer


def shakespeare(context: int) -> LMData:
    return prepare_lm_data(data_file("tinyshakespeare/input.txt"), "char", context=context)


def train_run(data: LMData, s: dict[str, Any], batch: int, seed: int, device: torch.device) -> tuple[GPT, list[dict]]:
    """One batch size: S · B_max / B steps; the validation curve as (step, tokens, val_loss) rows."""
    steps = s["steps"] * max(s["batch_sizes"]) // batch
    torch.manual_seed(seed)
    model = GPT(gpt_preset("shakespeare-char", vocab_size=data.tokenizer.vocab_size, max_len=s["context"], **s["model"]))
    cfg = replace(SHAKESPEARE_CHAR, schedule="constant", max_steps=steps, warmup=s["warmup"], eval_every=s["steps"] // 2,
                  seed=seed, progress=False, log_every=max(1, steps // 20))
    validate = make_validate(data, s["context"], windows=s["val_windows"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, RandomWindows(data.train, batch, s["context"], seed), cfg, Path(tmp), lm_loss, validate,
                          runtime=Runtime(device))
        result = fit(trainer)
    curve = [dict(step=r["step"], tokens=r["step"] * batch * s["context"], val_loss=r["val_loss"])
             for r in result.state.history if "val_loss" in r]
    return trainer.model, curve


def gradient(model: GPT, data: LMData, offsets: torch.Tensor, context: int) -> torch.Tensor:
    """The mean next-token loss's gradient over the windows at ``offsets``, flattened."""
    source = RandomWindows(data.train, len(offsets), context)
    model.zero_grad(set_to_none=True)
    batch = source.make(offsets.tolist())
    res = lm_loss(model, batch, next(model.parameters()).device)
    (res.loss / batch.n_tokens).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def gradient_agreement(model: GPT, data: LMData, s: dict[str, Any], seed: int) -> dict[str, float]:
    """Mean cosine between minibatch gradients of each batch size and a reference gradient from
    ``reference_windows`` other windows: how much one step's direction varies with the batch drawn."""
    model.train()  # the training-time gradient (the preset has no dropout: the same as eval)
    g = torch.Generator().manual_seed(seed)
    high = len(data.train) - s["context"] - 1
    ref = gradient(model, data, torch.randint(high, (s["reference_windows"],), generator=g), s["context"])
    out = {}
    for b in s["batch_sizes"]:
        cos = [float(torch.nn.functional.cosine_similarity(gradient(model, data, torch.randint(high, (b,), generator=g),
                                                                   s["context"]), ref, dim=0))
               for _ in range(s["gradient_draws"])]
        out[str(b)] = sum(cos) / len(cos)
    return out


def at(curve: list[dict], step: int) -> float:
    return next(r["val_loss"] for r in curve if r["step"] == step)


class BatchPerplexity(Experiment):
    id = "batch-ppl"
    question_zh = "请详解分析Transformer的Batch大小与训练的信息困惑度ppl的关系"
    question = "Batch size vs perplexity"
    claim = "larger batches give more stable gradients and so lower perplexity"
    rule = ("A character-level GPT on tiny-shakespeare, trained with each batch size B (windows of 64 characters) for "
            "S·B_max/B steps, same learning rate. Equal steps: validation loss after S steps; equal tokens: after "
            "S·B_max windows seen. Compare the largest batch with the smallest, with the spread over seeds. "
            "Two parts, each holding if the largest batch's validation loss is lower beyond the spread and going "
            "against the claim if it is higher beyond it: equal steps and equal tokens. Confirmed if both hold; "
            "partly if one holds; refuted if neither holds and one goes against; inconclusive if both differences "
            "stay inside the spread (experiments.stats.outcome_of). (The gradient premise, cosine of minibatch to "
            "reference gradient by B, is reported, not scored.)")
    budgets = {"smoke": dict(batch_sizes=[2, 8], steps=4, warmup=2, seeds=1, context=32, val_windows=16,
                             model=dict(n_layers=1, d_model=32, n_heads=2, d_ff=64), reference_windows=32,
                             gradient_draws=2),
               "quick": dict(batch_sizes=[4, 16, 64], steps=80, warmup=20, seeds=2, context=64, val_windows=128,
                             model=dict(n_layers=2, d_model=64, n_heads=4, d_ff=256), reference_windows=512,
                             gradient_draws=8),
               "full": dict(batch_sizes=[4, 8, 16, 32, 64, 128], steps=250, warmup=50, seeds=3, context=64,
                            val_windows=240, model=dict(), reference_windows=1024, gradient_draws=16)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        data = shakespeare(s["context"])
        bar = ctx.bar(s["seeds"] * len(s["batch_sizes"]), self.id)
        runs: dict[str, list[dict]] = {str(b): [] for b in s["batch_sizes"]}
        agreement = None
        for i in range(s["seeds"]):
            for b in s["batch_sizes"]:
                model, curve = train_run(data, s, b, ctx.seed + i, ctx.device)
                runs[str(b)].append(dict(seed=ctx.seed + i, curve=curve))
                if i == 0 and b == max(s["batch_sizes"]):
                    agreement = gradient_agreement(model, data, s, ctx.seed)
                bar.update(1)
        bar.close()
        b_max = max(s["batch_sizes"])
        equal_steps = {b: [at(r["curve"], s["steps"]) for r in rows] for b, rows in runs.items()}
        equal_tokens = {b: [at(r["curve"], s["steps"] * b_max // int(b)) for r in rows] for b, rows in runs.items()}
        return {"runs": runs, "steps": s["steps"], "context": s["context"], "tokens": s["steps"] * b_max * s["context"],
                "equal_steps": equal_steps, "equal_tokens": equal_tokens, "gradient_cosine": agreement}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        sizes = sorted(m["equal_steps"], key=int)
        small, large = sizes[0], sizes[-1]
        d_steps = differs(m["equal_steps"][large], m["equal_steps"][small])  # -1: the large batch is lower
        d_tokens = differs(m["equal_tokens"][large], m["equal_tokens"][small])
        cos = m.get("gradient_cosine") or {}
        steps_l, steps_s = mean_spread(m["equal_steps"][large]), mean_spread(m["equal_steps"][small])
        tokens_l, tokens_s = mean_spread(m["equal_tokens"][large]), mean_spread(m["equal_tokens"][small])
        because = (f"validation loss (nats/char) after {m['steps']} steps: B={large} {fmt(*steps_l)}, B={small} "
                   f"{fmt(*steps_s)}; after {m['tokens']:,} tokens: B={large} {fmt(*tokens_l)}, B={small} {fmt(*tokens_s)}"
                   + (f"; gradient cosine to the reference {cos.get(small, float('nan')):.2f} at B={small}, "
                      f"{cos.get(large, float('nan')):.2f} at B={large}" if cos else ""))
        outcome = outcome_of([-d_steps, -d_tokens])  # the claim: the large batch lower
        return Verdict(outcome, because, {"lower at equal steps (beyond spread)": d_steps < 0,
                                          "lower at equal tokens (beyond spread)": d_tokens < 0,
                                          f"val loss B={large} / B={small}, equal steps":
                                              f"{steps_l[0]:.3f} / {steps_s[0]:.3f}",
                                          f"val loss B={large} / B={small}, equal tokens":
                                              f"{tokens_l[0]:.3f} / {tokens_s[0]:.3f}",
                                          "gradient cosine by batch size": {k: round(v, 3) for k, v in cos.items()}})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "batch_ppl.png"
        title = ("Batch size: validation loss of a char-level GPT at equal steps and at equal tokens seen "
                 "(dotted: compared there)")
        with figure(path, title, ncols=2) as (a1, a2):
            for n, (b, rows) in enumerate(sorted(m["runs"].items(), key=lambda kv: int(kv[0]))):
                for i, r in enumerate(rows):  # one colour per batch size, one line per seed
                    steps = [p["step"] for p in r["curve"]]
                    tokens = [p["tokens"] for p in r["curve"]]
                    loss = [p["val_loss"] for p in r["curve"]]
                    style = dict(color=f"C{n}", alpha=0.8, marker="o", ms=2, label=f"B = {b}" if i == 0 else None)
                    a1.plot(steps, loss, **style)
                    a2.plot(tokens, loss, **style)
            a1.axvline(m["steps"], color="grey", ls=":", lw=1)
            a2.axvline(m["tokens"], color="grey", ls=":", lw=1)
            a1.set_xscale("log")
            a2.set_xscale("log")
            a1.set_xlabel("optimizer steps")
            a2.set_xlabel("training tokens seen (characters)")
            for ax in (a1, a2):
                ax.set_ylabel("validation loss (nats per character)")
                ax.legend(fontsize=8)
        return [path]
