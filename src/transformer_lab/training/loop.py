"""The training loop, as the paper trains (§5): an optimizer step over accumulated micro-batches, a
learning-rate schedule, clipping; plus mixed precision on CUDA, periodic validation with early
stopping, a progress bar, metrics, and checkpoints that resume exactly.

The loop knows no model family and no task: a task hands it a model, a batch source, a loss function
``loss_fn(model, batch, device) -> StepLoss`` and optionally a validation function. Where the run
executes is the ``Runtime``'s business (device, wrapping, which process writes); where files go is the
``RunFolder``'s.

Exact resume: a checkpoint holds the weights, the optimizer and scheduler, every RNG state and the
data position (epoch, batch within epoch); batches of an epoch are a pure function of (seed, epoch).
So N steps straight and N/2 + resume + N/2 produce the same losses and weights on CPU.

Signals: Ctrl-C or SIGTERM finishes the current step (or abandons a validation pass at once),
writes a checkpoint and stops (exit code 130/143 from the CLI); a second signal does not save twice.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from transformer_lab.nn.checks import values_checked
from transformer_lab.nn.layers import set_dropout
from transformer_lab.nn.positions import POSITION_ENCODINGS
from transformer_lab.runs import (LAST, RunFolder, find_checkpoint, load_model, load_train_state, run_folder_of,
                                  save_checkpoint)
from transformer_lab.runtime import Runtime
from transformer_lab.runtime.signals import Interrupted, StopRequest
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.optim import build_optimizer
from transformer_lab.training.records import finite_or_none, plot_loss, plot_lr, read_metrics_csv, write_metrics_csv
from transformer_lab.training.schedules import build_scheduler
from transformer_lab.training.state import TrainState, rng_state, set_rng_state

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """Batches of an epoch as lists of example indices (a pure function of the epoch), and the
    tensors of one batch (see ``data.batches``)."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> list[list[int]]: ...

    def make(self, indices: Sequence[int]) -> Any: ...


@dataclass
class StepLoss:
    """What a loss function returns for one micro-batch: ``loss`` summed over the batch's
    ``loss_units`` (the trainer divides by the step's total), the summed NLL for the logs, and
    any per-batch metrics (averaged over micro-batches in the log, e.g. accuracies).

    A loss made of means over different things (BERT: MLM per masked token, NSP per pair) gives each
    summed in ``parts``, named as the batch's ``loss_parts`` name their units; the trainer then divides
    each by its own total (and ``nll`` by the first part's), and ``loss`` is only for callers outside
    the trainer."""

    loss: torch.Tensor
    nll: torch.Tensor | float
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)  # (tensors: read when logged)
    parts: dict[str, torch.Tensor] | None = None


LossFn = Callable[[torch.nn.Module, Any, torch.device], StepLoss]
# A loss function may carry ``check_batch(model, batch) -> bool``: it checks the batch's ids on the host, where
# they are (``check_on_host``), and says whether it did; the trainer then runs the step inside
# ``values_checked()``, so the model reads no id back from the device (a host sync on a GPU; skipped under
# compile, where this keeps a wrong batch a clear error).


def loss_units(batch: Any) -> dict[str, float]:
    """What a batch's loss is a mean over, by part: its ``loss_parts`` (``StepLoss``), else one part of its
    ``loss_units`` (default: its ``n_tokens``)."""
    parts = getattr(batch, "loss_parts", None)
    return dict(parts) if parts is not None else {"": getattr(batch, "loss_units", batch.n_tokens)}


def check_on_host(model: torch.nn.Module, *inputs: torch.Tensor | None) -> bool:
    """``model.check_inputs(*inputs)`` when the model has it (True); False for one without (it checks itself)."""
    check = getattr(model, "check_inputs", None)
    if check is None:
        return False
    check(*inputs)
    return True


