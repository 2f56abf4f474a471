"""`interpretability`: what do Q, K, V and the attention maps show?

The canon's answer: attention weights show what the model looks at. Put to a trained date model,
whose target words each read known source characters (the task's alignment, ``_alignment``): for
every target word, three attributions over the source characters, on the same inputs —

- raw attention: a decoder layer's cross-attention weights, averaged over its heads;
- attention rollout (Abnar & Zuidema 2020): attention composed through the layers, each residual
  sub-layer counted as half identity, half attention (their 0.5·A + 0.5·I), extended to the
  encoder-decoder: the source relevance R_e = Π (0.5·A_enc + 0.5·I) of the encoder; in each decoder
  layer the target rows mix through 0.5·A_self + 0.5·I, then the cross-attention sub-layer adds
  0.5·A_cross·R_e to half of what was there;
- gradient × input: |Σ_d ∂ log p(y_t) / ∂x_s,d · x_s,d| at the source embeddings x (tokens ×
  √d_model plus positions, what the encoder's first layer receives), a first-order estimate of what
  each source character contributes; also reported, not used by the rule: the same at the token
  embeddings alone (positions left out), the "input" of most NLP saliency studies.

Scored against the alignment (does the highest-scoring character belong to the field the word reads?)
and against each other (Spearman rank correlation over the source characters, per target word).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._alignment import Probe, measured_per_seed, probe, score
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data
from transformer_lab.models.transformer import Transformer

ROLLOUT, GRAD, GRAD_TOKEN = "attention rollout", "gradient × input", "gradient × input (token embedding)"


@contextmanager
def recorded_weights(modules: list[nn.Module]) -> Iterator[list[Tensor]]:
    """Every call of these attention modules returns (and here keeps, in call order) its weights
    (B, H, T_q, T_k): ``need_weights`` is added to the call, which is otherwise unchanged."""
    weights: list[Tensor] = []

    def ask(module, args, kwargs):
        return args, {**kwargs, "need_weights": True}

    def keep(module, args, out):
        weights.append(out.weights.detach())

    handles = [h for m in modules for h in (m.register_forward_pre_hook(ask, with_kwargs=True), m.register_forward_hook(keep))]
    try:
        yield weights
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def attention_maps(model: Transformer, src: Tensor, tgt_in: Tensor) -> dict[str, list[Tensor]]:
    """Head-averaged attention of every layer, teacher-forced: encoder self (B, S, S), decoder self
    (B, T, T) and cross (B, T, S)."""
    model.eval()
    enc = [layer.self_attn for layer in model.encoder.layers]
    dec = [layer.self_attn for layer in model.decoder.layers]
    cross = [layer.cross_attn for layer in model.decoder.layers]
    with recorded_weights(enc) as w_enc, recorded_weights(dec) as w_dec, recorded_weights(cross) as w_cross:
        model(src, tgt_in)
    return {"encoder": [w.mean(1) for w in w_enc], "self": [w.mean(1) for w in w_dec], "cross": [w.mean(1) for w in w_cross]}


def rollout(maps: dict[str, list[Tensor]]) -> Tensor:
    """Attention rollout from each target position to the source tokens (see the module docstring).
    Shapes: -> (B, T, S)."""
    enc = maps["encoder"][0]
    eye_s = torch.eye(enc.size(-1), device=enc.device)
    r_enc = eye_s.expand_as(enc)  # (B, S, S): encoder position -> source token
    for a in maps["encoder"]:
        r_enc = (0.5 * a + 0.5 * eye_s) @ r_enc
    cross = maps["cross"][0]
    r_src = torch.zeros_like(cross)  # (B, T, S): target position -> source token
    eye_t = torch.eye(cross.size(1), device=cross.device)
    for a_self, a_cross in zip(maps["self"], maps["cross"]):
        r_src = (0.5 * a_self + 0.5 * eye_t) @ r_src
        r_src = 0.5 * r_src + 0.5 * a_cross @ r_enc
    return r_src


def gradient_x_input(model: Transformer, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, pad_id: int,
                     at: nn.Module | None = None) -> Tensor:
    """|gradient · input| of each target word's log-probability at each source position, the input
    being the output of ``at`` (default: the source embeddings, tokens plus positions). Shapes: -> (B, T, S)."""
    model.eval()
    kept: list[Tensor] = []
    handle = (at or model.src_embed).register_forward_hook(lambda m, args, out: kept.append(out))
    try:
        logp = model(src, tgt_in)  # (B, T, V)
    finally:
        handle.remove()
    x = kept[0]  # (B, S, D): the source's call, made first (a shared token table is called again for the target)
    picked = logp.gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1).masked_fill(tgt_out == pad_id, 0.0)  # (B, T)
    rows = []
    for t in range(tgt_out.size(1)):  # examples do not interact: one backward pass per target position
        (g,) = torch.autograd.grad(picked[:, t].sum(), x, retain_graph=t < tgt_out.size(1) - 1)
        rows.append((g * x).sum(-1).abs().detach())  # (B, S)
    return torch.stack(rows, 1)


def rank_agreement(a: Tensor, b: Tensor, p: Probe) -> float:
    """Mean Spearman correlation of two (B, T, S) attributions over each example's real source tokens,
    over the target positions that have an alignment."""
    out = []
    for i in range(a.size(0)):
        n = int(p.real[i].sum())
        rows = p.has[i]
        ra = a[i, rows, :n].argsort(-1).argsort(-1).float()
        rb = b[i, rows, :n].argsort(-1).argsort(-1).float()
        ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
        out.append((ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1)).clamp_min(1e-12))
    return float(torch.cat(out).mean())


def measure(model: Transformer, pairs, vocab) -> dict[str, Any]:
    p = probe(pairs, vocab)
    src, tgt_in, tgt_out = p.batch.src, p.batch.tgt_in, p.batch.tgt_out
    maps = attention_maps(model, src, tgt_in)
    methods = {f"attention, layer {l + 1}": a for l, a in enumerate(maps["cross"])}
    methods[ROLLOUT] = rollout(maps)
    methods[GRAD] = gradient_x_input(model, src, tgt_in, tgt_out, vocab.pad_id)
    methods[GRAD_TOKEN] = gradient_x_input(model, src, tgt_in, tgt_out, vocab.pad_id, at=model.src_embed.token)
    names = list(methods)
    agreement = {f"{x} | {y}": rank_agreement(methods[x], methods[y], p) for i, x in enumerate(names) for y in names[i + 1:]}
    n_src, n_tgt = int(p.real[0].sum()), int((tgt_out[0] != vocab.pad_id).sum())
    example = dict(src=vocab.decode(src[0].tolist()) + ["</s>"], tgt=list(pairs[0][1]) + ["</s>"],
                   aligned=p.aligned[0, :n_tgt, :n_src].tolist(),
                   maps={n: a[0, :n_tgt, :n_src].tolist() for n, a in methods.items()})
    return dict(scores={n: score(a, p) for n, a in methods.items()}, agreement=agreement, example=example)


class Interpretability(Experiment):
    id = "interpretability"
    question_zh = "Q、K、V到底是什么？（注意力可视化、可解释性）"
    question = "What do Q, K, V and the attention maps show?"
    claim = "attention weights show what the model looks at"
    rule = ("Trained date models (one per seed); for each target word that reads a known source field, the source "
            "character each attribution ranks highest. Hit rate = share of words whose top character is in the field; "
            "chance = a uniform pick among the real source tokens. Raw attention = the decoder layer whose "
            "head-averaged cross-attention has the highest mean hit rate (the choice favours attention). Raw attention "
            "'finds' the needed token if its mean hit rate is at least twice chance; likewise gradient × input. "
            "Inconclusive if neither finds it; refuted if gradient × input finds it and raw attention does not; "
            "confirmed if raw attention finds it and its hit rate is not below gradient × input's beyond the spread "
            "over seeds; partly if it finds it but is below gradient × input's beyond the spread.")
    budgets = {"smoke": dict(steps=20, seeds=1, n_test=20, n_probe=20),
               "quick": dict(steps=600, seeds=2, n_test=200, n_probe=200),
               "full": dict(steps=2000, seeds=3, n_test=1000, n_probe=500)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        _, test, vocab = dates_data((1900, 2099), s["n_test"])
        return {"models": measured_per_seed(ctx, s, self.id, lambda run, seed: dict(
            exact_match=run.exact_match, **measure(run.model, test[: s["n_probe"]], vocab)))}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        models = m["models"]

        def hits(name: str) -> list[float]:
            return [r["scores"][name]["hit"] for r in models]

        layers = [n for n in models[0]["scores"] if n.startswith("attention, layer")]
        best = max(layers, key=lambda n: mean_spread(hits(n))[0])
        chance = mean_spread([r["scores"][GRAD]["chance"] for r in models])[0]
        att, grad, roll = hits(best), hits(GRAD), hits(ROLLOUT)
        att_finds, grad_finds = mean_spread(att)[0] >= 2 * chance, mean_spread(grad)[0] >= 2 * chance
        d = differs(att, grad)
        agree = mean_spread([r["agreement"][f"{best} | {GRAD}"] for r in models])
        because = (f"the top-ranked source character is in the field the word reads for {fmt(*mean_spread(att))} of "
                   f"words by raw attention ({best}), {fmt(*mean_spread(roll))} by rollout, {fmt(*mean_spread(grad))} by "
                   f"gradient × input (chance {chance:.3f}); rank correlation attention vs gradient × input "
                   f"{fmt(*agree)}")
        if not att_finds and not grad_finds:
            outcome = "inconclusive"
        elif not att_finds:
            outcome = "refuted"
        elif d >= 0:
            outcome = "confirmed"
        else:
            outcome = "partly"
        return Verdict(outcome, because, {"raw attention used": best, "hit rate attention / rollout / grad×input / chance":
                                          f"{mean_spread(att)[0]:.3f} / {mean_spread(roll)[0]:.3f} / "
                                          f"{mean_spread(grad)[0]:.3f} / {chance:.3f}",
                                          "attention vs gradient × input (beyond spread)": d})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        first = m["models"][0]
        ex = first["example"]
        names = list(ex["maps"])
        maps_path, scores_path = folder / "interpretability_maps.png", folder / "interpretability_scores.png"
        with figure(maps_path, "One held-out date: each attribution of each target word to the source characters "
                               "(each row scaled to its maximum; red squares: the aligned field)",
                    ncols=len(names), width=3.6, height=4.0) as axes:
            ys, xs = zip(*[(t, s) for t, row in enumerate(ex["aligned"]) for s, on in enumerate(row) if on])
            for ax, name in zip(axes, names):
                a = torch.tensor(ex["maps"][name])
                ax.imshow(a / a.amax(-1, keepdim=True).clamp_min(1e-12), cmap="Blues", vmin=0, vmax=1, aspect="auto")
                ax.scatter(xs, ys, marker="s", s=50, facecolors="none", edgecolors="red")
                ax.set_xticks(range(len(ex["src"])), ex["src"], fontsize=7)
                ax.set_yticks(range(len(ex["tgt"])), ex["tgt"], fontsize=7)
                ax.set_xlabel("source character")
                ax.set_title(f"{name} (relative, 0-1)", fontsize=8)
                ax.grid(False)
            axes[0].set_ylabel("target word")
        with figure(scores_path, "Which attribution finds the source characters a word reads? (mean over seeds, "
                                 "whiskers: spread)", ncols=2) as (a1, a2):
            for off, key, label in ((-0.2, "hit", "top character in the aligned field"),
                                    (0.2, "mass", "share of attribution on the aligned field")):
                stats = [mean_spread([r["scores"][n][key] for r in m["models"]]) for n in names]
                a1.bar([i + off for i in range(len(names))], [x[0] for x in stats], width=0.4, yerr=[x[1] for x in stats],
                       label=label)
            a1.axhline(first["scores"][GRAD]["chance"], color="red", ls="--", label="chance (uniform over source)")
            a1.set_xticks(range(len(names)), names, fontsize=7, rotation=15)
            a1.set_ylabel("share of aligned target words (0-1)")
            a1.set_ylim(0, 1.3)
            a1.legend(fontsize=7, loc="upper left", ncol=2)
            pairs = list(first["agreement"])
            stats = [mean_spread([r["agreement"][k] for r in m["models"]]) for k in pairs]
            a2.barh(range(len(pairs)), [x[0] for x in stats], xerr=[x[1] for x in stats])
            a2.set_yticks(range(len(pairs)), [k.replace(" | ", "\nvs ") for k in pairs], fontsize=6)
            a2.set_xlabel("Spearman rank correlation over source characters (-1 to 1)")
        return [maps_path, scores_path]
