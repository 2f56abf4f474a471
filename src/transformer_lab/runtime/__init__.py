"""Where and how a run executes: the device, the process group, and which process writes.

``Runtime`` is the seam between the training code and the execution environment: one process on one
device; ``DistributedRuntime`` (DDP under torchrun; ``runtime_for`` picks) implements the same methods:
``place`` moves (and wraps) a model, ``unwrap`` gives back the plain model for checkpoints, ``is_main``
tells which process writes files, ``shard`` / ``sum`` / ``max`` / ``broadcast`` / ``no_sync`` are what
the trainer needs to split a batch and agree on a step.
"""

from transformer_lab.runtime.distributed import DistributedRuntime, launched_by_torchrun, runtime_for
from transformer_lab.runtime.local import Runtime, choose_device, compile_for_inference, unwrap

__all__ = ["DistributedRuntime", "Runtime", "choose_device", "compile_for_inference", "launched_by_torchrun",
           "runtime_for", "unwrap"]
