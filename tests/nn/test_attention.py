"""Attention: the explicit reference path against F.scaled_dot_product_attention, gradcheck, and
the fully-masked-row contract."""

import math

import pytest
import torch

from transformer_lab.nn.attention import MultiHeadAttention, fast_attention, reference_attention
from transformer_lab.nn.masks import causal_mask, combine_masks, padding_mask

B, H, TQ, TK, DH = 3, 4, 5, 7, 8


def qkv(dtype=torch.float32):
    return (torch.randn(B, H, TQ, DH, dtype=dtype), torch.randn(B, H, TK, DH, dtype=dtype),
            torch.randn(B, H, TK, DH, dtype=dtype))


def random_mask():
    m = torch.rand(B, 1, TQ, TK) > 0.3
    m[..., 0] = True  # every row keeps at least one key
    return m


@pytest.mark.parametrize("mask_kind", ["none", "padding", "random", "causal+padding"])
def test_reference_and_fast_paths_agree(mask_kind):
    q, k, v = qkv()
    tokens = torch.tensor([[5] * TK, [5] * 4 + [0] * 3, [5] * 2 + [0] * 5])
    mask = {
        "none": None,
        "padding": padding_mask(tokens, 0),
        "random": random_mask(),
        "causal+padding": combine_masks(padding_mask(tokens[:, :TQ], 0), causal_mask(TQ)),
    }[mask_kind]
    if mask_kind == "causal+padding":
        k, v = k[:, :, :TQ], v[:, :, :TQ]
    ref = reference_attention(q, k, v, mask)
    fast = fast_attention(q, k, v, mask)
    torch.testing.assert_close(fast.output, ref.output, atol=1e-6, rtol=0)


def test_reference_is_equation_one():
    """softmax(QKᵀ/√d_k)V computed independently, in float64."""
    q, k, v = qkv(torch.float64)
    mask = random_mask()
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(DH)
    scores = torch.where(mask, scores, torch.tensor(float("-inf"), dtype=torch.float64))
    expected = torch.softmax(scores, -1) @ v
    res = reference_attention(q, k, v, mask)
    torch.testing.assert_close(res.output, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(B, H, TQ, dtype=torch.float64))
    assert (res.weights[~mask.expand(B, H, TQ, TK)] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", [reference_attention, fast_attention], ids=["reference", "fast"])
def test_fully_masked_row_gives_zeros_and_finite_grads(dtype, path):
    q, k, v = (t.to(dtype).requires_grad_() for t in qkv())
    mask = random_mask()
    mask[1, :, 2, :] = False  # query 2 of sequence 1 sees no key
    mask[2] = False  # sequence 2 sees nothing at all
    out = path(q, k, v, mask).output
    assert torch.isfinite(out.float()).all()
    assert (out[1, :, 2] == 0).all() and (out[2] == 0).all()
    out.float().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad.float()).all()
    assert (q.grad[2] == 0).all()


def test_masked_keys_do_not_leak():
    """Huge values at masked key/value positions change nothing at real positions."""
    q, k, v = qkv()
    tokens = torch.tensor([[5] * TK, [5] * 4 + [0] * 3, [5] * 2 + [0] * 5])
    mask = padding_mask(tokens, 0)
    out = fast_attention(q, k, v, mask).output
    k2, v2 = k.clone(), v.clone()
    hidden = (tokens == 0)[:, None, :, None].expand_as(k2)
    k2[hidden], v2[hidden] = 1e4, 1e4
    for path in (fast_attention, reference_attention):
        torch.testing.assert_close(path(q, k2, v2, mask).output, out, atol=1e-5, rtol=0)


def test_gradcheck_multi_head_attention_float64():
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=8, n_heads=2, impl="reference").double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    mem = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)[:, None, None, :]
    assert torch.autograd.gradcheck(lambda a, b: mha(a, b, mask).output, (x, mem), eps=1e-6, atol=1e-5)
    sdpa = MultiHeadAttention(d_model=8, n_heads=2, impl="sdpa").double()
    sdpa.load_state_dict(mha.state_dict())
    assert torch.autograd.gradcheck(lambda a: sdpa(a, a, causal_mask(3)).output, (x,), eps=1e-6, atol=1e-5)


