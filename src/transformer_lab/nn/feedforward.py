"""Position-wise feed-forward network (§3.3): FFN(x) = max(0, x W_1 + b_1) W_2 + b_2.

The same two linear maps apply to every position independently (a 1×1 convolution). ReLU is the
paper's; GELU (BERT: exact, with erf; GPT-2: its tanh approximation, "gelu_tanh") and SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer":
FFN(x) = (Swish(x W_1) ⊙ x W_3) W_2, a third matrix of the same size) are options.

At equal cost: SwiGLU's three matrices at width ``gated_width(d_ff)`` = 2/3 · d_ff hold the parameters
of ReLU's two at d_ff (Shazeer 2020, §2, reduces d_ff the same way). Deviation: every variant here keeps
the paper's biases b_1, b_2 (and b_3 for the gate); Shazeer omits biases in all of them, so SwiGLU at
``gated_width`` is off equal by its d_ff/3 more bias terms.

Shapes: x (B, T, D) -> (B, T, D); hidden width d_ff.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lab.nn.activations import relu
from transformer_lab.nn.dropout import Dropout

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")


def gated_width(d_ff: int) -> int:
    """The hidden width at which a gated FFN (three D × width matrices) has the parameters of a plain
    one (two D × d_ff matrices) of width ``d_ff``: 3·D·w ≈ 2·D·d_ff, so w = 2/3 · d_ff, rounded."""
    if d_ff < 2:
        raise ValueError(f"d_ff: expected at least 2, got {d_ff}")
    return round(2 * d_ff / 3)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_3 = nn.Linear(d_model, d_ff) if activation == "swiglu" else None  # gate
        self.w_2 = nn.Linear(d_ff, d_model)
        # deviation: the paper has no dropout inside the FFN (only on its output, in the residual
        # connection); tensor2tensor's relu_dropout and nn.TransformerEncoderLayer do. Default 0.
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.w_1(x)  # (B, T, d_ff)
        if self.activation == "relu":
            h = relu(h)
        elif self.activation == "gelu":
            h = F.gelu(h)
        elif self.activation == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.silu(h) * self.w_3(x)
        return self.w_2(self.dropout(h))  # (B, T, D)
