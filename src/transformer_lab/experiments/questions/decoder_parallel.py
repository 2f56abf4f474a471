"""`decoder-parallel`: where is the parallelism; can the decoder be parallel?

In training the whole target is known, so the decoder runs once over all T positions under the causal
mask (teacher forcing): one pass, T positions in parallel. At inference each token depends on the one
before: T sequential passes (with a K/V cache each pass handles one new position; without one it
recomputes the whole prefix). Measured: time per target token of the teacher-forced pass, of cached
and of uncached greedy decoding, for the same model and the same lengths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.bench.harness import time_rounds
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.generation.search import Seq2SeqStep, greedy_search
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer


class DecoderParallel(Experiment):
    id = "decoder-parallel"
    question_zh = "Transformer的并行化体现在哪个地方？Decoder端可以做并行化吗？"
    question = "Where is the parallelism; can the decoder be parallel?"
    claim = "encoder parallel; decoder parallel only in training (teacher forcing)"
    rule = ("Confirmed if, at the longest target length, the teacher-forced decoder pass costs at most 1/3 of the "
            "time per token of cached greedy decoding (parallel over positions in training, sequential at "
            "inference even with the cache); refuted if autoregressive decoding is as fast per token.")
    budgets = {"smoke": dict(preset="tiny", batch=4, lengths=[8, 16], rounds=1),
               "quick": dict(preset="small", batch=16, lengths=[16, 32, 64, 128], rounds=3),
               "full": dict(preset="base", batch=16, lengths=[16, 32, 64, 128, 256], rounds=3)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        model = Transformer(preset(s["preset"], src_vocab_size=1000, tgt_vocab_size=1000, dropout=0.0)).eval()
        src = torch.randint(4, 1000, (s["batch"], 24))
        rows = []
        bar = ctx.bar(len(s["lengths"]), self.id)
        for t in s["lengths"]:
            tgt = torch.randint(4, 1000, (s["batch"], t))
            memory = model.encode(src).detach()

            def forced():  # the decoder and the generator over all T positions at once
                model.generator(model.decode(memory, src, tgt))

            def cached():
                greedy_search(Seq2SeqStep(model, src, use_cache=True), s["batch"], 2, 10**6, t)

            def uncached():
                greedy_search(Seq2SeqStep(model, src, use_cache=False), s["batch"], 2, 10**6, t)

            with torch.no_grad():
                times = time_rounds({"teacher-forced": forced, "greedy, KV cache": cached,
                                     "greedy, no cache": uncached}, 1, s["rounds"])
            rows.append({"length": t, **{k: 1e3 * v / (t * s["batch"]) for k, v in times.items()}})
            bar.update(1)
        bar.close()
        return {"rows": rows, "preset": s["preset"]}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        last = m["rows"][-1]
        speedup = last["greedy, KV cache"] / last["teacher-forced"]
        no_cache = last["greedy, no cache"] / last["teacher-forced"]
        because = (f"at {last['length']} target tokens the teacher-forced pass is {speedup:.0f}× faster per token than "
                   f"cached greedy decoding ({no_cache:.0f}× than decoding without the cache)")
        outcome = "confirmed" if speedup >= 3 else "refuted" if speedup <= 1.2 else "partly"
        return Verdict(outcome, because, {"cached greedy / teacher-forced, per token": round(speedup, 1),
                                          "uncached greedy / teacher-forced, per token": round(no_cache, 1)})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        rows = m["rows"]
        path = folder / "decoder_parallel.png"
        with figure(path, f"Decoder time per target token ({m['preset']} preset)") as (ax,):
            for key, style in (("teacher-forced", "o-"), ("greedy, KV cache", "s-"), ("greedy, no cache", "^-")):
                ax.plot([r["length"] for r in rows], [r[key] for r in rows], style, label=key)
            ax.set_yscale("log")
            ax.set_xlabel("target length (tokens)")
            ax.set_ylabel("ms per target token")
            ax.legend()
        return [path]
