"""The training loop of the encoder-decoder, as the paper trains (§5): Adam (β 0.9/0.98, ε 1e-9),
a warm-up schedule, label smoothing; plus gradient clipping and accumulation, mixed precision on
CUDA, periodic validation with early stopping, a progress bar, metrics to CSV, plots, and
checkpoints that resume exactly.

Exact resume: a checkpoint holds the weights, the optimizer and scheduler, every RNG state and the
data position (epoch, batch within epoch); batches of an epoch are a pure function of (seed, epoch).
So N steps straight and N/2 + resume + N/2 produce the same losses and weights on CPU.

Signals: Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and stops (exit code
130/143 from the CLI); a second signal does not save twice.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from transformer_lab.data.vocab import Batch
from transformer_lab.models.transformer import Transformer
from transformer_lab.training.checkpoint import load_model, load_train_state, save_checkpoint
from transformer_lab.training.losses import label_smoothed_cross_entropy
from transformer_lab.training.schedules import SCHEDULES, build_scheduler

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """Batches of an epoch as lists of example indices (a pure function of the epoch), and the
    tensors of one batch."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> list[list[int]]: ...

    def make(self, indices: Sequence[int]) -> Batch: ...


@dataclass
class TrainConfig:
    max_steps: int = 100_000
    time_budget_s: float | None = None  # stop cleanly (with a checkpoint) after this much wall time
    schedule: str = "noam"
    lr: float = 1.0  # noam: a factor on the paper's formula; others: the peak rate
    warmup: int = 4000
    label_smoothing: float = 0.1
    clip_norm: float | None = 1.0
    accumulate: int = 1  # micro-batches per optimizer step
    eval_every: int = 0  # steps between validations (0: only at the end)
    patience: int | None = None  # stop after this many validations without a better val loss
    save_every: int = 0  # steps between checkpoints (0: at the end, on stop and on signal)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only)
    beta2: float = 0.98  # Adam's β2 (the paper: 0.98; GPT recipes: 0.95-0.99)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0  # > 0: AdamW, decoupled decay on matrices and embeddings only (nanoGPT's rule)
    min_lr: float = 0.0  # cosine: the floor the rate decays to
    log_every: int = 20
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "warmup", "accumulate", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected fp32, bf16 or fp16, got {self.precision!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected 0 <= eps < 1, got {self.label_smoothing}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"beta2: expected 0 <= beta2 < 1, got {self.beta2}")
        if self.weight_decay < 0 or self.min_lr < 0 or self.adam_eps <= 0:
            raise ValueError("weight_decay and min_lr: expected >= 0; adam_eps: expected > 0")


@dataclass
class StepLoss:
    """What a loss function returns for one micro-batch: ``loss`` summed over the batch's
    ``n_tokens`` units (the trainer divides by the step's total), the summed NLL for the logs, and
    any per-batch metrics (averaged over micro-batches in the log, e.g. accuracies)."""

    loss: torch.Tensor
    nll: torch.Tensor | float
    metrics: dict[str, float] = field(default_factory=dict)


def seq2seq_loss(label_smoothing: float) -> Callable[[torch.nn.Module, Batch, torch.device], StepLoss]:
    """The encoder-decoder's loss: label-smoothed cross-entropy of tgt_out given (src, tgt_in)."""

    def loss_fn(model: torch.nn.Module, b: Batch, device: torch.device) -> StepLoss:
        src, tgt_in, tgt_out = (t.to(device, non_blocking=True) for t in (b.src, b.tgt_in, b.tgt_out))
        logits = model.logits(src, tgt_in)
        res = label_smoothed_cross_entropy(logits.float(), tgt_out, label_smoothing, model.config.pad_id)
        return StepLoss(res.loss, res.nll)

    return loss_fn


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    position: int = 0  # next batch within the epoch
    best_val_loss: float = math.inf
    bad_evals: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0
    history: list[dict] = field(default_factory=list)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop after the current step."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signum is None:
            log.warning("signal %d: finishing this step, saving a checkpoint, then stopping", signum)
        self.signum = self.signum or signum


