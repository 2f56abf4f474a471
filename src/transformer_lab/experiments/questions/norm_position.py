"""`norm-position`: where does LayerNorm go?

The paper (§3.1): LayerNorm(x + Sublayer(x)), after the residual add ("post-LN"). The alternative,
x + Sublayer(LayerNorm(x)) with a final LayerNorm ("pre-LN", GPT-2 onwards), keeps an identity path
from the output to every layer; Xiong et al. 2020 ("On Layer Normalization in the Transformer
Architecture") show that post-LN's gradients at initialisation grow towards the output, so it needs a
learning-rate warm-up, and pre-LN's are flat over depth. The claim is the paper's placement, which the
library's paper configuration is checked to follow; what the choice does is measured: the gradient
norm of each layer at initialisation, and the training loss of post-LN and pre-LN, shallow and deep,
with and without warm-up, at the same peak learning rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from transformer_lab.data.batches import make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data, train_depth
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer, TransformerConfig
from transformer_lab.tasks.translation import seq2seq_loss

PLACEMENTS = {"post-LN": False, "pre-LN": True}  # name -> norm_first


def _model(vocab, depth: int, norm_first: bool, **overrides: Any) -> Transformer:
    return Transformer(preset("tiny", src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), pad_id=vocab.pad_id,
                              n_encoder_layers=depth, n_decoder_layers=depth, norm_first=norm_first, **overrides))


def final_loss(row: dict[str, Any]) -> float:
    """Mean training loss over the last tenth of the run; a diverged run counts as its first step's loss
    (no better than untrained)."""
    if row["diverged"]:
        return row["losses"][0]
    tail = row["losses"][-max(1, len(row["losses"]) // 10):]
    return sum(tail) / len(tail)


def layer_gradients(depth: int, norm_first: bool, seed: int, pairs, vocab) -> dict[str, list[float]]:
    """Gradient norm of each layer's parameters for one batch at initialisation (dropout off), per stack."""
    torch.manual_seed(seed)
    model = _model(vocab, depth, norm_first, dropout=0.0, attention_dropout=0.0)
    seq2seq_loss(0.0)(model, make_batch(pairs, vocab), torch.device("cpu")).loss.backward()

    def norms(layers) -> list[float]:
        return [float(torch.sqrt(sum((p.grad**2).sum() for p in layer.parameters()))) for layer in layers]

    return {"encoder": norms(model.encoder.layers), "decoder": norms(model.decoder.layers)}


@torch.no_grad()
def paper_config_is_post_ln() -> bool:
    """The library's paper configuration (TransformerConfig's defaults): does a sub-layer connection
    compute LayerNorm(x + Sublayer(x))?"""
    torch.manual_seed(0)
    connection = TransformerConfig().block().sublayer().eval()
    d = connection.norm.normalized_shape[0]
    x, f = torch.randn(2, 5, d), torch.nn.Linear(d, d)
    expected = F.layer_norm(x + f(x), connection.norm.normalized_shape, connection.norm.weight, connection.norm.bias,
                            connection.norm.eps)
    return bool(torch.allclose(connection(x, f), expected, atol=1e-5))


def _name(placement: str, depth: int, warm: bool) -> str:
    return f"{placement}, {depth} layers, {'warm-up' if warm else 'no warm-up'}"


