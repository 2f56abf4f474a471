"""`neuron-importance`: three ways to rank the importance of neurons.

The canon's answer: by gradient, by activation, by entropy ("higher output entropy = more important").
Put to the FFN neurons (the d_ff hidden units, §3.3) of a trained date model. Each score is computed
on training dates (the calibration set), per neuron:

- Taylor (gradient × activation, Molchanov et al. 2017): |Σ_tokens a · ∂L/∂a|, the first-order
  estimate of how much the loss L changes when the neuron's activation a is set to zero;
- activation: mean |a| over the tokens;
- entropy: the Shannon entropy (nats) of the neuron's activations over the tokens, binned into
  ``bins`` equal bins between its smallest and largest value (a dead neuron has entropy 0);
- random: a random order, the baseline every score must beat.

In every FFN, the lowest-ranked fraction of its neurons is zeroed and the held-out NLL measured: a
score that knows which neurons matter keeps the loss lower than a random order as more are pruned.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from transformer_lab.data.batches import make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._alignment import measured_per_seed
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data, held_out_nll
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.feedforward import PositionwiseFeedForward
from transformer_lab.training.losses import label_smoothed_nll

SCORES = ("Taylor |a·grad|", "mean |activation|", "entropy")
RANDOM = "random"


def ffns(model: Transformer) -> list[PositionwiseFeedForward]:
    return [layer.ffn for layer in model.encoder.layers] + [layer.ffn for layer in model.decoder.layers]


@contextmanager
def hidden_units(model: Transformer, masks: list[Tensor] | None = None) -> Iterator[list[Tensor]]:
    """Each FFN's hidden activations a (B, T, d_ff), the input of its second matrix, kept in call order
    (encoder layers, then decoder layers); with ``masks`` (one (d_ff,) 0/1 vector per FFN) multiplied by them."""
    kept: list[Tensor] = []

    def hook(i: int):
        def pre(module, args):
            a = args[0] if masks is None else args[0] * masks[i]
            kept.append(a)
            return (a,)
        return pre

    handles = [f.w_2.register_forward_pre_hook(hook(i)) for i, f in enumerate(ffns(model))]
    try:
        yield kept
    finally:
        for h in handles:
            h.remove()


def entropy(a: Tensor, bins: int) -> Tensor:
    """Entropy (nats) of each column's values, binned between the column's min and max. (N, F) -> (F,)."""
    lo, hi = a.amin(0), a.amax(0)
    idx = ((a - lo) / (hi - lo).clamp_min(1e-12) * bins).long().clamp(0, bins - 1)  # (N, F)
    counts = torch.zeros(bins, a.size(1)).scatter_add_(0, idx, torch.ones_like(a))
    p = counts / a.size(0)
    return -(p * p.clamp_min(1e-12).log()).sum(0)


def neuron_scores(model: Transformer, pairs, vocab, bins: int) -> dict[str, list[Tensor]]:
    """Each score, one (d_ff,) tensor per FFN, from one teacher-forced pass over ``pairs``."""
    model.eval()
    batch = make_batch(pairs, vocab)
    with hidden_units(model) as acts:
        logp = model(batch.src, batch.tgt_in)
    res = label_smoothed_nll(logp, batch.tgt_out, 0.0, vocab.pad_id)
    grads = torch.autograd.grad(res.loss / res.n_tokens, acts)  # with ε = 0 the loss is the NLL
    n_enc = len(model.encoder.layers)
    out: dict[str, list[Tensor]] = {name: [] for name in SCORES}
    for i, (a, g) in enumerate(zip(acts, grads)):
        real = (batch.src if i < n_enc else batch.tgt_out) != vocab.pad_id  # (B, T): tokens, not padding
        # Taylor (Molchanov et al. 2017): |a·g| summed over a sentence's tokens, its absolute value per sentence,
        # then summed over sentences (over the whole set at once, opposite signs of different sentences cancel)
        per_sentence = (a.detach() * g * real[..., None]).sum(1)  # (B, d_ff)
        out[SCORES[0]].append(per_sentence.abs().sum(0))
        a = a.detach()[real]  # (N, d_ff): the real tokens' activations
        out[SCORES[1]].append(a.abs().mean(0))
        out[SCORES[2]].append(entropy(a, bins))
    return out


def pruned_nll(model: Transformer, scores: list[Tensor], fraction: float, test, vocab) -> float:
    """Held-out NLL with the lowest-scoring ``fraction`` of every FFN's neurons zeroed."""
    masks = []
    for s in scores:
        mask = torch.ones_like(s)
        mask[s.argsort()[: int(fraction * s.numel())]] = 0.0
        masks.append(mask)
    with hidden_units(model, masks):
        return held_out_nll(model, test, vocab)


