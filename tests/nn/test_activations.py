"""ReLU under torch.compile on a CPU (nn/activations.py): the same values and gradient as F.relu (the
oracle, autograd's own threshold_backward), and a compiled training forward that saves no boolean tensor
for its backward (inductor's C++ stores booleans slowly; the point of the module)."""

import torch
import torch.nn.functional as F

from transformer_lab.nn.activations import _ReLUSignBackward, relu
from transformer_lab.nn.feedforward import PositionwiseFeedForward


def test_eager_relu_is_torchs():
    x = torch.randn(50)
    assert torch.equal(relu(x), F.relu(x))


def test_sign_backward_equals_relus_gradient_at_zero_too():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0, -1e-30] * 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(24, dtype=torch.float64)
    ours = _ReLUSignBackward.apply(x)
    ref = F.relu(x)
    assert torch.equal(ours, ref)
    assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    assert torch.autograd.gradcheck(_ReLUSignBackward.apply, (torch.randn(20, dtype=torch.float64).requires_grad_(),))


def _saved_dtypes(fn, *args):
    dtypes = []

    def pack(t):
        dtypes.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, dtypes


def test_compiled_ffn_with_dropout_saves_no_boolean_and_matches_eager():
    torch.manual_seed(0)
    ffn = PositionwiseFeedForward(16, 64, "relu", dropout=0.2).train()
    x = torch.randn(4, 9, 16, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(ffn, dynamic=False)
    out, dtypes = _saved_dtypes(compiled, x)
    assert dtypes and torch.bool not in dtypes, dtypes
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Without dropout the compiled FFN equals the eager one, values and input gradient.
    ffn.dropout.p = 0.0
    torch._dynamo.reset()
    a = torch.compile(ffn, dynamic=False)(x)
    ga, = torch.autograd.grad(a.sum(), x)
    b = ffn(x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)


def test_a_compiled_transformer_loss_saves_only_mask_shaped_booleans():
    """The whole training forward (the tiny preset with dropout 0.1, the label-smoothed loss) under compile:
    every boolean kept for the backward is a padding or causal mask (a broadcast 1 among its first two
    dimensions) or a per-token flag, none the size of an activation: with autograd's ReLU or boolean dropout
    masks, (B, T, D), (B, T, d_ff) and (B, H, T, T) booleans are kept."""
    from conftest import padded_batch
    from transformer_lab.models.presets import preset
    from transformer_lab.models.transformer import Transformer
    from transformer_lab.training.losses import label_smoothed_cross_entropy

    torch.manual_seed(0)
    model = Transformer(preset("tiny", src_vocab_size=40, tgt_vocab_size=40, d_model=32, d_ff=64)).train()
    src, tgt = padded_batch(6, 9, 40), padded_batch(6, 8, 40)

    def loss(src, tgt):
        return label_smoothed_cross_entropy(model(src, tgt[:, :-1], log_probs=False), tgt[:, 1:], 0.1, 0).loss

    torch._dynamo.reset()
    shapes = []

    def pack(t):
        if t.dtype == torch.bool:
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = torch.compile(loss, dynamic=False)(src, tgt)
    assert torch.isfinite(value)
    assert all(len(s) <= 1 or 1 in s[:2] for s in shapes), shapes
