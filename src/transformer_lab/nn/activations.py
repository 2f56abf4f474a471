"""ReLU for compiled CPU training: the same values, a backward that keeps no boolean tensor.

Eager mode calls ``F.relu``. Under ``torch.compile`` on a CPU, autograd's ReLU backward
(``threshold_backward``) makes the partitioner save the mask ``y <= 0`` as a boolean tensor, and
inductor's C++ code stores booleans slowly: its vectorised ``VecMask`` to ``bool`` conversion took
11.5 ms for a 4,000 x 512 comparison against 0.9 ms eager and 0.24 ms for the same comparison kept
in floats (``torch.where``), measured on this project's 2-core machine (PyTorch 2.13). Here the
backward multiplies the gradient by sign(y) of the saved output (1 where y > 0, 0 where y = 0): the
same gradient as ReLU's for finite values (0 at x = 0, PyTorch's convention), in float operations only.
(Non-finite values differ: a NaN input gets gradient 0 where autograd passes the gradient through, and an
infinite gradient at y = 0 gives NaN where autograd gives 0; the forward or the step is non-finite then
anyway. A ``torch.where(y > 0, ...)`` backward would be exact but hands the partitioner the boolean again.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_lab.nn.dropout import compiling_on_cpu


class _ReLUSignBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clamp_min(0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * torch.sign(y)


def relu(x: Tensor) -> Tensor:
    """max(0, x): ``F.relu`` eagerly; while torch.compile traces on a CPU, with a boolean-free backward."""
    if compiling_on_cpu(x):
        return _ReLUSignBackward.apply(x)
    return F.relu(x)