@dataclass
class TrainResult:
    state: TrainState
    stopped_by: str  # "max_steps" | "time_budget" | "early_stopping" | "signal"
    signum: int | None = None
    evaluates: bool = True  # False in a distributed run's other processes: the work after training is rank 0's

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second of training: validations and checkpoint saves left out (fairseq's wps)."""
        return self.state.tokens / max(self.state.elapsed_s - self.state.paused_s, 1e-9)


class Trainer:
    """Trains ``model`` on ``source``. ``out`` (a folder or a ``RunFolder``) receives ``checkpoints/last``
    (resumable), ``checkpoints/best`` (lowest validation loss, or lowest ``validate.select``: the figure
    ``validate`` names to choose by, e.g. a classifier's dev error), ``metrics.csv``, ``loss.png`` and
    ``lr.png``. ``validate(model) -> dict`` (with at least ``val_loss``) runs every ``eval_every``
    steps; ``extra_files`` are written into every checkpoint (vocabulary, tokenizer). ``settings``: the
    task's own (data, batching), recorded and compared on resume: a change is a warning, except for those
    named in ``fixed`` (what chooses the held-out items), where it is an error."""

    on_signal = "the current step finishes and is saved"  # what the log says when a stop signal arrives

    def __init__(
        self,
        model: torch.nn.Module,
        source: BatchSource,
        cfg: TrainConfig,
        out: str | Path | RunFolder,
        loss_fn: LossFn,
        validate: Callable[[torch.nn.Module], dict] | None = None,
        extra_files: dict[str, Callable[[Path], Any]] | None = None,
        runtime: Runtime | None = None,
        allow_cpu_low_precision: bool = False,
        settings: dict[str, Any] | None = None,
        fixed: Sequence[str] = (),
    ):
        if len(source) == 0:
            raise ValueError("source: no training batches (empty data set after filtering?)")
        self.runtime = runtime or Runtime()
        self.device = self.runtime.device
        if cfg.precision != "fp32" and self.device.type != "cuda" and not allow_cpu_low_precision:
            raise ValueError(
                f"precision: {cfg.precision} is a GPU feature here; this CPU has no fast bf16/fp16 matrix "
                "units (measured ~100x slower than fp32), so train in fp32 on CPU"
            )
        self.source, self.cfg, self.loss_fn = source, cfg, loss_fn
        self.run = out if isinstance(out, RunFolder) else RunFolder(out)
        self.validate, self.extra_files = validate, extra_files or {}
        self.settings, self.fixed = settings or {}, tuple(fixed)
        if cfg.dropout is not None:
            set_dropout(model, cfg.dropout)
        # A sharded model (FSDP) is whole nowhere: rank 0 keeps a plain copy to write checkpoints from.
        self._template = copy.deepcopy(model).cpu() if self.runtime.sharded and self.runtime.is_main else None
        self.model = self.runtime.place(model)
        # Non-finite losses: read back every step on a CPU (free there) and in a distributed run; in one process
        # on a GPU flagged on the device and read where the loop writes (``_watch_finite``).
        self.defer_finite_check = self.device.type == "cuda" and self.runtime.world_size == 1
        self._first_bad: torch.Tensor | None = None
        self._compiled_loss = None  # loss_fn under torch.compile (with the model inside), when compiled
        if cfg.compile:
            # Compiled on the first step (fixed shapes; after a new shape, shapes become symbolic: one more
            # compile). The forward reads no token values back to the host (the id checks are skipped while
            # tracing; the task's ``check_batch`` checks them on the host), so the graph is whole. The loss is
            # traced with the model (in one process one graph: inductor fuses the cross-entropy's softmax with
            # its neighbours), unless it carries state between steps (a segment memory): that runs eager.
            # Dropout masks under compile on a CPU are nn.dropout's hashed ones (inductor's own generator is
            # one scalar Philox call per element there); on a CPU their seeds, like any other random draw in
            # the graph, come from PyTorch's generator ("fallback_random").
            options = {"fallback_random": True} if self.device.type == "cpu" else {}  # (GPUs: inductor's Philox)
            if hasattr(loss_fn, "state_dict"):  # it calls the plain model's forward_segment: nothing to compile
                log.warning("compile: this task's loss carries state between steps (a segment memory); it runs eager")
            else:
                self._compiled_loss = torch.compile(loss_fn, options=options)
        self.optimizer = build_optimizer(self.model, cfg)
        d_model = getattr(getattr(self.runtime.unwrap(self.model), "config", None), "d_model", None)
        if cfg.schedule == "noam" and d_model is None:
            raise ValueError("schedule: noam needs the model's d_model (model.config.d_model)")
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.lr, cfg.warmup, cfg.max_steps,
                                         d_model or 1, cfg.min_lr)
        # The same code path on any device: tests exercise it on CPU (allow_cpu_low_precision).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.state = TrainState()
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        self._peer_signal: int | None = None  # a signal another process of a distributed run saw

    # --- checkpoints ----------------------------------------------------------------------------
    def save(self, name: str = LAST, with_state: bool = True) -> Path | None:
        """Rank 0 writes; every process calls it (a sharded model's weights are gathered first)."""
        sharded = self.runtime.sharded
        model = self._gathered() if sharded else self.model
        optimizer = self.runtime.full_optimizer_state(self.model, self.optimizer) if with_state and sharded else None
        # every process's random streams (its dropout masks), so a resume in as many processes continues exactly
        rng = rng_state()
        streams = self.runtime.gather(rng) if with_state and self.runtime.world_size > 1 else None
        if not self.runtime.is_main:
            return None
        train_state = None
        if with_state:
            train_state = {
                "optimizer": optimizer if sharded else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": {**rng, **({"ranks": streams} if streams else {})},
                "trainer": {k: v for k, v in asdict(self.state).items() if k != "history"},
                "train_config": asdict(self.cfg),
                "task_settings": self.settings,
            }
            if hasattr(self.loss_fn, "state_dict"):  # a loss that carries state between steps (a segment memory)
                train_state["loss"] = self.loss_fn.state_dict()
        meta = {"step": self.state.step, "epoch": self.state.epoch,
                "best_val_loss": finite_or_none(self.state.best_val_loss), "history_tail": self.state.history[-1:],
                "train_config": asdict(self.cfg), "task_settings": self.settings}
        return save_checkpoint(self.run.checkpoint(name), model, meta, self.extra_files, train_state)

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint written by ``save`` (a checkpoint folder, or a run folder: its
        last checkpoint): weights, optimizer, scheduler, RNG, data position. A different model shape is
        an error; changed training settings are a warning."""
        directory = find_checkpoint(path, prefer=(LAST,))
        self._first_bad = None  # (a flag from steps before the resume is not this run's)
        # a sharded model's whole checkpoint stays on the CPU (each process then keeps its shard)
        loaded = load_model(directory, map_location="cpu" if self.runtime.sharded else self.device)
        model = self.runtime.unwrap(self.model)
        if type(loaded.model.config) is not type(model.config):  # (not the model's class: FSDP subclasses it)
            kind = type(model.config).__name__.removesuffix("Config")
            raise ValueError(f"{directory}: the checkpoint holds a {type(loaded.model).__name__} model, this run trains "
                             f"a {kind}: resume a run of the same task")
        for kind in ("adapter_config", "quant_config"):  # LoRA, prefix ...; QAT's fake-quantized layers
            then, now = getattr(loaded.model, kind, None), getattr(model, kind, None)
            if then != now:
                what = kind.split("_")[0]
                if then is None or now is None:  # one side has none: say which, not a dataclass's repr
                    held = f"a {getattr(then or now, 'method', None) or 'quantization-aware'} {what}"
                    raise ValueError(
                        f"{directory}: the checkpoint has no {what} and this run adds {held}: that is a new run "
                        "starting from the checkpoint's model (--model RUN, another --out), not a resume" if then is None
                        else f"{directory}: the checkpoint holds {held} and this run has none: resume with the run's "
                             "own --peft / --qat options")
                diff = ({k: (v, getattr(now, k)) for k, v in asdict(then).items() if getattr(now, k) != v}
                        if type(then) is type(now) else {"": (then, now)})
                raise ValueError(f"{directory}: the checkpoint's {what} differs from this run's: {diff} "
                                 "(checkpoint, now); resume with the run's own --peft / --qat options and --seed")
        # a relative encoding (inside attention) has no table to outgrow: it resumes at another length
        relative = getattr(POSITION_ENCODINGS.get(getattr(model.config, "position", "")), "acts_in_attention", False)
        diff = {k: (v, getattr(model.config, k)) for k, v in asdict(loaded.model.config).items()
                if getattr(model.config, k) != v and not (k == "max_len" and relative)}
        if diff:
            raise ValueError(f"{directory}: the checkpoint's model differs from this run's: {diff} (checkpoint, now)")
        state = load_train_state(directory)
        self.runtime.load_full_weights(self.model, loaded.model.state_dict())

        def unfit(e: BaseException) -> ValueError:
            return ValueError(f"{directory / 'train_state.pt'}: does not fit this run ({type(e).__name__}: {e}); "
                              "resume from a checkpoint of the same run")

        try:
            saved_groups = len(state["optimizer"]["param_groups"])
        except (KeyError, TypeError) as e:
            raise unfit(e) from None
        if saved_groups != len(self.optimizer.param_groups):
            raise ValueError(f"{directory}: the checkpoint's optimizer has {saved_groups} parameter group(s), this run's "
                             f"{len(self.optimizer.param_groups)}: weight decay was switched between 0 and > 0; resume "
                             "with the run's --weight-decay")
        try:
            self.runtime.load_full_optimizer(self.model, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            # the rate of the next step under this run's schedule: the saved one was computed for the old length
            # (a decaying schedule resumed with a larger --max-steps took one step at the old end's rate, 0)
            for group, rate, base in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, self.scheduler.base_lrs):
                group["lr"] = base * rate(self.scheduler.last_epoch)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
            self.scaler.load_state_dict(state["scaler"])
            ranks = state["rng"].get("ranks")  # (each process's streams, saved by a run in several processes)
            if isinstance(ranks, list) and len(ranks) == self.runtime.world_size:
                set_rng_state(ranks[self.runtime.rank])  # as many processes: each continues its own streams
            else:
                set_rng_state(state["rng"])  # the main process's streams
                if self.runtime.rank:  # the others draw their own dropout masks, as they did from the start
                    torch.manual_seed(self.cfg.seed + self.runtime.rank + 1_000_003 * int(state["trainer"]["step"]))
            self.state = TrainState(**state["trainer"])
            if hasattr(self.loss_fn, "load_state_dict"):
                self.loss_fn.load_state_dict(state.get("loss", {}))
            # (the run's length is free to change, but a decaying schedule is stretched over the new one)
            free = ("time_budget_s", "progress", "compile") + (
                ("max_steps",) if self.cfg.schedule in ("noam", "constant") else ())
            changed = {k: (v, getattr(self.cfg, k)) for k, v in state["train_config"].items()
                       if k not in free and getattr(self.cfg, k, v) != v}
            saved = state.get("task_settings", {})
            # (a setting the task no longer records, which an older checkpoint has, is no change)
            changed_task = {k: (saved.get(k), self.settings[k]) for k in sorted(self.settings)
                            if saved and saved.get(k) != self.settings[k]}
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise unfit(e) from None
        held = {k: changed_task.pop(k) for k in self.fixed if k in saved and k in changed_task}
        if held:
            raise ValueError(f"{directory}: the held-out items would change ({held}, checkpoint and now), and some of "
                             "the new ones would be items the run trained on; resume with the run's own values")
        # the history continues the one of the run that wrote the checkpoint (RUN/checkpoints/NAME)
        owner = RunFolder(run_folder_of(directory) or self.run.path)
        self.state.history = read_metrics_csv(owner.metrics, self.state.step)
        if changed:
            log.warning("resuming with changed training settings (checkpoint, now): %s", changed)
        if changed_task:
            log.warning("resuming with changed data or task settings (checkpoint, now): %s; the data order and "
                        "held-out split follow the new ones", changed_task)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", directory, self.state.step,
                 self.state.epoch, self.state.position)

    # --- one step -------------------------------------------------------------------------------
    def _next_batches(self) -> tuple[list[Any], list[float]]:
        """The next ``accumulate`` batches (this process's share of each), or what is left of the epoch when
        fewer are (a step never spans two epochs; its loss is normalised by its own units), and their loss
        weights (``Runtime.shard``)."""
        batches = self._epoch_batches(self.state.epoch)
        if self.state.position >= len(batches):
            self.state.epoch, self.state.position = self.state.epoch + 1, 0
            batches = self._epoch_batches(self.state.epoch)
        chunk = batches[self.state.position : self.state.position + self.cfg.accumulate]
        self.state.position += len(chunk)
        shards = [self.runtime.shard(ix) for ix in chunk]  # this process's examples of each (all, in one process)
        return [self.source.make(ix) for ix, _ in shards], [weight for _, weight in shards]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batch order, computed once per epoch (a shuffle of the whole set is not free)."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, self.source.epoch(epoch))
        return self._epoch_cache[1]

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, batches: list[Any], weights: list[float] | None = None) -> dict:
        """Gradients of one optimizer step over ``batches`` (micro-batches; ``weights``: each one's loss
        weight, 1 by default), accumulated in .grad. The loss is normalised by the total of the batches' loss units (target
        tokens, or sequences; each part of a loss by its own: ``StepLoss``), so k micro-batches of b sentences
        give the gradients of one batch of k·b.
        In a distributed run each process holds its share of every micro-batch: the total is summed over
        the processes, and the loss multiplied by their number (DDP averages gradients), so the
        gradients are those of the whole batch in one process."""
        self.model.train()
        world = self.runtime.world_size
        batches = list(zip(batches, weights or [1.0] * len(batches)))
        per_batch = [loss_units(b) for b, _ in batches]
        names = list(per_batch[0])
        units = [sum(w * u[k] for u, (_, w) in zip(per_batch, batches)) for k in names]
        totals = dict(zip(names, self.runtime.sum(units) if world > 1 else units))
        scale = {k: world / (totals[k] or 1.0) for k in names}  # (a part with no unit in the step sums to 0)
        # (loss and NLL: tensors on the device, read back when logged)
        loss_sums: dict[str, Any] = dict.fromkeys(names, 0.0)
        nll_sum = tokens = weight = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        extra: dict[str, float] = {}
        for i, (b, w) in enumerate(batches):
            with self.runtime.no_sync(self.model, last=i == len(batches) - 1), self._autocast():
                res = self._loss(b)
                parts = res.parts if res.parts is not None else {names[0]: res.loss}
                loss = sum(part * (w * scale[k]) for k, part in parts.items())
                self._watch_finite(loss)
                self.scaler.scale(loss).backward()
            for k, part in parts.items():
                loss_sums[k] = loss_sums[k] + w * part.detach()
            nll_sum = nll_sum + w * (res.nll.detach() if torch.is_tensor(res.nll) else res.nll)
            tokens += w * b.n_tokens
            weight += w
            for k, v in res.metrics.items():
                extra[k] = extra.get(k, 0.0) + w * v
        if world > 1:  # the step's figures over every process's share
            metric_names = sorted(extra)
            nll_sum, tokens, weight, *values = self.runtime.sum(
                [float(nll_sum), tokens, weight, *(float(loss_sums[k]) for k in names),
                 *(float(extra[k]) for k in metric_names)])
            loss_sums = dict(zip(names, values[:len(names)]))
            extra = dict(zip(metric_names, values[len(names):]))
        loss = sum(loss_sums[k] * (scale[k] / world) for k in names)
        return {"loss": loss, "nll": nll_sum * (scale[names[0]] / world), "tokens": int(tokens),
                **{k: v / weight for k, v in extra.items()}}

    def _loss(self, b: Any) -> StepLoss:
        """The task's loss on one micro-batch; with its ``check_batch`` (see ``LossFn``), checked on the host
        first and run inside ``values_checked()``."""
        fn = self._compiled_loss or self.loss_fn
        check = getattr(self.loss_fn, "check_batch", None)
        if check is None or not check(self.runtime.unwrap(self.model), b):
            return fn(self.model, b, self.device)
        with values_checked():
            return fn(self.model, b, self.device)

    def _watch_finite(self, loss: torch.Tensor) -> None:
        """Stop on a loss that is not finite. On a CPU, and in a distributed run (every process must stop at
        the same step), it is read back at once: the run stops before it reaches the weights. On a GPU reading
        it would stall the device's queue every step (issue 14: no host sync in the step), so the flag gathers
        on the device and ``_check_finite`` reads it where the loop writes anything (a log row, an evaluation,
        a checkpoint): such a run stops there, before any checkpoint holds the weights it reached."""
        bad = ~torch.isfinite(loss.detach())
        if self.defer_finite_check:  # (one process on a GPU) the first bad step's number, 0: none
            step = self.state.step + 1
            first = self._first_bad if self._first_bad is not None else torch.zeros((), dtype=torch.long,
                                                                                     device=bad.device)
            self._first_bad = torch.where(bad & (first == 0), step, first)
            return
        said = f"loss is {loss.item()}" if bool(bad) else None
        if self.runtime.world_size > 1:  # one process's NaN stops every process here, not in the next all-reduce
            if self.runtime.max([float(said is not None)])[0] > 0 and said is None:
                said = "another process's loss is not finite"
        if said is not None:
            raise FloatingPointError(f"{said} at step {self.state.step + 1}; stopped before it reached the weights")

    def _check_finite(self) -> None:
        """Read the device's flag of non-finite losses since the last check (see ``_watch_finite``)."""
        if self._first_bad is None:
            return
        first, self._first_bad = int(self._first_bad), None
        if first:
            raise FloatingPointError(
                f"loss is not finite at step {first} (seen at step {self.state.step}: on a GPU the loss is read back "
                "only where a log row, an evaluation or a checkpoint is written); stopped before any checkpoint held "
                "the weights it reached")

    def train_step(self, batches: list[Any], weights: list[float] | None = None) -> dict:
        row = self.backward(batches, weights)
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        row["lr"] = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) if fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        return row

    # --- the loop -------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, st = self.cfg, self.state
        if self.runtime.is_main:
            log.info("recipe: %s", cfg.describe())
            if st.step < cfg.max_steps <= cfg.warmup:
                log.warning("the warm-up (%d steps) is as long as the run (%d): the learning rate never reaches its "
                            "peak (--warmup)", cfg.warmup, cfg.max_steps)
        if st.step == 0:
            torch.manual_seed(cfg.seed + self.runtime.rank)  # dropout's stream; a resumed run restores it instead
        stop = StopRequest(self.on_signal)
        bar = tqdm(total=cfg.max_steps, initial=st.step, desc="train", unit="step",
                   disable=not (cfg.progress and self.runtime.is_main), dynamic_ncols=True)
        start, window_tokens, window_start = time.perf_counter() - st.elapsed_s, 0, time.perf_counter()
        budget_from = st.elapsed_s  # the time budget is this command's: a resumed run's earlier time is not in it
        window_paused = pending = 0.0  # seconds of validations and saves: in this log window; not yet in elapsed_s
        stopped_by = "max_steps"
        unlogged: dict | None = None  # the last step's row, until a log row takes it

        def log_row(row: dict) -> None:
            nonlocal window_tokens, window_start, window_paused, unlogged
            now = time.perf_counter()
            rate = window_tokens / max(now - window_start - window_paused, 1e-9)
            record = {"step": st.step, "epoch": st.epoch, "loss": float(row["loss"]), "nll": float(row["nll"]),
                      "lr": row["lr"], "tokens_per_s": round(rate, 1), "elapsed_s": round(st.elapsed_s, 2),
                      **{k: float(v) for k, v in row.items() if k not in ("loss", "nll", "lr", "tokens")}}
            window_tokens, window_start, window_paused, unlogged = 0, now, 0.0, None
            self._log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")

        def paused(work: Callable[[], Any]) -> Any:
            """``work`` (a validation, a save), its time kept out of the training rate."""
            nonlocal window_paused, pending
            t0 = time.perf_counter()
            try:
                return work()
            finally:
                window_paused += time.perf_counter() - t0
                pending += time.perf_counter() - t0

        with stop.installed():
            if st.pending_eval and self.validate and st.step < cfg.max_steps:  # (the end's runs anyway)
                paused(lambda: self._evaluate(stop))
            while st.step < cfg.max_steps:
                row = unlogged = self.train_step(*self._next_batches())
                st.step += 1
                st.tokens += row["tokens"]
                window_tokens += row["tokens"]
                st.elapsed_s = time.perf_counter() - start
                st.paused_s, pending = st.paused_s + pending, 0.0
                bar.update(1)
                due_log = st.step % cfg.log_every == 0 or st.step == cfg.max_steps
                due_eval = self.validate and cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < cfg.max_steps
                # (save_every 0: with each validation, so a killed run keeps as much as its best checkpoint)
                due_save = st.step % cfg.save_every == 0 if cfg.save_every else due_eval
                if due_log or due_eval or due_save:
                    self._check_finite()
                if due_log:
                    log_row(row)
                if due_eval:
                    if paused(lambda: self._evaluate(stop)):
                        stopped_by = "early_stopping"
                        break
                if due_save:
                    paused(self.save)
                signalled, out_of_time = self._agree(stop.signum,
                                                     cfg.time_budget_s is not None and st.elapsed_s - budget_from >= cfg.time_budget_s)
                if signalled:
                    stopped_by = "signal"
                    break
                if out_of_time:
                    stopped_by = "time_budget"
                    break
            self._check_finite()  # (a signal or the time budget can stop the loop between log rows)
            if unlogged is not None:  # so metrics.csv and the plots end at the step the run stopped at
                log_row(unlogged)
            bar.close()
            if stopped_by not in ("early_stopping", "signal") and self._agree(stop.signum, False)[0]:
                stopped_by = "signal"  # a signal after the loop's last agreement, seen by some process
            # (a resumed run with no step left to take was validated at this step already: no second row)
            validated = any(r.get("step") == st.step and r.get("val_loss") is not None for r in st.history)
            if self.validate and stopped_by not in ("early_stopping", "signal") and not validated:
                self._evaluate(stop)
            if stop.signum is None and stopped_by == "signal":  # another process was signalled: stop as it does
                stop.signum = self._peer_signal
            if stop.signum is not None:
                stopped_by = "signal"
            self.save()
            self.plot()
            self.runtime.barrier()  # the last checkpoint is on disk before any process reads it
        log.info("stopped by %s at step %d after %.0f s", stopped_by, st.step, st.elapsed_s)
        return TrainResult(st, stopped_by, stop.signum, self.runtime.is_main)

    def _gathered(self) -> torch.nn.Module | None:
        """A sharded model's weights, whole, in rank 0's plain copy (every process calls this: the
        gathering is collective); None in the other processes."""
        weights = self.runtime.full_state_dict(self.model)
        if not self.runtime.is_main:
            return None
        self._template.load_state_dict(weights)
        return self._template

    @property
    def final_model(self) -> torch.nn.Module:
        """The trained model for the work after training (rank 0): the plain model, or a sharded run's
        plain copy, which the last save filled."""
        if self.runtime.sharded:
            return self._template.to(self.device).eval()
        return self.runtime.unwrap(self.model)

    def _agree(self, signum: int | None, out_of_time: bool) -> tuple[bool, bool]:
        """Every process's stop conditions, the same on all: a signal any process saw (its number kept
        for the exit code), a time budget any process has spent."""
        if self.runtime.world_size == 1:
            return signum is not None, out_of_time
        seen, late = self.runtime.max([float(signum or 0), float(out_of_time)])
        self._peer_signal = int(seen) or None
        return seen > 0, late > 0

    def _evaluate(self, stop: StopRequest) -> bool:
        """Validate, keep the best checkpoint; True when early stopping says stop. A stop signal
        abandons the pass at once (its figures are dropped; the loop then saves and stops)."""
        metrics = None
        # A sharded model is gathered into rank 0's plain copy first (every process takes part), so the
        # validation itself, on rank 0 alone, holds no collective a signal could leave half-done.
        model = self._gathered() if self.runtime.sharded else self.runtime.unwrap(self.model)
        try:
            if self.runtime.is_main:  # one process validates; the others take its figures
                with stop.interruptible():
                    metrics = self.validate(model.to(self.device))
        except Interrupted:
            log.warning("validation at step %d abandoned (signal)", self.state.step)
        finally:
            self.model.train()
            if self.runtime.sharded and model is not None:
                model.cpu()  # rank 0's plain copy waits on the CPU
        metrics = self.runtime.broadcast(metrics)
        st = self.state
        st.pending_eval = metrics is None  # (only a signal leaves it undone: the checkpoint remembers it)
        if metrics is None:
            return False
        self._log({"step": st.step, "epoch": st.epoch, **metrics})
        key = getattr(self.validate, "select", "val_loss")  # the figure the best checkpoint is chosen by
        if metrics[key] < st.best_val_loss:
            st.best_val_loss, st.bad_evals = metrics[key], 0
            self.save("best", with_state=False)
        else:
            st.bad_evals += 1
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        log.info("step %d: %s (best %s %.4f)", st.step, summary, key.replace("_", " "), st.best_val_loss)
        return self.cfg.patience is not None and st.bad_evals >= self.cfg.patience

    # --- records --------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.state.history.append(record)
        if self.runtime.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            write_metrics_csv(self.state.history, self.run.metrics)

    def plot(self) -> None:
        train_rows = [r for r in self.state.history if "loss" in r]
        if train_rows and self.runtime.is_main:
            plot_loss(self.state.history, self.run.plot("loss"))
            plot_lr(train_rows, self.run.plot("lr"))