def measure(model: Transformer, calib, test, vocab, s: dict[str, Any], seed: int) -> dict[str, Any]:
    scores = neuron_scores(model, calib, vocab, s["bins"])
    gen = torch.Generator().manual_seed(seed)
    randoms = [[torch.rand(x.numel(), generator=gen) for x in scores[SCORES[0]]] for _ in range(s["n_random"])]
    curves = {name: [pruned_nll(model, scores[name], f, test, vocab) for f in s["fractions"]] for name in SCORES}
    random_curves = [[pruned_nll(model, r, f, test, vocab) for f in s["fractions"]] for r in randoms]
    curves[RANDOM] = [sum(c[j] for c in random_curves) / len(random_curves) for j in range(len(s["fractions"]))]
    dead = sum(int((x == 0).sum()) for x in scores[SCORES[1]]) / sum(x.numel() for x in scores[SCORES[1]])
    return dict(curves=curves, random_curves=random_curves, dead_share=dead)


def area(curve: list[float]) -> float:
    """Mean held-out NLL over the pruned fractions (the first fraction, 0, prunes nothing)."""
    return sum(curve[1:]) / len(curve[1:])


class NeuronImportance(Experiment):
    id = "neuron-importance"
    question_zh = "请描述至少三种判断Transformer中神经元Neuron相对重要程度的具体方法"
    question = "Three ways to rank neuron importance"
    claim = "gradient, activation, entropy (\"higher output entropy = more important\")"
    rule = ("Trained date models (one per seed). In every FFN, neurons ranked by each score (Taylor |a·grad|, mean "
            "|activation|, activation entropy; higher = more important) and by random orders; the lowest-ranked "
            "fraction zeroed; held-out NLL measured at each fraction. A score's figure is its mean NLL over the pruned "
            "fractions (> 0). A score beats random if that figure is below random's beyond the spread over seeds, "
            "does worse if above beyond it. Confirmed if all three scores beat random; partly if one or two do; "
            "refuted if none does and at least one does worse; inconclusive if none differs from random beyond "
            "the spread.")
    budgets = {"smoke": dict(steps=20, seeds=1, n_test=20, n_calib=64, fractions=[0.0, 0.5], bins=16, n_random=1),
               "quick": dict(steps=600, seeds=2, n_test=200, n_calib=512, fractions=[0.0, 0.25, 0.5, 0.75], bins=16,
                             n_random=3),
               "full": dict(steps=2000, seeds=3, n_test=1000, n_calib=2048, fractions=[0.0, 0.25, 0.5, 0.75, 0.9],
                            bins=16, n_random=5)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        train, test, vocab = dates_data((1900, 2099), s["n_test"])
        models = measured_per_seed(ctx, s, self.id,
                                   lambda run, seed: measure(run.model, train[: s["n_calib"]], test, vocab, s, seed))
        return {"fractions": s["fractions"], "models": models}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        areas = {name: [area(r["curves"][name]) for r in m["models"]] for name in (*SCORES, RANDOM)}
        d = {name: differs(areas[name], areas[RANDOM]) for name in SCORES}
        n_beat = sum(x < 0 for x in d.values())
        because = "; ".join(f"{name} {fmt(*mean_spread(areas[name]))}" for name in (*SCORES, RANDOM))
        because = f"mean held-out NLL over pruned fractions {m['fractions'][1:]}: {because} nats/token"
        if n_beat == len(SCORES):
            outcome = "confirmed"
        elif n_beat:
            outcome = "partly"
        elif any(x > 0 for x in d.values()):
            outcome = "refuted"
        else:
            outcome = "inconclusive"
        return Verdict(outcome, because, {f"{name} vs random": {-1: "beats", 0: "inside spread", 1: "worse"}[d[name]]
                                          for name in SCORES})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "neuron_importance.png"
        fr = [100 * f for f in m["fractions"]]
        with figure(path, "FFN neurons of a trained date model zeroed, lowest-ranked first, by each score\n"
                          "(mean over seeds, band: spread)", width=7.5) as (ax,):
            for name in (*SCORES, RANDOM):
                stats = [mean_spread([r["curves"][name][j] for r in m["models"]]) for j in range(len(fr))]
                mean = [x[0] for x in stats]
                (line,) = ax.plot(fr, mean, "k--" if name == RANDOM else "o-", label=name)
                ax.fill_between(fr, [x[0] - x[1] for x in stats], [x[0] + x[1] for x in stats], alpha=0.2,
                                color=line.get_color())
            ax.set_xlabel("neurons zeroed in every FFN (%)")
            ax.set_ylabel("held-out NLL (nats per target token)")
            ax.set_yscale("log")
            ax.legend()
        return [path]