def test_multi_head_matches_per_head_loop():
    """Concat(head_1..head_h) W_O with head_i = Attention(Q W_Q^i, K W_K^i, V W_V^i), one head at a time."""
    mha = MultiHeadAttention(d_model=12, n_heads=3).eval()
    x, mem = torch.randn(2, 4, 12), torch.randn(2, 6, 12)
    out = mha(x, mem).output
    heads = []
    for i in range(3):
        sl = slice(4 * i, 4 * i + 4)
        q = x @ mha.w_q.weight[sl].T + mha.w_q.bias[sl]
        k = mem @ mha.w_k.weight[sl].T + mha.w_k.bias[sl]
        v = mem @ mha.w_v.weight[sl].T + mha.w_v.bias[sl]
        heads.append(torch.softmax(q @ k.transpose(1, 2) / 2.0, -1) @ v)
    expected = mha.w_o(torch.cat(heads, -1))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_need_weights_returns_weights_and_same_output():
    mha = MultiHeadAttention(d_model=16, n_heads=4).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    with_w = mha(x, mem, need_weights=True)
    without = mha(x, mem)
    assert with_w.weights.shape == (2, 4, 3, 5) and without.weights is None
    torch.testing.assert_close(with_w.output, without.output, atol=1e-6, rtol=0)


def test_attention_dropout_only_in_training():
    mha = MultiHeadAttention(d_model=16, n_heads=4, dropout=0.5)
    x = torch.randn(2, 6, 16)
    mha.eval()
    torch.testing.assert_close(mha(x, x).output, mha(x, x).output)
    mha.train()
    assert not torch.allclose(mha(x, x).output, mha(x, x).output)


@pytest.mark.parametrize(
    "bad_mask, message",
    [
        (torch.ones(2, 5, dtype=torch.bool), "not broadcastable"),
        (torch.ones(2, 1, 3, 4, dtype=torch.bool), "not broadcastable"),
        (torch.ones(2, 1, 1, 5), "torch.bool"),
        (torch.ones(2, 1, 1, 5, dtype=torch.int64), "torch.bool"),
    ],
)
def test_bad_mask_is_a_clear_error(bad_mask, message):
    mha = MultiHeadAttention(d_model=8, n_heads=2)
    with pytest.raises(ValueError, match=message):
        mha(torch.randn(2, 3, 8), torch.randn(2, 5, 8), bad_mask)


def test_heads_must_divide_width_and_shapes_are_checked():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(d_model=10, n_heads=3)
    mha = MultiHeadAttention(d_model=8, n_heads=2)
    with pytest.raises(ValueError, match="query"):
        mha(torch.randn(2, 3, 6), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="key_value"):
        mha(torch.randn(2, 3, 8), torch.randn(3, 3, 8))


def test_score_bias_paths_agree():
    """An additive score bias (the hook ALiBi/T5-style encodings use), with a padding mask."""
    q, k, v = qkv()
    bias = -0.3 * (torch.arange(TQ)[:, None] - torch.arange(TK)[None, :]).abs().float()  # (T_q, T_k)
    bias = bias.expand(1, H, TQ, TK) * torch.linspace(0.5, 2, H)[None, :, None, None]
    mask = random_mask()
    ref = reference_attention(q, k, v, mask, bias=bias)
    torch.testing.assert_close(fast_attention(q, k, v, mask, bias=bias).output, ref.output, atol=1e-6, rtol=0)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(DH) + bias
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(ref.output, expected, atol=1e-6, rtol=0)