class NormPosition(Experiment):
    id = "norm-position"
    question_zh = "LayerNorm 在Transformer的位置是哪里？"
    question = "Where does LayerNorm go?"
    claim = "after the residual add (post-LN)"
    rule = ("Placement: the library's paper configuration computes LayerNorm(x + Sublayer(x)) (checked numerically). "
            "What the choice does: the date task's model, post-LN and pre-LN, at the budget's depths, with no warm-up "
            "and with a linear warm-up, at one peak learning rate (linear decay after); per setting, the final "
            "training loss (mean over the last tenth of the steps; a diverged run counts as its first loss) compared "
            "beyond the spread over seeds. Refuted if the paper configuration is not post-LN. Otherwise: partly if "
            "pre-LN ends lower in at least one setting (the placement matters, and the paper's is not the robust "
            "one); confirmed if it ends lower in none and post-LN ends lower in at least one; inconclusive if no "
            "setting separates them. Gradient norms per layer at initialisation are reported (Xiong et al. 2020), "
            "not part of the rule.")
    budgets = {"smoke": dict(depths=[2, 3], steps=6, seeds=1, lr=3e-3, warmup=2, n_test=20),
               "quick": dict(depths=[2, 6], steps=80, seeds=2, lr=3e-3, warmup=27, n_test=50),
               "full": dict(depths=[2, 6], steps=600, seeds=3, lr=3e-3, warmup=200, n_test=200)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        pairs, _, vocab = dates_data((1900, 2099), s["n_test"])
        grads = {f"{p}, {d} layers": layer_gradients(d, nf, ctx.seed, pairs[:64], vocab)
                 for d in s["depths"] for p, nf in PLACEMENTS.items()}
        runs: dict[str, list[dict]] = {}
        bar = ctx.bar(len(s["depths"]) * len(PLACEMENTS) * 2 * s["seeds"], self.id)
        for depth in s["depths"]:
            for warm in (False, True):
                for placement, norm_first in PLACEMENTS.items():
                    train = {"schedule": "linear", "lr": s["lr"], "warmup": s["warmup"] if warm else 1}
                    rows = []
                    for i in range(s["seeds"]):
                        rows.append(train_depth(ctx.seed + i, s["steps"], depth, norm_first, train, s["n_test"], ctx.device))
                        bar.update(1)
                    runs[_name(placement, depth, warm)] = rows
        bar.close()
        return {"paper_post_ln": paper_config_is_post_ln(), "depths": s["depths"], "gradients": grads, "runs": runs}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        settings = [(d, w) for d in m["depths"] for w in (False, True)]
        loss = {name: [final_loss(r) for r in rows] for name, rows in m["runs"].items()}
        signs = {(d, w): differs(loss[_name("post-LN", d, w)], loss[_name("pre-LN", d, w)]) for d, w in settings}
        parts = [f"{d} layers {'with' if w else 'without'} warm-up: post-LN "
                 f"{fmt(*mean_spread(loss[_name('post-LN', d, w)]))}, pre-LN {fmt(*mean_spread(loss[_name('pre-LN', d, w)]))}"
                 for d, w in settings]
        deep = max(m["depths"])
        ratio = {p: m["gradients"][f"{p}, {deep} layers"]["decoder"][-1] / m["gradients"][f"{p}, {deep} layers"]["decoder"][0]
                 for p in PLACEMENTS}
        because = (f"the paper configuration is {'post-LN' if m['paper_post_ln'] else 'not post-LN'}; final training "
                   f"loss, {'; '.join(parts)}; at initialisation the last/first decoder-layer gradient norm is "
                   f"{ratio['post-LN']:.2f} post-LN and {ratio['pre-LN']:.2f} pre-LN ({deep} layers)")
        if not m["paper_post_ln"]:
            outcome = "refuted"
        elif any(v > 0 for v in signs.values()):
            outcome = "partly"
        elif any(v < 0 for v in signs.values()):
            outcome = "confirmed"
        else:
            outcome = "inconclusive"
        word = {1: "pre-LN lower", -1: "post-LN lower", 0: "inside the spread"}
        return Verdict(outcome, because, {
            "paper configuration is post-LN": m["paper_post_ln"],
            **{f"{d} layers, {'warm-up' if w else 'no warm-up'}": word[signs[(d, w)]] for d, w in settings},
            f"last/first decoder-layer gradient at initialisation, {deep} layers": {p: round(v, 3) for p, v in ratio.items()}})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "norm_position.png"
        with figure(path, "Post-LN vs pre-LN: gradient per layer at initialisation, and training loss", ncols=3,
                    width=5.0) as (a1, a2, a3):
            for name, g in m["gradients"].items():
                layers = g["encoder"] + g["decoder"]
                a1.plot(range(1, len(layers) + 1), layers, "o-" if name.startswith("post") else "s--", label=name)
            a1.set_yscale("log")
            a1.set_xlabel("layer, input to output (encoder, then decoder)")
            a1.set_ylabel("gradient norm of the layer's parameters")
            a1.legend(fontsize=7)
            names = list(m["runs"])
            stats = [mean_spread([final_loss(r) for r in m["runs"][n]]) for n in names]
            a2.barh(range(len(names)), [x[0] for x in stats], xerr=[x[1] for x in stats],
                    color=["C0" if n.startswith("post") else "C1" for n in names])
            a2.set_yticks(range(len(names)), names, fontsize=7)
            a2.set_xlabel("final training loss (nats/token; bars: mean, whiskers: spread)")
            deep = max(m["depths"])
            for name, rows in m["runs"].items():
                if f"{deep} layers" in name:
                    a3.plot(rows[0]["losses"], "-" if name.startswith("post") else "--", label=name)
            a3.set_xlabel("step")
            a3.set_ylabel("training loss (nats/token, first seed)")
            a3.set_title(f"{deep} layers", fontsize=9)
            a3.legend(fontsize=7)
        return [path]
