"""`embedding-scale`: why multiply the embeddings by √d_model?

The token table is initialised small (Xavier: a row's norm is about √(2D / (V + D)), near 1 here),
while a sinusoidal position vector has norm √(D/2) (each sin²+cos² pair sums to 1). Unscaled, the
position would drown the token in the sum; × √d_model brings the two to one scale. Measured: the norms
at initialisation and after training, and the quality of the date task's model with and without the
scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import DATES_BUDGETS, dates_data, sweep, values
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer

VARIANTS = {"× √d_model (the paper)": {}, "no scale": {"model": {"scale_embeddings": False}}}


def norms(model) -> dict[str, float]:
    token = model.src_embed.token
    rows = token.weight.detach()[4:] * token.factor  # real symbols, as the embedding layer hands them on
    return {"token": float(rows.norm(dim=-1).mean()), "position": math.sqrt(model.config.d_model / 2)}


class EmbeddingScale(Experiment):
    id = "embedding-scale"
    question_zh = "为何在获取输入词向量之后需要对矩阵乘以embedding size的开方？"
    question = "Why multiply embeddings by √d_model?"
    claim = "brings embeddings to the scale of the position encoding"
    rule = ("Scale: at initialisation, the mean norm of a scaled token embedding is within 0.5–2× a position "
            "vector's, while unscaled it is below 0.25× (the position dominates). Quality: held-out NLL of the "
            "date task's model is worse without the scale, beyond the spread over seeds. Confirmed if both; partly if "
            "the scale holds but the quality difference stays inside the spread (or favours no scale); refuted if "
            "the scale does not hold.")
    budgets = DATES_BUDGETS

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        _, _, vocab = dates_data((1900, 1900), 5)
        init = {}
        for name, v in VARIANTS.items():
            model = Transformer(preset("tiny", src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), **v.get("model", {})))
            init[name] = norms(model)
        runs = sweep(ctx, VARIANTS, s["seeds"], s["steps"], self.id, n_test=s["n_test"])
        trained = {name: norms(model) for name, model in ctx.models.items()}
        return {"runs": runs, "init": init, "trained": trained}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        scaled, plain = (m["init"][n] for n in VARIANTS)
        r_scaled, r_plain = scaled["token"] / scaled["position"], plain["token"] / plain["position"]
        scale_ok = 0.5 <= r_scaled <= 2 and r_plain < 0.25
        s_runs, p_runs = (m["runs"][n] for n in VARIANTS)
        worse = differs(values(p_runs, "val_nll"), values(s_runs, "val_nll")) > 0
        because = (f"at initialisation a token embedding is {r_scaled:.2f}× a position vector's norm with the scale and "
                   f"{r_plain:.2f}× without; held-out NLL {fmt(*mean_spread(values(s_runs, 'val_nll')))} with the scale, "
                   f"{fmt(*mean_spread(values(p_runs, 'val_nll')))} without")
        outcome = "refuted" if not scale_ok else "confirmed" if worse else "partly"
        return Verdict(outcome, because, {"token/position norm at init, scaled / unscaled": f"{r_scaled:.2f} / {r_plain:.3f}",
                                          "held-out NLL, scaled / unscaled": f"{mean_spread(values(s_runs, 'val_nll'))[0]:.3f} / "
                                                                             f"{mean_spread(values(p_runs, 'val_nll'))[0]:.3f}"})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "embedding_scale.png"
        names = list(VARIANTS)
        with figure(path, "Token embedding vs position vector (date task model)", ncols=2) as (a1, a2):
            width = 0.35
            for i, when in enumerate(("init", "trained")):
                a1.bar([x + i * width for x in range(2)], [m[when][n]["token"] / m[when][n]["position"] for n in names],
                       width, label=f"{when}")
            a1.set_xticks([x + width / 2 for x in range(2)], ["× √d_model", "no scale"])
            a1.axhline(1.0, color="k", ls="--")
            a1.set_ylabel("token norm / position norm")
            a1.legend()
            stats = [mean_spread(values(m["runs"][n], "val_nll")) for n in names]
            a2.bar(["× √d_model", "no scale"], [x[0] for x in stats], yerr=[x[1] for x in stats])
            a2.set_ylabel("held-out NLL per token")
        return [path]
