"""Several processes, one model: PyTorch's DistributedDataParallel under ``torchrun``.

    torchrun --nproc-per-node 2 -m transformer_lab train --preset multi30k-de-en ...

``torchrun`` starts N copies of the command and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); ``runtime_for`` reads it and
returns a ``DistributedRuntime`` (one process group: gloo on CPU, NCCL on CUDA, one GPU per local rank)
or, outside torchrun, the single-process ``Runtime``. Several machines are torchrun's rendezvous
(``--nnodes``, ``--rdzv-endpoint``): nothing here changes.

What a distributed run does differently (``training.loop.Trainer`` asks the runtime):

- every process computes the same global batch list (a pure function of seed and epoch) and takes
  its share of each batch's examples, ``indices[rank::world_size]``; the batch options mean the
  global batch, so N processes take the steps one process would, on 1/N of the examples each;
- the loss is divided by the global batch's loss units (summed over processes) and multiplied by N,
  because DDP averages gradients: the sum is the one-process gradient;
- micro-batches before the last of a step run under ``no_sync`` (one all-reduce per step);
- only rank 0 writes (checkpoints, metrics, plots, progress bar) and validates; its figures and its
  stop decisions (time budget, early stopping, a signal seen by any process) reach every process, so
  all stop at the same step.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from transformer_lab.runtime.local import Runtime, choose_device

# torchrun's variables; WORLD_SIZE alone can be left over in a shell, so RANK and the rendezvous too
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
log = logging.getLogger(__name__)


@contextmanager
def _no_gradient_sync(model: FSDPModule, skip: bool) -> Iterator[None]:
    """FSDP's ``no_sync``: gradients of this micro-batch stay unreduced (accumulated) until the last."""
    model.set_requires_gradient_sync(not skip)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ENV)


def runtime_for(device: str | torch.device | None = None, fsdp: bool = False) -> Runtime:
    """The runtime this process was started for: distributed under torchrun (even with one process,
    so a 1-process torchrun run takes the distributed path), else one process. ``fsdp``: shard the
    model (FSDP2) instead of replicating it (DDP); only under torchrun."""
    if launched_by_torchrun():
        return DistributedRuntime(device, fsdp=fsdp)
    partly = [k for k in ENV if k in os.environ]
    if partly and os.environ.get("WORLD_SIZE", "1") != "1":
        log.warning("torchrun's variables are set in part (%s; not %s): running as one process; launch several "
                    "with torchrun --nproc-per-node N -m transformer_lab ...", ", ".join(partly),
                    ", ".join(k for k in ENV if k not in os.environ))
    if fsdp:
        raise ValueError("fsdp: shards the model over the processes of a torchrun launch; run the command under "
                         "torchrun --nproc-per-node N -m transformer_lab ...")
    return Runtime(device)


