"""`long-sequences`: attention is O(n²): what do sparse, local and chunked attention buy?

The canon's answer: full self-attention costs O(n²) in time and memory, and long inputs need
optimised attention (local windows, sparse patterns, chunking, compressed or hierarchical memory).
Measured here, on this CPU:

* cost: time and peak memory of one attention call (8 heads of 64, forward) against n for PyTorch's
  fused SDPA (full), the explicit softmax over a dense mask (full, the textbook O(n²) form), chunked
  exact attention, the sliding window and the block-sparse pattern (``nn.sparse``), each configuration
  alone in a fresh process (``bench.attention.measure``): memory is the measured peak, not a formula;
* quality at equal compute: a char-level GPT trained for the same wall time on tiny-shakespeare
  windows of n characters with full, windowed and block-sparse attention, validation loss at n.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from transformer_lab.bench.attention import crossing, log2_slope, measure_alone
from transformer_lab.data.batches import RandomWindows
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.data import data_file
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions.positions import eval_windows
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import fit
from transformer_lab.models.gpt import GPT
from transformer_lab.models.presets import gpt_preset
from transformer_lab.runtime import Runtime
from transformer_lab.tasks.lm import SHAKESPEARE_CHAR, lm_loss, loss_by_position, make_validate, prepare_lm_data
from transformer_lab.training.loop import Trainer

COST = ("sdpa", "dense", "chunked", "window", "block")  # bench.attention's names
LABELS = {"sdpa": "full (fused SDPA)", "dense": "full (explicit, dense mask)", "chunked": "chunked (exact)",
          "window": "sliding window", "block": "block-sparse"}


def train_pattern(data, spec: str, s: dict[str, Any], seed: int, device: torch.device) -> tuple[GPT, int]:
    """A char GPT with self-attention pattern ``spec``, trained for s["seconds"] of wall time at a constant
    rate after warm-up; returns it and the steps it took."""
    torch.manual_seed(seed)
    model = GPT(gpt_preset("shakespeare-char", vocab_size=data.tokenizer.vocab_size, max_len=s["context"],
                           attention=spec, position="alibi", **s["model"]))
    cfg = replace(SHAKESPEARE_CHAR, schedule="constant", max_steps=10**6, time_budget_s=s["seconds"],
                  warmup=s["warmup"], eval_every=10**6, seed=seed, progress=False, log_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, RandomWindows(data.train, s["batch"], s["context"], seed), cfg, Path(tmp), lm_loss,
                          make_validate(data, s["context"], windows=4), runtime=Runtime(device))
        result = fit(trainer)
    return trainer.model.eval(), result.state.step


class LongSequences(Experiment):
    id = "long-sequences"
    question_zh = "（长序列：优化自注意力机制、分块策略、层次化注意力）"
    question = "Long sequences"
    claim = "attention is O(n²); sparse / local attention, chunking, compression, hierarchy"
    rule = ("Cost: time and measured peak memory of one attention call against n for full attention (fused SDPA and "
            "the explicit dense-mask softmax), chunked, sliding-window and block-sparse attention; growth exponents "
            "between the two largest n (2 = quadratic). Quality: a char GPT per pattern (full, window, block), trained "
            "for equal wall time at context n, validation loss at n, two seeds. Refuted if full attention's time "
            "grows with an exponent below 1.5, or the window is not faster than full SDPA at the largest n. Confirmed "
            "if, besides, the window's time and memory grow with exponents <= 1.3, both full forms' memory with "
            "exponents >= 1.7, and the window's loss at equal time is not above full attention's beyond the spread. "
            "Partly otherwise, naming which part fails (e.g. a fused kernel whose memory grows linearly: O(n²) "
            "memory is then a property of the explicit form, not of attention).")
    budgets = {"smoke": dict(lengths=[64, 128], window=16, block=16, chunk=32, rounds=1, context=64, seconds=1.5,
                             warmup=2, batch=2, seeds=1, windows=2, model=dict(n_layers=1, d_model=32, n_heads=2, d_ff=64),
                             pattern_window=8, pattern_block=16),
               "quick": dict(lengths=[1024, 2048, 4096, 8192], window=256, block=64, chunk=1024, rounds=2, context=1024,
                             seconds=20, warmup=20, batch=4, seeds=2, windows=16,
                             model=dict(n_layers=2, d_model=64, n_heads=4, d_ff=256), pattern_window=64, pattern_block=64),
               "full": dict(lengths=[1024, 2048, 4096, 8192, 16384, 32768], window=256, block=64, chunk=1024, rounds=3,
                            context=2048, seconds=120, warmup=50, batch=4, seeds=3, windows=32,
                            model=dict(n_layers=4, d_model=128, n_heads=4, d_ff=512), pattern_window=128,
                            pattern_block=64)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        patterns = {"full": "full", "window": f"window:{s['pattern_window']}",
                    "block": f"block:{s['pattern_block']},random:1,global:1"}
        bar = ctx.bar(len(s["lengths"]) * len(COST) + len(patterns) * s["seeds"], self.id)
        cost = []
        for n in s["lengths"]:
            for impl in COST:
                cost.append(measure_alone(impl=impl, n=n, window=s["window"], block=s["block"], chunk=s["chunk"],
                                          rounds=s["rounds"], threads=torch.get_num_threads()))
                bar.update(1)
        data = prepare_lm_data(data_file("tinyshakespeare/input.txt"), "char", context=s["context"])
        windows = eval_windows(data, s["context"], s["windows"], ctx.seed)
        quality: dict[str, list[dict[str, float]]] = {name: [] for name in patterns}
        for name, spec in patterns.items():
            for i in range(s["seeds"]):
                model, steps = train_pattern(data, spec, s, ctx.seed + i, ctx.device)
                quality[name].append({"val_loss": float(loss_by_position(model, windows).mean()), "steps": steps})
                bar.update(1)
        bar.close()
        return {"lengths": s["lengths"], "window": s["window"], "cost": cost, "context": s["context"],
                "seconds": s["seconds"], "patterns": patterns, "quality": quality}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        cost, top = m["cost"], max(m["lengths"])
        time_exp = {i: log2_slope(cost, i, "seconds") for i in COST}
        mem_exp = {i: log2_slope(cost, i, "peak_mib") for i in COST}
        at_top = {r["impl"]: r for r in cost if r["n"] == top}
        loss = {k: [r["val_loss"] for r in rows] for k, rows in m["quality"].items()}
        window_worse = differs(loss["window"], loss["full"]) > 0
        faster = at_top["window"]["seconds"] < at_top["sdpa"]["seconds"]

        def e(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.2f}"

        because = (f"time exponents (2 = quadratic): full SDPA {e(time_exp['sdpa'])}, dense {e(time_exp['dense'])}, "
                   f"window {e(time_exp['window'])}, block {e(time_exp['block'])}; memory exponents: full SDPA "
                   f"{e(mem_exp['sdpa'])}, dense {e(mem_exp['dense'])}, window {e(mem_exp['window'])}; at n={top}: full "
                   f"SDPA {at_top['sdpa']['seconds']:.3g} s / {at_top['sdpa']['peak_mib']:,.0f} MiB, window "
                   f"{at_top['window']['seconds']:.3g} s / {at_top['window']['peak_mib']:,.0f} MiB; validation loss at "
                   f"equal time (n={m['context']}): full {fmt(*mean_spread(loss['full']))}, window "
                   f"{fmt(*mean_spread(loss['window']))}, block {fmt(*mean_spread(loss['block']))}")
        quadratic_time = (time_exp["sdpa"] or 0) >= 1.5
        if not quadratic_time or not faster:
            outcome = "refuted"
        else:
            linear = all((x is not None and x <= 1.3) for x in (time_exp["window"], mem_exp["window"]))
            quadratic_memory = all((x is not None and x >= 1.7) for x in (mem_exp["sdpa"], mem_exp["dense"]))
            outcome = "confirmed" if linear and quadratic_memory and not window_worse else "partly"
        return Verdict(outcome, because, {"time exponent": {k: e(v) for k, v in time_exp.items()},
                                          "memory exponent": {k: e(v) for k, v in mem_exp.items()},
                                          "window faster than full SDPA at the largest n": faster,
                                          "window first faster than full SDPA at n": crossing(cost, "window", "sdpa"),
                                          "window loss above full beyond the spread": window_worse})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "long_sequences.png"
        with figure(path, "Attention cost against sequence length (one call, 8 heads of 64; measured)", ncols=2,
                    width=7.5) as (a1, a2):
            for n_, impl in enumerate(COST):
                pts = sorted((r["n"], r["seconds"], r["peak_mib"]) for r in m["cost"] if r["impl"] == impl)
                a1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{n_}", label=LABELS[impl])
                a2.plot([p[0] for p in pts], [max(p[2], 0.1) for p in pts], marker="o", color=f"C{n_}", label=LABELS[impl])
            for a, label in ((a1, "seconds per call"), (a2, "peak memory above the inputs (MiB)")):
                a.set_xscale("log", base=2)
                a.set_yscale("log")
                a.set_xlabel("sequence length n")
                a.set_ylabel(label)
            a1.legend(fontsize=8)
        return [path]
