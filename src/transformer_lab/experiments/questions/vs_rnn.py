"""`vs-rnn`: why is the Transformer more efficient than an RNN/LSTM?

The canon's two reasons: self-attention is parallel over positions (an RNN must step through them),
and its path between any two positions is one step long, so the gradient does not vanish with distance.
The baseline is an LSTM encoder-decoder with attention (``models.rnn``: bidirectional encoder, Luong's
attention, the decoder one fused ``nn.LSTM`` call in training) with the Transformer's d_model and the
number of layers that brings its parameter count closest to the date task's Transformer (``tiny``).
Three measurements:

1. Speed: forward + backward + Adam update of one training step, source = target length L, the least
   of ``repeats`` interleaved timings (the least is the one least disturbed by other processes).
2. Quality at equal training time, on the date task: both trained with the same recipe (the date
   task's: Noam schedule, label smoothing 0.1, batch 64; the best of three rates tried for the LSTM in a
   pilot) with held-out NLL every ``eval_every`` steps. Training time = steps × the step time measured
   as in 1 on a date batch (deterministic curves; only the conversion to seconds is timed). At the
   budget of the faster model's whole run, each model's held-out NLL at the last evaluation within it.
3. Gradient over distance: ‖∂ u·h_last / ∂ x_{last−k}‖ (h_last the encoder's output at the last
   position, u a fixed random direction, x the input embeddings) against k, at initialisation, on random
   sequences of ``grad_length`` tokens: the LSTM's forward direction (the recurrent path alone) and the
   Transformer's encoder (self-attention). Also after the date training (the first seed's models), as
   reported figures. In the encoder-decoder the LSTM also has attention, which reaches any source
   position in one step: the recurrence's gradient is what the canon's claim is about.

On this machine the timing is on 2 CPU cores: "parallel over positions" pays off most on a GPU, where
the LSTM's sequential steps leave most of the device idle; the figures say where they were measured.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from transformer_lab.data.batches import Batch, ShuffledBatches, make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread, outcome_of
from transformer_lab.experiments.training import dates_data, fit, held_out_nll
from transformer_lab.models.presets import PRESETS, preset
from transformer_lab.models.rnn import RNNConfig, RNNSeq2Seq
from transformer_lab.models.summary import parameter_summary
from transformer_lab.models.transformer import Transformer
from transformer_lab.runtime import Runtime
from transformer_lab.tasks.dates import RECIPE, exact_match
from transformer_lab.tasks.translation import seq2seq_loss
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.loop import Trainer
from transformer_lab.training.optim import build_optimizer

TRANSFORMER, LSTM = "Transformer", "LSTM + attention"
VANISHED = 0.1  # the gradient has vanished at distance k if it is below 10% of its value at k = 1


# --- the two models --------------------------------------------------------------------------------
def transformer(vocab_size: int, pad_id: int, max_len: int = 64) -> Transformer:
    return Transformer(preset("tiny", src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, pad_id=pad_id,
                              max_len=max(max_len, PRESETS["tiny"]["max_len"])))


def lstm(vocab_size: int, pad_id: int, n_layers: int) -> RNNSeq2Seq:
    return RNNSeq2Seq(RNNConfig(vocab_size, vocab_size, PRESETS["tiny"]["d_model"], n_layers, pad_id=pad_id))


def matched_layers(vocab_size: int, pad_id: int) -> int:
    """The LSTM depth whose parameter count is closest to the Transformer's (same d_model)."""
    target = parameter_summary(transformer(vocab_size, pad_id))["total"]
    return min(range(1, 7), key=lambda n: abs(parameter_summary(lstm(vocab_size, pad_id, n))["total"] - target))


def builders(vocab_size: int, pad_id: int, n_layers: int, max_len: int = 64) -> dict[str, Callable[[], nn.Module]]:
    return {TRANSFORMER: lambda: transformer(vocab_size, pad_id, max_len), LSTM: lambda: lstm(vocab_size, pad_id, n_layers)}


