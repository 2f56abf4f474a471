"""`padding-mask`: how, and why, mask padding?

How: the key-padding mask hides padded keys from every query (boolean, True = may attend; inside the
softmax the masked scores get the dtype's lowest value, so their weights are exactly 0). Why: without
it, a real token's output depends on how much padding its batch happened to need. Measured on a
random encoder: the outputs at real positions as padding is appended, with and without the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.masks import padding_mask


class PaddingMask(Experiment):
    id = "padding-mask"
    question_zh = "在计算attention score的时候如何对padding做mask操作？为什么要对padding做mask？"
    question = "How and why mask padding?"
    claim = "set padded keys' scores to −inf before softmax"
    rule = ("Confirmed if, with the key-padding mask, the outputs at real positions change by at most 1e-5 (max abs) "
            "for every amount of appended padding, while without it they change by more than 1e-2 at the largest "
            "amount (the mask is what keeps padding out); refuted if the masked outputs change.")
    budgets = {"smoke": dict(length=8, pads=[0, 1, 8], batch=2, preset="tiny"),
               "quick": dict(length=16, pads=[0, 1, 4, 16, 64, 128], batch=8, preset="small"),
               "full": dict(length=32, pads=[0, 1, 4, 16, 64, 128, 200], batch=16, preset="small")}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        model = Transformer(preset(s["preset"], src_vocab_size=100, tgt_vocab_size=100, dropout=0.0)).eval()
        real = torch.randint(1, 100, (s["batch"], s["length"]))
        rows = []
        with torch.no_grad():
            x0 = model.src_embed(real)
            pos0 = torch.arange(s["length"])
            base = model.encoder(x0, padding_mask(real, 0), pos0)
            for p in s["pads"]:
                tokens = torch.cat([real, torch.zeros(s["batch"], p, dtype=torch.long)], 1)
                x, pos = model.src_embed(tokens), torch.arange(tokens.size(1))
                masked = model.encoder(x, padding_mask(tokens, 0), pos)[:, : s["length"]]
                unmasked = model.encoder(x, None, pos)[:, : s["length"]]
                rows.append(dict(pads=p, masked_change=float((masked - base).abs().max()),
                                 unmasked_change=float((unmasked - base).abs().max())))
        return {"rows": rows}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        rows = m["rows"]
        masked = max(r["masked_change"] for r in rows)
        unmasked = rows[-1]["unmasked_change"]
        ok, needed = masked <= 1e-5, unmasked > 1e-2
        because = (f"with the mask, real outputs change by at most {masked:.1e} as up to {rows[-1]['pads']} pads are "
                   f"appended; without it, by {unmasked:.2f}")
        outcome = "confirmed" if ok and needed else "refuted" if not ok else "partly"
        return Verdict(outcome, because, {"max change with mask": f"{masked:.1e}",
                                          f"change without mask, {rows[-1]['pads']} pads": round(unmasked, 4)})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        rows = m["rows"]
        path = folder / "padding_mask.png"
        with figure(path, "Outputs at real positions as padding is appended") as (ax,):
            ax.plot([r["pads"] for r in rows], [max(r["unmasked_change"], 1e-12) for r in rows], "o-", label="no mask")
            ax.plot([r["pads"] for r in rows], [max(r["masked_change"], 1e-12) for r in rows], "s-", label="key-padding mask")
            ax.set_yscale("log")
            ax.set_xlabel("pad tokens appended")
            ax.set_ylabel("max |change| of real-token outputs")
            ax.legend()
        return [path]
