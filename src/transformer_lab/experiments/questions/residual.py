"""`residual`: what do residual connections do?

With x_{l+1} = x_l + F(x_l), ∂x_{l+1}/∂x_l = 1 + ∂F/∂x_l: the identity term carries the gradient from
the top of the stack to the bottom whatever F does; without it the gradient is a product of the
layers' Jacobians and can shrink geometrically with depth. Measured on the date task's model (post-LN,
as the paper): the gradient norm reaching each encoder layer at initialisation, shallow and deep, with
and without residuals; and the loss each deep variant trains to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.data.batches import make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data, sweep
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.tasks.translation import seq2seq_loss


def layer_gradients(depth: int, residual: bool, seed: int, pairs, vocab) -> list[float]:
    """Gradient norm of each encoder layer's parameters for one batch, at initialisation (dropout off)."""
    torch.manual_seed(seed)
    model = Transformer(preset("tiny", src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), n_encoder_layers=depth,
                              n_decoder_layers=depth, residual=residual, dropout=0.0, attention_dropout=0.0))
    seq2seq_loss(0.0)(model, make_batch(pairs, vocab), torch.device("cpu")).loss.backward()
    return [float(torch.sqrt(sum((p.grad**2).sum() for p in layer.parameters()))) for layer in model.encoder.layers]


def final_loss(rows: list[dict]) -> list[float]:
    return [sum(r["losses"][-10:]) / len(r["losses"][-10:]) for r in rows]


class Residual(Experiment):
    id = "residual"
    question_zh = "（残差连接的作用）"
    question = "What do residual connections do?"
    claim = "a \"1 +\" term in the gradient prevents vanishing"
    rule = ("Gradient: in the deep stack at initialisation, the gradient norm of the first encoder layer over the "
            "last one is below 0.1 without residuals (vanishing) and at least 0.1 with them. Training: the deep model "
            "without residuals ends with a higher training loss than with them, beyond the spread over seeds. "
            "Confirmed if both; partly if one; inconclusive if the gradient does not vanish and the training "
            "difference stays inside the spread; refuted if the gradient does not vanish and training without "
            "residuals ends lower, beyond the spread.")
    budgets = {"smoke": dict(depths=[2, 4], steps=10, seeds=1),
               "quick": dict(depths=[2, 6], steps=200, seeds=2),
               "full": dict(depths=[2, 6, 12], steps=1000, seeds=3)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        train, _, vocab = dates_data((1900, 2099), 20)
        batch = train[:64]
        grads = {f"{'with' if r else 'without'} residual, {d} layers": layer_gradients(d, r, ctx.seed, batch, vocab)
                 for d in s["depths"] for r in (True, False)}
        deep = max(s["depths"])
        variants = {f"{'with' if r else 'without'} residual": {"model": {"residual": r, "n_encoder_layers": deep,
                                                                          "n_decoder_layers": deep}} for r in (True, False)}
        runs = sweep(ctx, variants, s["seeds"], s["steps"], self.id, n_test=20)
        return {"gradients": grads, "runs": runs, "deep": deep}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        deep = m["deep"]
        g_with, g_without = m["gradients"][f"with residual, {deep} layers"], m["gradients"][f"without residual, {deep} layers"]
        r_with, r_without = g_with[0] / g_with[-1], g_without[0] / g_without[-1]
        vanishing_prevented = r_without < 0.1 <= r_with
        l_with, l_without = final_loss(m["runs"]["with residual"]), final_loss(m["runs"]["without residual"])
        d = differs(l_without, l_with)
        trains_worse = d > 0
        because = (f"{deep} layers at initialisation: first/last encoder-layer gradient norm {r_with:.2f} with residuals, "
                   f"{r_without:.2g} without; training loss after the run {fmt(*mean_spread(l_with))} with, "
                   f"{fmt(*mean_spread(l_without))} without")
        if vanishing_prevented and trains_worse:
            outcome = "confirmed"
        elif vanishing_prevented or trains_worse:
            outcome = "partly"
        else:
            outcome = "refuted" if d < 0 else "inconclusive"
        return Verdict(outcome, because, {f"first/last layer gradient, {deep} layers, with / without":
                                          f"{r_with:.3f} / {r_without:.3g}",
                                          "final training loss, with / without": f"{mean_spread(l_with)[0]:.3f} / "
                                                                               f"{mean_spread(l_without)[0]:.3f}"})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "residual.png"
        with figure(path, "Residual connections: gradient per layer at initialisation, and training", ncols=2) as (a1, a2):
            for name, g in m["gradients"].items():
                a1.plot(range(1, len(g) + 1), g, "o-" if name.startswith("with ") else "s--", label=name)
            a1.set_yscale("log")
            a1.set_xlabel("encoder layer (1 = bottom)")
            a1.set_ylabel("gradient norm of the layer's parameters")
            a1.legend(fontsize=8)
            for name, rows in m["runs"].items():
                a2.plot(rows[0]["losses"], label=f"{name}, {m['deep']} layers")
            a2.set_yscale("log")
            a2.set_xlabel("step")
            a2.set_ylabel("training loss")
            a2.legend()
        return [path]