def test_fused_qkv_path_at_32_rows_and_more():
    """From 32 rows (B·T_q) the fast path projects Q, K, V in one (D -> 3D) GEMM (cross-attention: Q
    alone, K and V in one (D -> 2D) GEMM). It is taken, and gives eq. 1 over the separate W_Q, W_K, W_V."""
    mha = MultiHeadAttention(d_model=12, n_heads=3).eval()
    calls = []
    real = mha._fused_projections
    mha._fused_projections = lambda q, kv: calls.append(q.shape) or real(q, kv)
    x, mem = torch.randn(4, 10, 12), torch.randn(4, 7, 12)  # 40 query rows
    for kv in (x, mem):
        out = mha(x, kv).output
        q, k, v = (mha._split(lin(t)) for lin, t in ((mha.w_q, x), (mha.w_k, kv), (mha.w_v, kv)))
        expected = mha.w_o(reference_attention(q, k, v).output.transpose(1, 2).reshape(4, 10, 12))
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert len(calls) == 2
    mha(x[:1, :5], x[:1, :5])  # 5 rows: unfused (one token of decoding)
    assert len(calls) == 2


class CountingLinear(torch.nn.Module):
    """A stand-in for a LoRA or quantized projection: its own forward, which must be the one used."""

    def __init__(self, base: torch.nn.Linear, scale: float = 2.0):
        super().__init__()
        self.base, self.scale, self.calls = base, scale, 0

    def forward(self, x):
        self.calls += 1
        return self.base(x) * self.scale