# --- 1. speed --------------------------------------------------------------------------------------
def step_seconds(models: dict[str, nn.Module], batch: Batch, repeats: int) -> dict[str, float]:
    """Seconds of one training step (loss, backward, clipping, Adam) per model: the least of ``repeats``
    timings, the models interleaved so that a burst of load elsewhere hits both."""
    loss_fn = seq2seq_loss(0.1)
    device = next(iter(models.values())).generator.proj.weight.device
    optimizers = {name: build_optimizer(m, RECIPE) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(repeats + 1):  # the first round warms up (allocations, kernel choice)
        for name, m in models.items():
            m.train()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            res = loss_fn(m, batch, device)
            (res.loss / batch.n_tokens).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            optimizers[name].step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def random_batch(batch: int, length: int, vocab_size: int, generator: torch.Generator) -> Batch:
    """Source and target of ``length`` real tokens (no padding), ids above the specials."""
    src = torch.randint(4, vocab_size, (batch, length), generator=generator)
    tgt = torch.randint(4, vocab_size, (batch, length + 1), generator=generator)
    return Batch(src, tgt[:, :-1], tgt[:, 1:])


# --- 2. quality at equal time ----------------------------------------------------------------------
def train_on_dates(build: Callable[[], nn.Module], seed: int, s: dict[str, Any],
                   device: torch.device) -> tuple[nn.Module, dict]:
    """The date task's recipe and data, for either model; held-out NLL every ``eval_every`` steps."""
    train, test, vocab = dates_data((1900, 2099), s["n_test"])
    torch.manual_seed(seed)
    model = build()
    cfg: TrainConfig = replace(RECIPE, max_steps=s["steps"], warmup=min(RECIPE.warmup, max(1, s["steps"] // 5)), seed=seed,
                               eval_every=s["eval_every"], log_every=max(1, s["steps"] // 20), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, ShuffledBatches(train, vocab, 64, seed), cfg, Path(tmp), seq2seq_loss(cfg.label_smoothing),
                          lambda m: {"val_loss": held_out_nll(m, test, vocab)}, runtime=Runtime(device))
        result = fit(trainer)
    curve = [dict(step=r["step"], val_nll=r["val_loss"]) for r in result.state.history if "val_loss" in r]
    return trainer.model, dict(seed=seed, curve=curve, exact_match=exact_match(trainer.model, test, vocab)[0])


def nll_within(curve: list[dict], steps: float) -> float | None:
    """Held-out NLL at the last evaluation within ``steps`` steps (None if none is: on a loaded machine the
    slower model's share of the budget can end before its first evaluation)."""
    done = [r["val_nll"] for r in curve if r["step"] <= steps + 1e-9]
    return done[-1] if done else None


def _nll_text(values: list[float | None]) -> str:
    return fmt(*mean_spread(values)) if None not in values else "no evaluation within the budget"


# --- 3. gradient over distance ----------------------------------------------------------------------
def encoder_gradient(model: nn.Module, src: torch.Tensor, seed: int) -> list[float]:
    """Mean over rows of ‖∂ u·h_last / ∂ x_j‖ for every source position j, index k = distance from the
    last position (k = 0 the last token itself). The LSTM's h_last is its forward direction's state
    (the recurrence alone); the Transformer's is its encoder output there."""
    model.eval()
    kept: list[torch.Tensor] = []

    def keep(module, args, output):
        if not kept:  # the source embedding (the LSTM ties it to the target's: keep the first call)
            output.retain_grad()
            kept.append(output)

    handle = model.src_embed.register_forward_hook(keep)
    try:
        memory = model.encode(src)  # (B, S, D)
    finally:
        handle.remove()
    last = memory[:, -1, : model.config.d_model // 2] if isinstance(model, RNNSeq2Seq) else memory[:, -1]
    u = torch.randn(last.size(-1), generator=torch.Generator().manual_seed(seed)).to(last.device)
    (last @ u / u.norm()).sum().backward()  # rows are independent: one backward for all
    norms = kept[0].grad.norm(dim=-1).mean(0)  # (S,)
    model.zero_grad(set_to_none=True)
    return norms.flip(0).tolist()  # index k: distance from the last position


def far_over_near(g: list[float]) -> float:
    """Mean gradient over the farthest eighth of distances / over the nearest eighth (from k = 1): a
    single position's norm is noisy."""
    w = max(1, (len(g) - 1) // 8)
    return (sum(g[-w:]) / w) / (sum(g[1:1 + w]) / w)


# --- the experiment ----------------------------------------------------------------------------------
class VsRNN(Experiment):
    id = "vs-rnn"
    question_zh = "为什么Transformer模型在处理序列数据方面比传统的RNN和LSTM模型有效率得多？"
    question = "Why more efficient than RNN/LSTM?"
    claim = "parallel over positions; no vanishing gradient over distance"
    rule = ("An LSTM encoder-decoder with attention (same d_model, depth chosen for the closest parameter count) beside "
            "the date task's Transformer. Speed holds if the Transformer's training step is faster at the longest "
            "length L and the LSTM/Transformer time ratio is larger there than at the shortest L (against: the LSTM "
            "is faster at the longest L). Equal time holds if, on the date task at the budget of the faster model's "
            "run (steps x measured step time), the Transformer's held-out NLL is lower beyond the spread over seeds "
            "(against: higher beyond it). Distance holds if, at initialisation, the LSTM recurrence's mean gradient over "
            "the farthest eighth of distances is below 0.1 of its mean over the nearest eighth (from distance 1) while "
            "the Transformer encoder's is not (against: "
            "the LSTM's ratio is at least the Transformer's). Confirmed if all three hold; partly if one or two hold; "
            "refuted if none holds and one goes against; inconclusive if none holds and none goes against "
            "(experiments.stats.outcome_of).")
    budgets = {"smoke": dict(lengths=[8, 16], batch=4, repeats=1, steps=6, eval_every=3, seeds=1, n_test=20,
                             grad_length=16, grad_rows=2),
               "quick": dict(lengths=[16, 64, 256], batch=16, repeats=3, steps=200, eval_every=20, seeds=2, n_test=200,
                             grad_length=64, grad_rows=8),
               "full": dict(lengths=[16, 32, 64, 128, 256, 512], batch=16, repeats=5, steps=1000, eval_every=50, seeds=3,
                            n_test=1000, grad_length=256, grad_rows=16)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        train, _, vocab = dates_data((1900, 2099), s["n_test"])
        n_layers = matched_layers(len(vocab), vocab.pad_id)
        build = builders(len(vocab), vocab.pad_id, n_layers, max_len=max(s["lengths"] + [s["grad_length"]]) + 1)
        params = {name: parameter_summary(b())["total"] for name, b in build.items()}
        bar = ctx.bar(len(s["lengths"]) + 1 + 2 * s["seeds"] + 1, self.id)

        # 1. speed against length, and on a date batch (for 2.)
        torch.manual_seed(ctx.seed)
        models = {name: b().to(ctx.device) for name, b in build.items()}
        g = torch.Generator().manual_seed(ctx.seed)
        speed = []
        for length in s["lengths"]:
            batch = _on(random_batch(s["batch"], length, len(vocab), g), ctx.device)
            speed.append(dict(length=length, seconds=step_seconds(models, batch, s["repeats"])))
            bar.update(1)
        dates_step = step_seconds(models, _on(make_batch(train[:64], vocab), ctx.device), s["repeats"])
        bar.update(1)

        # 2. the date task, each model, each seed
        runs: dict[str, list[dict]] = {name: [] for name in build}
        trained: dict[str, nn.Module] = {}
        for i in range(s["seeds"]):
            for name, b in build.items():
                model, row = train_on_dates(b, ctx.seed + i, s, ctx.device)
                runs[name].append(row)
                if i == 0:
                    trained[name] = model
                bar.update(1)
        budget_s = s["steps"] * min(dates_step.values())
        equal_time = {name: [nll_within(r["curve"], budget_s / dates_step[name]) for r in rows]
                      for name, rows in runs.items()}

        # 3. gradient against distance, at initialisation and after the date training
        src = torch.randint(4, len(vocab), (s["grad_rows"], s["grad_length"]), generator=g).to(ctx.device)
        torch.manual_seed(ctx.seed)
        fresh = {name: b().to(ctx.device) for name, b in build.items()}
        gradients = {"initialisation": {name: encoder_gradient(m, src, ctx.seed) for name, m in fresh.items()},
                     "after the date training": {name: encoder_gradient(m, src, ctx.seed) for name, m in trained.items()}}
        bar.update(1)
        bar.close()
        return {"device": ctx.device.type, "threads": torch.get_num_threads(), "lstm_layers": n_layers, "parameters": params,
                "batch": s["batch"], "speed": speed, "dates_step_seconds": dates_step, "steps": s["steps"],
                "budget_seconds": budget_s, "runs": runs, "equal_time_nll": equal_time, "gradients": gradients}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        first, last = m["speed"][0], m["speed"][-1]
        ratio_first = first["seconds"][LSTM] / first["seconds"][TRANSFORMER]
        ratio_last = last["seconds"][LSTM] / last["seconds"][TRANSFORMER]
        speed_holds = ratio_last > 1 and ratio_last > ratio_first
        speed_against = ratio_last < 1

        nll_t, nll_r = m["equal_time_nll"][TRANSFORMER], m["equal_time_nll"][LSTM]
        if None in nll_t + nll_r:
            d_time = 0  # a model had no evaluation within the budget: no comparison
        else:
            d_time = differs(nll_t, nll_r)  # -1: the Transformer is lower
        time_holds, time_against = d_time < 0, d_time > 0

        init = m["gradients"]["initialisation"]
        g_r, g_t = far_over_near(init[LSTM]), far_over_near(init[TRANSFORMER])
        distance_holds = g_r < VANISHED <= g_t
        distance_against = g_r >= g_t

        outcome = outcome_of([int(held) - int(against) for held, against in
                              ((speed_holds, speed_against), (time_holds, time_against), (distance_holds, distance_against))])
        k = len(init[LSTM]) - 1
        w = max(1, k // 8)
        because = (f"training step at L={last['length']}: LSTM {last['seconds'][LSTM] * 1e3:.0f} ms, Transformer "
                   f"{last['seconds'][TRANSFORMER] * 1e3:.0f} ms (ratio {ratio_last:.2f}; {ratio_first:.2f} at "
                   f"L={first['length']}; {m['device']}, {m['threads']} threads); date task at an equal "
                   f"{m['budget_seconds']:.1f} s of training: held-out NLL Transformer {_nll_text(nll_t)}, "
                   f"LSTM {_nll_text(nll_r)}; gradient at distances {k - w + 1}-{k} over distances 1-{w}, "
                   f"at initialisation: "
                   f"LSTM recurrence {g_r:.2g}, Transformer encoder {g_t:.2g}")
        return Verdict(outcome, because, {"speed: Transformer faster at the longest L, advantage growing": speed_holds,
                                          "LSTM / Transformer step time, shortest and longest L":
                                              [round(ratio_first, 3), round(ratio_last, 3)],
                                          "equal time: Transformer lower NLL (beyond spread)": time_holds,
                                          "equal-time NLL, Transformer / LSTM": f"{_nll_text(nll_t)} / {_nll_text(nll_r)}",
                                          "distance: LSTM gradient vanishes, Transformer's does not": distance_holds,
                                          "gradient ratio far/near, LSTM / Transformer": f"{g_r:.3g} / {g_t:.3g}"})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "vs_rnn.png"
        names = (TRANSFORMER, LSTM)
        params = ", ".join(f"{n} {m['parameters'][n] / 1e6:.2f} M" for n in names)
        title = f"Transformer vs LSTM seq2seq with attention ({params} parameters)"
        with figure(path, title, ncols=3, width=5.0) as (a1, a2, a3):
            for n, (name, style) in enumerate(zip(names, ("o-", "s--"))):
                color = f"C{n}"  # one colour per model in every panel
                a1.plot([r["length"] for r in m["speed"]], [1e3 * r["seconds"][name] for r in m["speed"]], style,
                        color=color, label=name)
                for i, row in enumerate(m["runs"][name]):
                    seconds = [p["step"] * m["dates_step_seconds"][name] for p in row["curve"]]
                    a2.plot(seconds, [p["val_nll"] for p in row["curve"]], style, ms=3, alpha=0.8, color=color,
                            label=f"{name} ({len(m['runs'][name])} seeds)" if i == 0 else None)
                for when, ls in (("initialisation", "-"), ("after the date training", ":")):
                    g = m["gradients"][when][name]
                    w = max(1, (len(g) - 1) // 8)
                    near = sum(g[1:1 + w]) / w
                    a3.plot(range(1, len(g)), [x / near for x in g[1:]], ls, color=color, label=f"{name}, {when}")
            a1.set_xscale("log", base=2)
            a1.set_yscale("log")
            a1.set_xlabel(f"source = target length L (tokens), batch {m['batch']}")
            a1.set_ylabel(f"training step time (ms, {m['device']}, {m['threads']} threads)")
            a2.axvline(m["budget_seconds"], color="grey", ls=":", lw=1)
            a2.set_xlabel("training time on the date task (s, steps x measured step time)")
            a2.set_ylabel("held-out NLL (nats per target token)")
            a3.set_yscale("log")
            a3.axhline(VANISHED, color="grey", ls=":", lw=1)
            a3.set_xlabel("distance k from the last source position (tokens)")
            a3.set_ylabel("gradient norm, distance k / nearest k")
            for ax in (a1, a2, a3):
                ax.legend(fontsize=7)
        return [path]


def _on(batch: Batch, device: torch.device) -> Batch:
    return Batch(batch.src.to(device), batch.tgt_in.to(device), batch.tgt_out.to(device), batch.pad_id)
