"""`slowest-part`: which part of a block is slowest?

Per token, the FFN costs 2·2·d·d_ff = 16·d² multiply-adds (×2 for FLOPs, d_ff = 4d) against the
attention sub-layer's 4·2·d² for its projections plus 2·2·T·d for the scores and the weighted sum: the
FFN dominates short sequences, attention's T² term long ones (the FLOPs cross at T = 2d). Measured:
forward time of each sub-layer of a base-sized block (d = 512, d_ff = 2048, h = 8) across lengths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.bench.harness import time_rounds
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.nn.attention import MultiHeadAttention
from transformer_lab.nn.feedforward import PositionwiseFeedForward


class SlowestPart(Experiment):
    id = "slowest-part"
    question_zh = "Transformer一个block中最耗时的部分是哪个？"
    question = "Which part of a block is slowest?"
    claim = "the FFN (most parameters)"
    rule = ("Measured forward time of the self-attention sub-layer and of the FFN at each length. Confirmed if the FFN "
            "is slower at every length tested; refuted if attention is slower at every length; partly if the FFN is "
            "slower at short lengths and attention at long ones (the crossing length is reported).")
    budgets = {"smoke": dict(d_model=64, d_ff=256, heads=4, lengths=[8, 64], tokens=512, steps=2, rounds=1),
               "quick": dict(d_model=512, d_ff=2048, heads=8, lengths=[32, 128, 512, 1024, 2048, 4096], tokens=8192,
                             steps=3, rounds=3),
               "full": dict(d_model=512, d_ff=2048, heads=8, lengths=[32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
                            tokens=16384, steps=5, rounds=5)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        d = s["d_model"]
        attn, ffn = MultiHeadAttention(d, s["heads"]).eval(), PositionwiseFeedForward(d, s["d_ff"]).eval()
        rows = []
        bar = ctx.bar(len(s["lengths"]), self.id)
        for t in s["lengths"]:
            x = torch.randn(max(1, s["tokens"] // t), t, d)  # the same number of tokens at every length
            with torch.no_grad():
                times = time_rounds({"attention": lambda: attn(x, x), "ffn": lambda: ffn(x)}, s["steps"], s["rounds"])
            n = x.shape[0] * t
            rows.append(dict(length=t, attention_us_per_token=1e6 * times["attention"] / n,
                             ffn_us_per_token=1e6 * times["ffn"] / n,
                             attention_flops_per_token=2 * (4 * d * d + 2 * t * d), ffn_flops_per_token=2 * 2 * d * s["d_ff"]))
            bar.update(1)
        bar.close()
        return {"rows": rows, "d_model": d}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        rows = m["rows"]
        ffn_slower = [r["ffn_us_per_token"] > r["attention_us_per_token"] for r in rows]
        cross = next((r["length"] for r, slow in zip(rows, ffn_slower) if not slow), None)
        ratios = {r["length"]: round(r["attention_us_per_token"] / r["ffn_us_per_token"], 2) for r in rows}
        if all(ffn_slower):
            outcome, because = "confirmed", f"the FFN is slower at every length up to {rows[-1]['length']}"
        elif not any(ffn_slower):
            outcome, because = "refuted", f"attention is slower at every length from {rows[0]['length']}"
        else:
            outcome = "partly"
            because = (f"the FFN is slower up to {max(r['length'] for r, s in zip(rows, ffn_slower) if s)} tokens, "
                       f"attention from {cross} (attention/FFN time: {ratios[rows[0]['length']]} at {rows[0]['length']}, "
                       f"{ratios[rows[-1]['length']]} at {rows[-1]['length']})")
        return Verdict(outcome, because, {"attention/FFN time by length": ratios, "attention slower from": cross})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        rows = m["rows"]
        path = folder / "slowest_part.png"
        lengths = [r["length"] for r in rows]
        with figure(path, f"Time per token of each sub-layer (d_model={m['d_model']}), forward", ncols=2) as (a1, a2):
            a1.loglog(lengths, [r["attention_us_per_token"] for r in rows], "o-", label="self-attention")
            a1.loglog(lengths, [r["ffn_us_per_token"] for r in rows], "s-", label="FFN")
            a1.set_xlabel("sequence length (tokens)")
            a1.set_ylabel("µs per token, measured")
            a1.legend()
            a2.loglog(lengths, [r["attention_flops_per_token"] for r in rows], "o-", label="self-attention")
            a2.loglog(lengths, [r["ffn_flops_per_token"] for r in rows], "s-", label="FFN")
            a2.set_xlabel("sequence length (tokens)")
            a2.set_ylabel("FLOPs per token, counted")
            a2.legend()
        return [path]
