"""ALiBi, T5 relative bias and Shaw relative positions (issue 13), held to what nobody here wrote:

* ALiBi: the paper's slopes (Press et al. 2022: 2^(-8h/n); 8 heads 1/2 ... 1/256) and
  ``transformers``' BLOOM builder (``build_alibi_tensor``: the paper's recipe for any head count) and
  MPT builder (powers of two; MPT orders other counts differently). Both builders put a bias on the
  key position only, relying on softmax's shift invariance: the attention weights are compared.
* T5: ``transformers``' ``T5Attention.compute_bias`` with our table copied in, bidirectional (encoder)
  and causal (decoder), also for a cached decoding step (``past_seen_tokens``).
* Shaw: eqs. (3) and (4) of Shaw et al. 2018 written as loops over (i, j) with the a_ij vectors
  materialised, against our gather/scatter form (forward and gradients).
"""

import math

import pytest
import torch

from transformer_lab.nn.attention import MultiHeadAttention
from transformer_lab.nn.kv_cache import AttentionCache
from transformer_lab.nn.masks import causal_mask
from transformer_lab.nn.positions import ALiBi, ShawRelativePosition, T5RelativeBias, alibi_slopes, t5_bucket

transformers = pytest.importorskip("transformers")


def test_alibi_slopes_are_the_papers_and_blooms():
    assert alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    for h in (1, 2, 4, 6, 8, 12, 16, 20):
        bloom = build_alibi_tensor(torch.ones(1, 3), h, torch.float32)  # (H, 1, T): slope * key position
        torch.testing.assert_close(alibi_slopes(h), bloom[:, 0, 1])  # BLOOM rounds in float32
        if h & (h - 1) == 0:
            torch.testing.assert_close(alibi_slopes(h), -build_mpt_alibi_tensor(h, 2)[:, 0, 0])


@pytest.mark.parametrize("n_heads", [4, 6])
def test_alibi_attention_equals_blooms_under_a_causal_mask(n_heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    t = 9
    scores = torch.randn(2, n_heads, t, t)
    pos = torch.arange(t)
    ours = ALiBi(n_heads, causal=True).score_bias(pos, pos)
    assert ours.shape == (1, n_heads, t, t)
    bloom = build_alibi_tensor(torch.ones(1, t), n_heads, torch.float32).view(1, n_heads, 1, t)
    mask = causal_mask(t, torch.device("cpu"))
    soft = [(scores + b).masked_fill(~mask, float("-inf")).softmax(-1) for b in (ours, bloom)]
    torch.testing.assert_close(soft[0], soft[1])
    both = ALiBi(n_heads, causal=False).score_bias(pos, pos)  # bidirectional: -m|i - j|, symmetric
    torch.testing.assert_close(both[0, :, 2, 5], both[0, :, 5, 2])
    torch.testing.assert_close(both[0, :, 2, 5], -alibi_slopes(n_heads) * 3)


@pytest.mark.parametrize("causal", [False, True])
def test_t5_bias_equals_transformers_t5_attention(causal):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    h = 4
    config = T5Config(d_model=32, d_kv=8, num_heads=h, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, is_decoder=causal)
    peer = T5Attention(config, has_relative_attention_bias=True)
    ours = T5RelativeBias(h, causal=causal)
    ours.bias.weight.data.copy_(peer.relative_attention_bias.weight.data)
    for q_len, k_len, past in ((7, 7, 0), (300, 300, 0), (1, 201, 200)):  # 300: distances past max_distance
        want = peer.compute_bias(q_len, k_len, past_seen_tokens=past)
        got = ours.score_bias(torch.arange(past, past + q_len), torch.arange(k_len))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        peer_buckets = peer._relative_position_bucket(torch.arange(k_len)[None] - torch.arange(past, past + q_len)[:, None],
                                                      bidirectional=not causal)
        assert torch.equal(t5_bucket(torch.arange(k_len)[None] - torch.arange(past, past + q_len)[:, None], not causal),
                           peer_buckets)


def _shaw_by_loops(q, k, v, ak, av, clip, mask):
    """Shaw et al. (2018) eqs. (3)-(4) for one head: e_ij = q_i·(k_j + a^K_ij)/√d, z_i = Σ_j α_ij (v_j + a^V_ij)."""
    t_q, t_k, d = q.size(0), k.size(0), q.size(1)
    e = q.new_empty(t_q, t_k)
    for i in range(t_q):
        for j in range(t_k):
            r = max(-clip, min(clip, j - i)) + clip
            e[i, j] = q[i] @ (k[j] + ak[r]) / math.sqrt(d)
    alpha = e.masked_fill(~mask, float("-inf")).softmax(-1)
    z = q.new_zeros(t_q, d)
    for i in range(t_q):
        for j in range(t_k):
            r = max(-clip, min(clip, j - i)) + clip
            z[i] += alpha[i, j] * (v[j] + av[r])
    return z


@pytest.mark.parametrize("causal", [False, True])
def test_shaw_equals_the_papers_equations_forward_and_backward(causal):
    torch.manual_seed(0)
    b, h, t, d, clip = 2, 3, 7, 4, 2
    shaw = ShawRelativePosition(d, clip).for_layer()
    q, k, v = (torch.randn(b, h, t, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    shaw = shaw.double()
    pos = torch.arange(t)
    mask = causal_mask(t, torch.device("cpu"))[0, 0] if causal else torch.ones(t, t, dtype=torch.bool)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d) + shaw.score_bias(pos, pos, q)
    alpha = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    ours = alpha @ v + shaw.value_term(alpha, pos, pos)
    want = torch.stack([torch.stack([_shaw_by_loops(q[i, j], k[i, j], v[i, j], shaw.key.weight, shaw.value.weight,
                                                    clip, mask) for j in range(h)]) for i in range(b)])
    torch.testing.assert_close(ours, want)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * g).sum(), [q, k, v, shaw.key.weight, shaw.value.weight])
    grads_want = torch.autograd.grad((want * g).sum(), [q, k, v, shaw.key.weight, shaw.value.weight])
    for a, w in zip(grads, grads_want):
        torch.testing.assert_close(a, w)


@pytest.mark.parametrize("make", [lambda h, d: ALiBi(h, causal=True), lambda h, d: T5RelativeBias(h, causal=True),
                                  lambda h, d: ShawRelativePosition(d, 3)], ids=["alibi", "t5", "shaw"])
def test_cached_steps_equal_the_whole_sequence(make):
    """A K/V cache keeps its keys' positions: step-by-step attention equals one causal pass, for a
    batch whose rows have their own positions (left padding: row 1 starts two positions later)."""
    torch.manual_seed(0)
    d, h, t = 16, 4, 6
    mha = MultiHeadAttention(d, h, position=make(h, d // h).for_layer()).eval()
    x = torch.randn(2, t, d)
    pos = torch.stack([torch.arange(t), (torch.arange(t) - 2).clamp(min=0)])  # (B, T)
    keep = torch.stack([torch.ones(t, dtype=torch.bool), torch.arange(t) >= 2])
    mask = causal_mask(t, x.device) & keep[:, None, None, :]
    whole = mha(x, x, mask, pos, pos).output
    cache = AttentionCache()
    steps = [mha(x[:, i:i + 1], x[:, i:i + 1], keep[:, None, None, :i + 1], pos[:, i:i + 1], pos[:, i:i + 1],
                 cache=cache).output for i in range(t)]
    torch.testing.assert_close(torch.cat(steps, 1)[1, 2:], whole[1, 2:])
    torch.testing.assert_close(torch.cat(steps, 1)[0], whole[0])
    assert cache.pos.shape == (2, t)