class DistributedRuntime(Runtime):
    """One of ``world_size`` processes training one model: replicated with DDP, or sharded with
    FSDP2 (``fsdp``: ``fully_shard`` on each layer of every ``nn.ModuleList`` and on the whole model;
    each process keeps 1/N of the weights, gradients and optimizer state, and gathers a layer's
    weights just before it runs)."""

    def __init__(self, device: str | torch.device | None = None, timeout_s: float = 1800.0, fsdp: bool = False):
        self.sharded = fsdp
        self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        if device is None:
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        device = choose_device(str(device)) if not isinstance(device, torch.device) else device
        if device.type == "cuda":  # one GPU per process on a machine: "cuda" (or any cuda:N) means cuda:LOCAL_RANK
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        super().__init__(device)
        if self.rank:  # one voice: the other processes say only what goes wrong
            logging.getLogger().setLevel(logging.WARNING)
        self._synced = False  # a step has ended with an all-reduce (see ``no_sync``)
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=datetime.timedelta(seconds=timeout_s),
                                    **({"device_id": device} if device.type == "cuda" else {}))
            atexit.register(self.close)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _shard(self, model: nn.Module) -> nn.Module:
        """Each layer of every ``nn.ModuleList`` its own FSDP group (gathered just before it runs), unless it
        shares a parameter with the rest of the model (a position table every attention layer holds):
        such layers stay in the whole model's group, which FSDP gathers at once."""
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        paths = [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)]
        done: list[str] = []  # prefixes of the layers sharded (a ModuleList inside one is theirs)
        for name, m in list(model.named_modules()):
            if not isinstance(m, nn.ModuleList) or any(f"{name}.".startswith(d) for d in done):
                continue
            for i, layer in enumerate(m):
                prefix = f"{name}.{i}." if name else f"{i}."
                own = {id(p) for p in layer.parameters()}
                elsewhere = {pid for n, pid in paths if not n.startswith(prefix)}
                if own and not own & elsewhere and any(p.requires_grad for p in layer.parameters()):
                    fully_shard(layer, mesh=mesh)
                    done.append(prefix)
        return fully_shard(model, mesh=mesh)

    def place(self, model: nn.Module) -> nn.Module:
        """The model on this process's device, wrapped in DDP (rank 0's weights are broadcast to all).
        ``static_graph``: the same parameters take part in every step, though not necessarily all of
        them (a BERT pooler under MLM-only): DDP learns which in the first step, without the per-step
        graph search ``find_unused_parameters`` costs."""
        model = model.to(self.device)
        if not any(p.requires_grad for p in model.parameters()):
            return model
        if self.sharded:
            return self._shard(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, static_graph=True)

    def barrier(self) -> None:
        dist.barrier()

    # --- what the trainer asks ----------------------------------------------------------------
    def shard(self, indices: Sequence[int]) -> tuple[list[int], float]:
        """This process's examples of a global batch, and the weight of its loss: 1, or 0 when the
        batch has fewer examples than processes (the process then repeats the first example, so every
        process still runs the step's collectives, and adds nothing)."""
        mine = list(indices[self.rank :: self.world_size])
        return (mine, 1.0) if mine else ([indices[0]], 0.0)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the processes (float64)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maxima over the processes."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: Sequence[float], op) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t, op=op)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj``, in rank order, on rank 0 (None on the others)."""
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def no_sync(self, model: nn.Module, last: bool):
        """Skip DDP's gradient all-reduce for a micro-batch that is not the step's last: the step's
        gradients are summed locally and all-reduced once. Not in this process's first step, where a
        static-graph DDP learns which parameters take part (every micro-batch is all-reduced then:
        the same sum, more traffic)."""
        if last:
            self._synced = True
        ddp = getattr(model, "_orig_mod", model)  # under torch.compile, the DDP wrapper inside
        if isinstance(ddp, FSDPModule):
            return _no_gradient_sync(ddp, not last)
        if last or not self._synced or not isinstance(ddp, nn.parallel.DistributedDataParallel):
            return nullcontext()
        return ddp.no_sync()

    # --- whole states of a sharded model (collectives: every process calls them) --------------------
    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's weights, whole, on CPU: in rank 0 (empty elsewhere) when sharded."""
        if not self.sharded:
            return super().full_state_dict(model)
        return get_model_state_dict(self.unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def full_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state, whole, in ``optimizer.state_dict()``'s format (parameters numbered in
        the order of the parameter groups), so a sharded run's checkpoint resumes unsharded and back."""
        if not self.sharded:
            return super().full_optimizer_state(model, optimizer)
        by_name = get_optimizer_state_dict(self.unwrap(model), optimizer,
                                           options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return {}
        number = {name: i for i, name in enumerate(n for g in by_name["param_groups"] for n in g["params"])}
        return {"state": {number[n]: v for n, v in by_name["state"].items()},
                "param_groups": [{**g, "params": [number[n] for n in g["params"]]} for g in by_name["param_groups"]]}

    def load_full_weights(self, model: nn.Module, weights: dict) -> None:
        """Whole weights (a checkpoint's) into the model, each process keeping its shard."""
        if not self.sharded:
            return super().load_full_weights(model, weights)
        model = self.unwrap(model)
        # One name per tensor: a tied table under several names (the encoder-decoder's source, target and output
        # embedding) would be loaded once as a sharded tensor and then again as a plain one, which FSDP refuses.
        every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        names = {n for n, _ in model.named_parameters()} | (set(model.state_dict()) - every)  # + persistent buffers
        aliases = every - names
        missing = set(weights) - names - aliases
        if missing or names - set(weights):
            raise ValueError(f"weights: do not fit the model (missing {sorted(names - set(weights))[:3]}, unexpected "
                             f"{sorted(missing)[:3]})")
        set_model_state_dict(model, {k: v for k, v in weights.items() if k in names},
                             options=StateDictOptions(full_state_dict=True, strict=False))

    def load_full_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """A whole optimizer state in ``optimizer.state_dict()``'s format into a sharded one."""
        if not self.sharded:
            return super().load_full_optimizer(model, optimizer, state)
        model = self.unwrap(model)  # (under torch.compile: the names without its _orig_mod. prefix)
        name_of = {id(p): n for n, p in model.named_parameters()}
        names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
        by_name = {"state": {names[i]: v for i, v in state["state"].items()},
                   "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

    def __repr__(self) -> str:
        return f"DistributedRuntime(rank={self.rank}, world_size={self.world_size}, device={self.device}, backend={self.backend})"