def test_a_replaced_projection_is_never_bypassed():
    """Issue 9: the fused path read w_q/w_k/w_v.weight directly, so a replaced Linear (LoRA, INT8) was
    silently skipped at >= 32 rows. Now fusing happens only for plain nn.Linear."""
    mha = MultiHeadAttention(d_model=12, n_heads=3).eval()
    x = torch.randn(4, 10, 12)
    plain = mha(x, x).output
    mha.w_q = CountingLinear(mha.w_q)
    out = mha(x, x).output
    assert mha.w_q.calls == 1 and not torch.allclose(out, plain, atol=1e-3)
    q, k, v = (mha._split(lin(x)) for lin in (mha.w_q, mha.w_k, mha.w_v))
    expected = mha.w_o(reference_attention(q, k, v).output.transpose(1, 2).reshape(4, 10, 12))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_fused_kernel_never_sees_a_fully_masked_row(monkeypatch):
    """Issue 9, item 6: on CUDA, SDPA with a fully masked query row gave NaN gradients in fp16/bf16.
    The fast path now hands the kernel a mask in which every row sees some key (that row's output is
    zeroed afterwards), on every device; this checks what the kernel receives, here on the CPU."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = qkv()
    mask = random_mask()
    mask[1, :, 2, :] = False
    mask[2] = False
    out = fast_attention(q, k, v, mask).output
    assert seen[-1].any(dim=-1).all()  # no row without a key reaches the kernel
    assert (out[1, :, 2] == 0).all() and (out[2] == 0).all()
    plain = random_mask()
    fast_attention(q, k, v, plain)  # no fully masked row, on the CPU: the mask goes through as it is
    assert seen[-1] is plain


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (item 6 was seen on CUDA only)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fully_masked_row_on_cuda_gives_finite_grads(dtype):
    q, k, v = (t.to("cuda", dtype).requires_grad_() for t in qkv())
    mask = random_mask().cuda()
    mask[1, :, 2, :] = False
    out = fast_attention(q, k, v, mask).output
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all() and (out[1, :, 2] == 0).all()
    assert all(torch.isfinite(t.grad.float()).all() for t in (q, k, v))


@pytest.mark.parametrize("rows", [(2, 4), (4, 10)], ids=["unfused", "fused"])
def test_other_head_widths(rows):
    """The ``d_head`` option (the head-dim experiment's full-width heads): h heads of width d_head, the
    projections D -> h·d_head, W_O back to D; against the per-head formula, both projection paths."""
    b, t = rows
    mha = MultiHeadAttention(d_model=12, n_heads=3, d_head=12).eval()
    assert mha.w_q.weight.shape == (36, 12) and mha.w_o.weight.shape == (12, 36)
    x = torch.randn(b, t, 12)
    heads = []
    for i in range(3):
        sl = slice(12 * i, 12 * i + 12)
        q, k, v = (x @ lin.weight[sl].T + lin.bias[sl] for lin in (mha.w_q, mha.w_k, mha.w_v))
        heads.append(torch.softmax(q @ k.transpose(1, 2) / 12**0.5, -1) @ v)
    torch.testing.assert_close(mha(x, x).output, mha.w_o(torch.cat(heads, -1)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="positive"):
        MultiHeadAttention(12, 3, d_head=0)


def test_causal_by_name_is_the_causal_mask_and_runs_sdpas_causal_kernel(monkeypatch):
    """Issue 14 (FlashAttention through SDPA): ``CAUSAL`` gives the outputs and gradients of
    ``causal_mask`` on both paths (the written-out one is the oracle), and the fused path hands SDPA
    ``is_causal=True`` with no mask tensor (a mask rules FlashAttention out on a GPU). With a score bias
    (ALiBi) or fewer queries than keys it builds the tensor (SDPA takes a mask or is_causal, not both)."""
    from transformer_lab.nn.masks import CAUSAL

    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, 6, DH, dtype=torch.float64, requires_grad=True) for _ in range(3))
    explicit = causal_mask(6)
    oracle = reference_attention(q, k, v, explicit).output
    g_oracle = torch.autograd.grad(oracle.sum(), (q, k, v))
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw))
    for path in (fast_attention, reference_attention):
        out = path(q, k, v, CAUSAL).output
        torch.testing.assert_close(out, oracle, rtol=1e-12, atol=1e-12)
        for g, want in zip(torch.autograd.grad(out.sum(), (q, k, v)), g_oracle):
            torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    assert calls == [{"dropout_p": 0.0, "is_causal": True}]
    bias = torch.randn(1, H, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(fast_attention(q, k, v, CAUSAL, bias).output,
                               reference_attention(q, k, v, explicit, bias).output, rtol=1e-12, atol=1e-12)
    assert calls[-1]["attn_mask"] is not None and "is_causal" not in calls[-1]
    q3 = q[:, :, -3:]  # the last 3 queries over 6 keys: the mask's lower right corner
    torch.testing.assert_close(fast_attention(q3, k, v, CAUSAL).output,
                               reference_attention(q3, k, v, causal_mask(3, offset=3)).output, rtol=1e-12, atol=1e-12)


def test_gpt_names_its_causal_mask_only_when_it_is_the_plain_one(monkeypatch):
    """The GPT's training forward (no padding, nothing cached) reaches SDPA as is_causal=True in every
    layer; left padding, a cached prefix and ALiBi's bias still reach it as a mask tensor; the logits are
    the reference path's (the explicit softmax under ``causal_mask``)."""
    from transformer_lab.models.gpt import GPT, GPTConfig

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw))
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    for position in ("learned", "rotary", "alibi"):
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=50, max_len=16, d_model=32, n_heads=4, n_layers=2, d_ff=64, position=position)
        fast, ref = GPT(cfg).eval(), GPT(GPTConfig(**{**cfg.__dict__, "attention_impl": "reference"})).eval()
        ref.load_state_dict(fast.state_dict())
        calls.clear()
        torch.testing.assert_close(fast(tokens), ref(tokens), rtol=1e-5, atol=1e-5)
        causal = [c.get("is_causal", False) and c.get("attn_mask") is None for c in calls]
        assert causal == [position != "alibi"] * 2, (position, calls)
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, max_len=16, d_model=32, n_heads=4, n_layers=2, d_ff=64)).eval()
    calls.clear()
    m(tokens, attention_mask=torch.tensor([[False] * 2 + [True] * 7, [True] * 9]))
    cache = m.new_cache()
    m(tokens[:, :4], cache=cache)
    m(tokens[:, 4:], cache=cache)  # 5 new tokens after 4 cached: the mask's lower right corner
    assert [c.get("is_causal", False) for c in calls] == [False, False, True, True, False, False]
