"""The training recipe: every setting of the loop, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from transformer_lab.training.schedules import SCHEDULES


@dataclass
class TrainConfig:
    max_steps: int = 100_000
    time_budget_s: float | None = None  # stop cleanly (with a checkpoint) after this much wall time
    schedule: str = "noam"
    lr: float = 1.0  # noam: a factor on the paper's formula; others: the peak rate
    warmup: int = 4000
    label_smoothing: float = 0.1
    clip_norm: float | None = 1.0  # None: no clipping (deviation: the paper and tensor2tensor's base clip nothing)
    accumulate: int = 1  # micro-batches per optimizer step
    eval_every: int = 0  # steps between validations (0: only at the end)
    patience: int | None = None  # stop after this many validations without a better one (val loss, or validate.select)
    save_every: int = 0  # steps between checkpoints (0: at each validation); always at the end, on stop and signal
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only)
    beta2: float = 0.98  # Adam's β2 (the paper: 0.98; GPT recipes: 0.95-0.99)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0  # > 0: AdamW, decoupled decay on matrices and embeddings only (nanoGPT's rule)
    min_lr: float = 0.0  # cosine: the floor the rate decays to
    compile: bool = False  # torch.compile the model for training (validation and checkpoints use the plain one)
    dropout: float | None = None  # every dropout of the model at this rate during training (None: the model's own)
    log_every: int = 20
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "accumulate", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.warmup < (1 if self.schedule == "noam" else 0):
            raise ValueError(f"warmup: expected >= {1 if self.schedule == 'noam' else 0} steps"
                             f"{' (the paper’s formula divides by it)' if self.schedule == 'noam' else ''}, got {self.warmup}")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0 (0: off), got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience: expected >= 1 validations (or None: no early stopping), got {self.patience}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s: expected > 0 (or None: no budget), got {self.time_budget_s}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected fp32, bf16 or fp16, got {self.precision!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected 0 <= eps < 1, got {self.label_smoothing}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        # A negative max norm makes clip_grad_norm_ multiply the gradients by a negative factor:
        # gradient ascent, silently. Zero would erase them.
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm: expected > 0 (or None: no clipping), got {self.clip_norm}")
        if not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"beta2: expected 0 <= beta2 < 1, got {self.beta2}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, got {self.weight_decay}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected 0 <= p < 1 (or None: the model's own rates), got {self.dropout}")
        if self.min_lr < 0:
            raise ValueError(f"min_lr: expected >= 0, got {self.min_lr}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps: expected > 0, got {self.adam_eps}")

    def describe(self) -> str:
        """One line for the log: the recipe a run trains with (the task's, with the command line's changes)."""
        rate = f"noam x{self.lr:g}" if self.schedule == "noam" else f"{self.schedule} lr {self.lr:g}"
        if self.schedule == "cosine" and self.min_lr:
            rate += f" to {self.min_lr:g}"
        optimizer = f"AdamW wd {self.weight_decay:g}" if self.weight_decay else "Adam"
        parts = [f"{self.max_steps:,} step{'s' * (self.max_steps != 1)}", f"{rate}, warm-up {self.warmup:,}",
                 f"{optimizer} beta2 {self.beta2:g}", f"clip {self.clip_norm:g}" if self.clip_norm else "no clipping",
                 self.precision]
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.dropout is not None:
            parts.append(f"dropout {self.dropout:g}")
        if self.accumulate > 1:
            parts.append(f"{self.accumulate} micro-batches per step")
        if self.time_budget_s is not None:
            parts.append(f"time budget {self.time_budget_s / 60:g} min")
        if self.compile:
            parts.append("compiled")
        return ", ".join(parts)
