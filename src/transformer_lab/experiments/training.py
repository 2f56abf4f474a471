"""Small training runs the experiments share: the date task's encoder-decoder (generated data, so
every budget runs anywhere), trained for a few hundred steps with the paper's recipe, then scored on
held-out dates. Each run is a pure function of its settings and seed."""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from transformer_lab.data.batches import ShuffledBatches, make_batch
from transformer_lab.data.synthetic import DateTask
from transformer_lab.data.vocab import Vocab
from transformer_lab.generation.search import Seq2SeqStep, greedy_search
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.runtime import Runtime
from transformer_lab.tasks.dates import RECIPE, exact_match
from transformer_lab.tasks.translation import seq2seq_loss
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.losses import label_smoothed_nll
from transformer_lab.runtime.signals import Interrupted
from transformer_lab.training.loop import Trainer, TrainResult


# The budgets of a two-variant comparison on the date task: 600 steps reach ~55% exact match on the
# held-out dates (the demo's 2,000 reach 99%), two seeds at quick, three at full.
DATES_BUDGETS = {"smoke": dict(steps=20, seeds=1, n_test=20),
                 "quick": dict(steps=600, seeds=2, n_test=200),
                 "full": dict(steps=2000, seeds=3, n_test=1000)}


@dataclass
class DatesRun:
    model: Transformer
    losses: list[float]  # the training loss at every step (NaN once diverged)
    val_nll: float  # teacher-forced NLL per target token on held-out dates
    exact_match: float  # greedy decoding, held-out dates
    diverged: bool


def fit(trainer: Trainer) -> TrainResult:
    """``trainer.fit()`` for an experiment: a stop signal (Ctrl-C, SIGTERM) ends the Trainer's run cleanly,
    and then the whole experiment (Interrupted), so no result is written from half-trained models."""
    trainer.on_signal = "the current step finishes; the experiment stops and writes no result"
    result = trainer.fit()
    if result.signum is not None:
        raise Interrupted(result.signum)
    return result


@functools.lru_cache(maxsize=8)
def dates_data(years: tuple[int, int], n_test: int, seed: int = 0):
    """Train and held-out pairs and the vocabulary (cached: a pure function of its arguments; callers
    must not modify the lists)."""
    train, test = DateTask(first_year=years[0], last_year=years[1], n_test=n_test, seed=seed).pairs()
    return train, test, Vocab(DateTask.symbols())


@torch.no_grad()
def held_out_nll(model: Transformer, pairs, vocab: Vocab) -> float:
    model.eval()
    device = next(model.parameters()).device
    batch = make_batch(pairs, vocab)
    logp = model(batch.src.to(device), batch.tgt_in.to(device))
    res = label_smoothed_nll(logp.float(), batch.tgt_out.to(device), 0.0, vocab.pad_id)
    return float(res.nll) / res.n_tokens


def train_dates(seed: int, steps: int, model_overrides: dict[str, Any] | None = None,
                train_overrides: dict[str, Any] | None = None, years: tuple[int, int] = (1900, 2099), n_test: int = 200,
                batch_size: int = 64, device: torch.device | str = "cpu", model_preset: str = "tiny") -> DatesRun:
    """Train the demo's model (with ``model_overrides`` on the preset) for ``steps`` steps of the demo's
    recipe (with ``train_overrides``); a run whose loss turns NaN/inf is reported as diverged, not raised."""
    train, test, vocab = dates_data(tuple(years), n_test)
    torch.manual_seed(seed)
    model = Transformer(preset(model_preset, src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), pad_id=vocab.pad_id,
                              **(model_overrides or {})))
    cfg: TrainConfig = replace(RECIPE, **{"max_steps": steps, "warmup": min(RECIPE.warmup, max(1, steps // 5)), "seed": seed,
                                          "log_every": 1, "progress": False, **(train_overrides or {})})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, ShuffledBatches(train, vocab, batch_size, seed), cfg, Path(tmp), seq2seq_loss(cfg.label_smoothing),
                          runtime=Runtime(torch.device(device)))
        diverged = False
        try:
            result = fit(trainer)
            losses = [r["loss"] for r in result.state.history if "loss" in r]
        except FloatingPointError:
            diverged = True
            losses = [r["loss"] for r in trainer.state.history if "loss" in r] + [math.nan]
    model = trainer.model.eval()
    if diverged:
        return DatesRun(model, losses, math.nan, 0.0, True)
    return DatesRun(model, losses, held_out_nll(model, test, vocab), exact_match(model, test, vocab)[0], False)


def train_depth(seed: int, steps: int, depth: int, norm_first: bool, train: dict[str, Any], n_test: int,
                device: torch.device | str = "cpu") -> dict[str, Any]:
    """``train_dates`` at ``depth`` encoder and decoder layers, post-LN or pre-LN, with ``train`` overrides
    (warm-up included): one row (seed, losses, diverged, val_nll)."""
    run = train_dates(seed, steps, {"n_encoder_layers": depth, "n_decoder_layers": depth, "norm_first": norm_first}, train,
                      n_test=n_test, device=device)
    return dict(seed=seed, losses=run.losses, diverged=run.diverged, val_nll=run.val_nll)


def greedy_outputs(model: Transformer, pairs, vocab: Vocab) -> list[list[str]]:
    batch = make_batch(pairs, vocab)
    res = greedy_search(Seq2SeqStep(model, batch.src), len(pairs), vocab.bos_id, vocab.eos_id, batch.tgt_out.size(1) + 10)
    return [vocab.decode(t) for t in res.tokens]


def sweep(ctx, variants: dict[str, dict[str, Any]], seeds: int, steps: int, desc: str, **common) -> dict[str, list[dict]]:
    """Every variant (``{"model": {...}, "train": {...}}`` overrides) trained with ``seeds`` seeds from
    ``ctx.seed``: per variant, one row per seed (losses, val_nll, exact_match, diverged). The models are
    kept on ``ctx`` (``ctx.models[name]``, the first seed's) for measurements after training."""
    out: dict[str, list[dict]] = {}
    bar = ctx.bar(len(variants) * seeds, desc)
    for name, v in variants.items():
        rows = []
        for i in range(seeds):
            run = train_dates(ctx.seed + i, steps, v.get("model"), v.get("train"), device=ctx.device, **common)
            rows.append(dict(seed=ctx.seed + i, val_nll=run.val_nll, exact_match=run.exact_match, diverged=run.diverged,
                             losses=run.losses))
            if i == 0:
                ctx.models[name] = run.model
            bar.update(1)
        out[name] = rows
    bar.close()
    return out


def values(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows]


@torch.no_grad()
def encoder_attention(model: Transformer, src: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's self-attention weights, one (B, H, S, S) tensor per layer: each layer's attention
    is re-run on its own inputs with ``need_weights`` (hooks; the model is unchanged)."""
    model.eval()
    weights: list[torch.Tensor] = []
    busy = []

    def hook(module, args, kwargs, output):
        if busy:  # the re-run below calls this hook too
            return
        query, key_value, mask = args[0], args[1], args[2] if len(args) > 2 else kwargs.get("mask")
        pos = args[3] if len(args) > 3 else kwargs.get("q_pos")
        busy.append(True)
        try:
            weights.append(module(query, key_value, mask, pos, pos, need_weights=True).weights)
        finally:
            busy.clear()

    handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in model.encoder.layers]
    try:
        model.encode(src)
    finally:
        for h in handles:
            h.remove()
    return weights[: len(model.encoder.layers)]
