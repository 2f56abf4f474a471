"""The training loop of the encoder-decoder: Adam (β 0.9/0.98, ε 1e-9), the paper's warm-up schedule,
label smoothing, gradient clipping, a progress bar, metrics to CSV and a loss-curve PNG."""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from transformer_lab.data.vocab import PAD, Batch
from transformer_lab.models.transformer import Transformer
from transformer_lab.training.losses import label_smoothed_nll
from transformer_lab.training.schedules import noam_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    max_steps: int = 2000
    warmup: int = 400
    lr_factor: float = 1.0  # multiplies the paper's schedule
    label_smoothing: float = 0.1
    clip_norm: float | None = 1.0
    time_budget_s: float | None = None  # stop cleanly after this much wall time
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps: expected >= 1, got {self.max_steps}")
        if self.warmup < 1:
            raise ValueError(f"warmup: expected >= 1, got {self.warmup}")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int
    history: list[dict] = field(default_factory=list)  # one row per logged step

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def train(
    model: Transformer,
    batches: Iterator[Batch],
    opts: TrainOptions,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Runs ``opts.max_steps`` optimizer steps (or until the time budget) on ``batches``."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    scheduler = noam_scheduler(optimizer, model.config.d_model, opts.warmup, opts.lr_factor)
    history: list[dict] = []
    start = time.perf_counter()
    tokens = 0
    window_tokens, window_start = 0, start
    bar = tqdm(total=opts.max_steps, desc="train", unit="step", disable=not opts.progress, dynamic_ncols=True)
    step = 0
    try:
        for step in range(1, opts.max_steps + 1):
            batch = next(batches)
            lr = scheduler.get_last_lr()[0]
            logp = model(batch.src, batch.tgt_in)  # (B, T, V)
            res = label_smoothed_nll(logp, batch.tgt_out, opts.label_smoothing, PAD)
            loss = res.loss / res.n_tokens  # mean over real target tokens
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; stopping before it reaches the weights")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_norm)
            optimizer.step()
            scheduler.step()
            tokens += res.n_tokens
            window_tokens += res.n_tokens
            if step % opts.log_every == 0 or step == opts.max_steps:
                now = time.perf_counter()
                row = {
                    "step": step,
                    "loss": round(loss.item(), 5),
                    "nll": round(res.nll.item() / res.n_tokens, 5),
                    "lr": lr,
                    "tokens_per_s": round(window_tokens / max(now - window_start, 1e-9), 1),
                    "elapsed_s": round(now - start, 2),
                }
                history.append(row)
                window_tokens, window_start = 0, now
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
                if on_step:
                    on_step(step, row)
            bar.update(1)
            if opts.time_budget_s is not None and time.perf_counter() - start >= opts.time_budget_s:
                log.info("time budget of %.0f s reached at step %d", opts.time_budget_s, step)
                break
    finally:
        bar.close()
    model.eval()
    return TrainResult(step, time.perf_counter() - start, tokens, history)


def write_metrics_csv(history: list[dict], path: str | Path) -> None:
    if not history:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def plot_loss(history: list[dict], path: str | Path, title: str = "training loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in history], label="loss (label-smoothed)")
    ax.plot(steps, [r["nll"] for r in history], label="NLL of the reference token")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in history], color="gray", linestyle=":", label="learning rate")
    ax2.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def perplexity(nll_per_token: float) -> float:
    return math.exp(min(nll_per_token, 50.0))