@contextmanager
def _signals(handler: _StopRequest) -> Iterator[None]:
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class TrainResult:
    state: TrainState
    stopped_by: str  # "max_steps" | "time_budget" | "early_stopping" | "signal"
    signum: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.state.tokens / max(self.state.elapsed_s, 1e-9)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (β1 0.9, β2 ``cfg.beta2``); with weight decay, AdamW with the decay on tensors of two or
    more dimensions only (weights, embeddings), never on biases and LayerNorm gains."""
    betas = (0.9, cfg.beta2)
    if cfg.weight_decay == 0:
        return torch.optim.Adam(model.parameters(), lr=1.0, betas=betas, eps=cfg.adam_eps, foreach=True)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1.0, betas=betas, eps=cfg.adam_eps, foreach=True)


class Trainer:
    """Trains ``model`` on ``source``. ``out`` receives ``checkpoints/last`` (resumable),
    ``checkpoints/best`` (lowest validation loss), ``metrics.csv``, ``loss.png`` and ``lr.png``.
    ``validate(model) -> dict`` (with at least ``val_loss``) runs every ``eval_every`` steps;
    ``extra_files`` are written into every checkpoint (vocabulary, tokenizer)."""

    def __init__(
        self,
        model: Transformer,
        source: BatchSource,
        cfg: TrainConfig,
        out: str | Path,
        validate: Callable[[Transformer], dict] | None = None,
        extra_files: dict[str, Callable[[Path], Any]] | None = None,
        device: str | torch.device = "cpu",
        loss_fn: Callable[[torch.nn.Module, Any, torch.device], "StepLoss"] | None = None,
        allow_cpu_low_precision: bool = False,
    ):
        self.model, self.source, self.cfg, self.out = model, source, cfg, Path(out)
        self.validate, self.extra_files = validate, extra_files or {}
        self.loss_fn = loss_fn or seq2seq_loss(cfg.label_smoothing)
        self.device = torch.device(device)
        if cfg.precision != "fp32" and self.device.type != "cuda" and not allow_cpu_low_precision:
            raise ValueError(
                f"precision: {cfg.precision} is a GPU feature here; this CPU has no fast bf16/fp16 matrix "
                "units (measured ~100x slower than fp32), so train in fp32 on CPU"
            )
        self.model.to(self.device)
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.lr, cfg.warmup, cfg.max_steps,
                                         model.config.d_model, cfg.min_lr)
        # The same code path on any device: tests exercise it on CPU (allow_cpu_low_precision).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.state = TrainState()
        if len(source) == 0:
            raise ValueError("source: no training batches (empty data set after filtering?)")

    # --- checkpoints ----------------------------------------------------------------------------
    def save(self, name: str = "last", with_state: bool = True) -> Path:
        train_state = None
        if with_state:
            train_state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": _rng_state(),
                "trainer": {k: v for k, v in asdict(self.state).items() if k != "history"},
                "train_config": asdict(self.cfg),
            }
        meta = {"step": self.state.step, "epoch": self.state.epoch, "best_val_loss": finite_or_none(self.state.best_val_loss),
                "history_tail": self.state.history[-1:]}
        return save_checkpoint(self.out / "checkpoints" / name, self.model, meta, self.extra_files, train_state)

    def resume(self, directory: str | Path) -> None:
        """Continue from a checkpoint written by ``save``: weights, optimizer, scheduler, RNG, data
        position. A different model shape is an error; changed training settings are a warning."""
        loaded = load_model(directory, map_location=str(self.device))
        if loaded.model.config != self.model.config:
            diff = {k: (v, getattr(self.model.config, k)) for k, v in asdict(loaded.model.config).items()
                    if getattr(self.model.config, k) != v}
            raise ValueError(f"{directory}: the checkpoint's model differs from this run's: {diff} (checkpoint, now)")
        state = load_train_state(directory)
        self.model.load_state_dict(loaded.model.state_dict())
        saved_groups, groups = len(state["optimizer"]["param_groups"]), len(self.optimizer.param_groups)
        if saved_groups != groups:
            raise ValueError(f"{directory}: the checkpoint's optimizer has {saved_groups} parameter group(s), this run's "
                             f"{groups}: weight decay was switched between 0 and > 0; resume with the run's --weight-decay")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.state = TrainState(**state["trainer"])
        history = self.out / "metrics.csv"
        if history.is_file():
            with open(history) as f:
                self.state.history = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)
                                      if int(row["step"]) <= self.state.step]
        changed = {k: (v, getattr(self.cfg, k)) for k, v in state["train_config"].items()
                   if k not in ("max_steps", "time_budget_s", "progress") and getattr(self.cfg, k, v) != v}
        if changed:
            log.warning("resuming with changed training settings (checkpoint, now): %s", changed)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", directory, self.state.step,
                 self.state.epoch, self.state.position)

    # --- the loop -------------------------------------------------------------------------------
    def _next_batches(self) -> list[Batch]:
        """The next ``accumulate`` batches, crossing into the next epoch when one ends."""
        batches = self._epoch_batches(self.state.epoch)
        if self.state.position >= len(batches):
            self.state.epoch, self.state.position = self.state.epoch + 1, 0
            batches = self._epoch_batches(self.state.epoch)
        chunk = batches[self.state.position : self.state.position + self.cfg.accumulate]
        self.state.position += len(chunk)
        return [self.source.make(ix) for ix in chunk]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batch order, computed once per epoch (a shuffle of the whole set is not free)."""
        if getattr(self, "_epoch_cache", (None,))[0] != epoch:
            self._epoch_cache = (epoch, self.source.epoch(epoch))
        return self._epoch_cache[1]

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, batches: list[Batch]) -> dict:
        """Gradients of one optimizer step over ``batches`` (micro-batches), accumulated in .grad. The
        loss is normalised by the total number of target tokens, so k micro-batches of b sentences
        give the gradients of one batch of k·b."""
        self.model.train()
        # what the loss is normalised by: target tokens (translation, LM) or sequences (BERT tasks)
        total = sum(getattr(b, "loss_units", b.n_tokens) for b in batches)
        tokens = sum(b.n_tokens for b in batches)
        loss_sum, nll_sum = 0.0, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        extra: dict[str, float] = {}
        for b in batches:
            with self._autocast():
                res = self.loss_fn(self.model, b, self.device)
            loss = res.loss / total
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {self.state.step + 1}; stopped before it reached the weights"
                )
            self.scaler.scale(loss).backward()
            loss_sum += float(res.loss.detach())
            nll_sum += float(res.nll)
            for k, v in res.metrics.items():
                extra[k] = extra.get(k, 0.0) + v
        return {"loss": loss_sum / total, "nll": nll_sum / total, "tokens": tokens,
                **{k: v / len(batches) for k, v in extra.items()}}

    def train_step(self, batches: list[Batch]) -> dict:
        row = self.backward(batches)
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        row["lr"] = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) if fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        return row

    def fit(self) -> TrainResult:
        cfg, st = self.cfg, self.state
        if st.step == 0:
            torch.manual_seed(cfg.seed)  # dropout's stream; a resumed run restores it instead
        stop = _StopRequest()
        bar = tqdm(total=cfg.max_steps, initial=st.step, desc="train", unit="step", disable=not cfg.progress,
                   dynamic_ncols=True)
        start, window_tokens, window_start = time.perf_counter() - st.elapsed_s, 0, time.perf_counter()
        stopped_by = "max_steps"
        with _signals(stop):
            while st.step < cfg.max_steps:
                row = self.train_step(self._next_batches())
                st.step += 1
                st.tokens += row["tokens"]
                window_tokens += row["tokens"]
                st.elapsed_s = time.perf_counter() - start
                bar.update(1)
                if st.step % cfg.log_every == 0 or st.step == cfg.max_steps:
                    now = time.perf_counter()
                    record = {"step": st.step, "epoch": st.epoch, "loss": row["loss"],
                              "nll": row["nll"], "lr": row["lr"],
                              "tokens_per_s": round(window_tokens / max(now - window_start, 1e-9), 1),
                              "elapsed_s": round(st.elapsed_s, 2),
                              **{k: v for k, v in row.items() if k not in ("loss", "nll", "lr", "tokens")}}
                    window_tokens, window_start = 0, now
                    self._log(record)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                if self.validate and cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < cfg.max_steps:
                    if self._evaluate():
                        stopped_by = "early_stopping"
                        break
                if cfg.save_every and st.step % cfg.save_every == 0:
                    self.save()
                if stop.signum is not None:
                    stopped_by = "signal"
                    break
                if cfg.time_budget_s is not None and st.elapsed_s >= cfg.time_budget_s:
                    stopped_by = "time_budget"
                    break
            bar.close()
            if self.validate and stopped_by != "early_stopping" and stop.signum is None:
                self._evaluate()
            self.save()
        self.plot()
        log.info("stopped by %s at step %d after %.0f s", stopped_by, st.step, st.elapsed_s)
        return TrainResult(st, stopped_by, stop.signum)

    def _evaluate(self) -> bool:
        """Validate, keep the best checkpoint; True when early stopping says stop."""
        metrics = self.validate(self.model)
        self.model.train()
        st = self.state
        self._log({"step": st.step, "epoch": st.epoch, **metrics})
        if metrics["val_loss"] < st.best_val_loss:
            st.best_val_loss, st.bad_evals = metrics["val_loss"], 0
            self.save("best", with_state=False)
        else:
            st.bad_evals += 1
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        log.info("step %d: %s (best val loss %.4f)", st.step, summary, st.best_val_loss)
        return self.cfg.patience is not None and st.bad_evals >= self.cfg.patience

    # --- records --------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.state.history.append(record)
        self.out.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(self.state.history, self.out / "metrics.csv")

    def plot(self) -> None:
        train_rows = [r for r in self.state.history if "loss" in r]
        if train_rows:
            plot_loss(self.state.history, self.out / "loss.png")
            plot_lr(train_rows, self.out / "lr.png")


def _num(v: str):
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def write_metrics_csv(history: list[dict], path: str | Path) -> None:
    """All rows, the union of their columns (training rows and validation rows differ)."""
    if not history:
        return
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    tmp = Path(path).with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(history: list[dict], path: str | Path, title: str = "loss") -> None:
    plt = _pyplot()
    train = [r for r in history if r.get("loss") is not None]
    val = [r for r in history if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (as optimised)")
    if any(abs(r["nll"] - r["loss"]) > 1e-9 for r in train if r.get("nll") is not None):  # label smoothing, NSP
        ax.plot([r["step"] for r in train], [r["nll"] for r in train], label="train NLL of the reference token", alpha=0.7)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation NLL")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr(history: list[dict], path: str | Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([r["step"] for r in history], [r["lr"] for r in history])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.set_title("learning-rate schedule")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finite_or_none(x: float | None) -> float | None:
    """For JSON: NaN and infinity are not JSON numbers."""
    return x if x is not None and math.isfinite(x) else None


def perplexity(nll_per_token: float) -> float:
    return math.exp(min(nll_per_token, 50.0))

