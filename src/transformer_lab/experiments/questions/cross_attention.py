"""`cross-attention`: how do the encoder and the decoder interact?

The canon's answer: through cross-attention (the decoder's second sub-layer, §3.2.3), whose queries
come from the decoder and whose keys and values come from the encoder output. Put to a trained date
model three ways: (a) where the cross-attention of each layer and head looks, against the task's
known alignment (the source characters each target word reads aloud, see ``_alignment``); (b) the
model with every cross-attention output zeroed at test time: exact match and held-out NLL; (c) with
it zeroed, whether the decoder's output still changes when the source does (it must not, if
cross-attention is the only path from encoder to decoder).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from transformer_lab.data.batches import make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._alignment import measured_per_seed, probe, score
from transformer_lab.experiments.stats import fmt, mean_spread
from transformer_lab.experiments.training import dates_data, held_out_nll
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.attention import AttentionResult
from transformer_lab.tasks.dates import exact_match


@contextmanager
def ablated_cross_attention(model: Transformer) -> Iterator[None]:
    """Every decoder layer's cross-attention returns zeros (its residual branch adds nothing)."""
    def zero(module, args, out: AttentionResult) -> AttentionResult:
        return AttentionResult(torch.zeros_like(out.output), out.weights)

    handles = [layer.cross_attn.register_forward_hook(zero) for layer in model.decoder.layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def cross_attention_maps(model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor) -> list[torch.Tensor]:
    """Teacher-forced cross-attention weights, one (B, H, T, S) tensor per decoder layer."""
    model.eval()
    model.decode(model.encode(src), src, tgt_in, record_cross_attention=True)
    return [layer.cross_weights for layer in model.decoder.layers]


@torch.no_grad()
def source_sensitivity(model: Transformer, pairs, vocab) -> float:
    """Largest change of the decoder's log-probabilities (over real target positions) when every
    target keeps its words but is given another example's source."""
    model.eval()
    same = make_batch(pairs, vocab)
    other = make_batch([(pairs[(i + 1) % len(pairs)][0], tgt) for i, (_, tgt) in enumerate(pairs)], vocab)
    real = same.tgt_out != vocab.pad_id
    return float((model(same.src, same.tgt_in) - model(other.src, other.tgt_in)).abs().amax(-1)[real].max())


def measure(model: Transformer, train, test, vocab, n_probe: int) -> dict[str, Any]:
    p = probe(test[:n_probe], vocab)
    maps = cross_attention_maps(model, p.batch.src, p.batch.tgt_in)
    heads = [[score(w[:, h], p) for h in range(w.size(1))] for w in maps]  # [layer][head]
    layers = [score(w.mean(1), p) for w in maps]  # the heads' average
    best_layer, best_head = max(((l, h) for l in range(len(heads)) for h in range(len(heads[l]))),
                                key=lambda lh: heads[lh[0]][lh[1]]["mass"])
    # one example for the figure: the best head's map, and the aligned cells
    n_src, n_tgt = int(p.real[0].sum()), int((p.batch.tgt_out[0] != vocab.pad_id).sum())
    example = dict(src=vocab.decode(p.batch.src[0].tolist()) + ["</s>"], tgt=list(test[0][1]) + ["</s>"],
                   weights=maps[best_layer][0, best_head, :n_tgt, :n_src].tolist(),
                   aligned=p.aligned[0, :n_tgt, :n_src].tolist(), layer=best_layer, head=best_head)
    em, _ = exact_match(model, test, vocab)
    nll = held_out_nll(model, test, vocab)
    intact_change = source_sensitivity(model, test[:n_probe], vocab)
    with ablated_cross_attention(model):
        em_ablated, _ = exact_match(model, test, vocab)
        nll_ablated = held_out_nll(model, test, vocab)
        ablated_change = source_sensitivity(model, test[:n_probe], vocab)
    return dict(heads=heads, layers=layers, best=dict(layer=best_layer, head=best_head, **heads[best_layer][best_head]),
                example=example, exact_match=em, exact_match_ablated=em_ablated, val_nll=nll, val_nll_ablated=nll_ablated,
                source_change=intact_change, source_change_ablated=ablated_change)


def guess_exact_match(train, test) -> float:
    """Exact match of the best source-independent guess: the most frequent training target, always."""
    guess, _ = Counter(tuple(t) for _, t in train).most_common(1)[0]
    return sum(tuple(t) == guess for _, t in test) / len(test)


class CrossAttention(Experiment):
    id = "cross-attention"
    question_zh = "Encoder端和Decoder端是如何进行交互的？"
    question = "How do encoder and decoder interact?"
    claim = "cross-attention: queries from the decoder, keys and values from the encoder"
    rule = ("Trained date models (one per seed). (a) alignment: in every model, the best cross-attention head puts at "
            "least twice the chance share (uniform over the real source tokens) of its mass on the source characters "
            "the target word reads. (b) ablation: with every cross-attention output zeroed at test time, exact match "
            "falls to at most the source-independent guess (the most frequent training target) + 0.01 in every model. "
            "(c) path: with it zeroed, the decoder's log-probabilities change by at most 1e-5 when the source changes. "
            "Refuted if (c) fails (the decoder reads the encoder some other way); inconclusive if the intact models' "
            "mean exact match is below 0.1 or an intact model's output changes by at most 0.01 with the source (too "
            "little trained for (a) and (b) to mean anything); otherwise confirmed if (a) and (b) hold, partly if one does, refuted if neither.")
    budgets = {"smoke": dict(steps=20, seeds=1, n_test=20, n_probe=20),
               "quick": dict(steps=600, seeds=2, n_test=200, n_probe=200),
               "full": dict(steps=2000, seeds=3, n_test=1000, n_probe=500)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        train, test, vocab = dates_data((1900, 2099), s["n_test"])
        models = measured_per_seed(ctx, s, self.id, lambda run, seed: measure(run.model, train, test, vocab, s["n_probe"]))
        return {"models": models, "guess_exact_match": guess_exact_match(train, test)}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        models, guess = m["models"], m["guess_exact_match"]
        ratios = [r["best"]["mass"] / r["best"]["chance"] for r in models]
        aligned = all(x >= 2 for x in ratios)
        em = [r["exact_match"] for r in models]
        em_ablated = [r["exact_match_ablated"] for r in models]
        collapses = all(x <= guess + 0.01 for x in em_ablated)
        only_path = all(r["source_change_ablated"] <= 1e-5 for r in models)
        reads_source = all(r["source_change"] > 0.01 for r in models)
        because = (f"best cross-attention head puts {fmt(*mean_spread([r['best']['mass'] for r in models]))} of its mass "
                   f"on the aligned source characters (chance {mean_spread([r['best']['chance'] for r in models])[0]:.3f}, "
                   f"{min(ratios):.1f}-{max(ratios):.1f}x); exact match {fmt(*mean_spread(em))} intact, "
                   f"{fmt(*mean_spread(em_ablated))} with cross-attention zeroed (source-independent guess {guess:.3f}); "
                   f"output change when the source changes: {max(r['source_change'] for r in models):.3g} intact, "
                   f"{max(r['source_change_ablated'] for r in models):.3g} ablated")
        if not only_path:
            outcome = "refuted"
        elif mean_spread(em)[0] < 0.1 or not reads_source:
            outcome = "inconclusive"
        elif aligned and collapses:
            outcome = "confirmed"
        elif aligned or collapses:
            outcome = "partly"
        else:
            outcome = "refuted"
        return Verdict(outcome, because, {"best head mass / chance (min over seeds)": round(min(ratios), 2),
                                          "exact match intact / ablated": f"{mean_spread(em)[0]:.3f} / "
                                                                          f"{mean_spread(em_ablated)[0]:.3f}",
                                          "source-independent guess": guess,
                                          "ablated output independent of the source": only_path})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "cross_attention.png"
        first = m["models"][0]
        ex = first["example"]
        with figure(path, "Cross-attention of a trained date model: where it looks, and the model without it",
                    ncols=3, width=5.0, height=4.2) as (a1, a2, a3):
            a1.imshow(ex["weights"], cmap="Blues", vmin=0, vmax=1, aspect="auto")
            ys, xs = zip(*[(t, s) for t, row in enumerate(ex["aligned"]) for s, on in enumerate(row) if on])
            a1.scatter(xs, ys, marker="s", s=60, facecolors="none", edgecolors="red", label="aligned (ground truth)")
            a1.set_xticks(range(len(ex["src"])), ex["src"], fontsize=7)
            a1.set_yticks(range(len(ex["tgt"])), ex["tgt"], fontsize=7)
            a1.set_xlabel("source character (key, from the encoder)")
            a1.set_ylabel("target word (query, from the decoder)")
            a1.set_title(f"layer {ex['layer'] + 1}, head {ex['head'] + 1}: attention weight (0-1)", fontsize=8)
            a1.legend(fontsize=7, loc="lower left")
            a1.grid(False)
            labels, values = [], []
            for l, row in enumerate(first["heads"]):
                for h in range(len(row)):
                    labels.append(f"L{l + 1}H{h + 1}")
                    values.append(mean_spread([r["heads"][l][h]["mass"] for r in m["models"]]))
            a2.bar(labels, [v[0] for v in values], yerr=[v[1] for v in values])
            a2.axhline(first["best"]["chance"], color="red", ls="--", label="chance (uniform over source)")
            a2.set_xlabel("decoder layer / head")
            a2.set_ylabel("attention mass on aligned characters (share, 0-1)")
            a2.tick_params(axis="x", labelsize=7, rotation=90)
            a2.legend(fontsize=7)
            names = ["intact", "cross-attention zeroed"]
            for key, off, label in (("exact_match", -0.2, "exact match (0-1)"), ("val_nll", 0.2, "held-out NLL (nats/token)")):
                stats = [mean_spread([r[key] for r in m["models"]]), mean_spread([r[key + "_ablated"] for r in m["models"]])]
                a3.bar([i + off for i in range(2)], [x[0] for x in stats], width=0.4, yerr=[x[1] for x in stats], label=label)
            a3.set_xticks(range(2), names)
            a3.set_ylabel("exact match (0-1) / NLL (nats per token)")
            a3.legend(fontsize=7)
        return [path]
