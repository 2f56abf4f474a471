"""Where and how a run executes: the device, the process group, and which process writes.

``Runtime`` is the seam between the training code and the execution environment. This one runs a
single process on one device; a distributed runtime (DDP, FSDP under torchrun) implements the same
methods: ``place`` moves (and wraps) a model, ``unwrap`` gives back the plain model for checkpoints,
``is_main`` tells which process writes files, ``barrier`` waits for the others.
"""

from transformer_lab.runtime.local import Runtime, choose_device, compile_for_inference, unwrap

__all__ = ["Runtime", "choose_device", "compile_for_inference", "unwrap"]
