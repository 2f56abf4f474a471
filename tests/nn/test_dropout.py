"""Dropout: eager is F.dropout itself; under torch.compile on a CPU the mask is a hash of the index
(nn/dropout.py). The hash is checked against Wellons' lowbias32 written in plain Python integers
(unsigned 32-bit arithmetic, the published C code), the masks against the Bernoulli statistics."""

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_lab.nn.dropout import Dropout, dropout, hashed_keep_mask, lowbias32, uses_hashed_mask


def lowbias32_python(x: int) -> int:
    """The published hash, on Python ints kept to 32 unsigned bits."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_the_int32_hash_equals_the_unsigned_formula():
    values = [0, 1, 2, 3, 12345, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    signed = torch.tensor([v - 2**32 if v >= 2**31 else v for v in values], dtype=torch.int32)
    got = [int(v) & 0xFFFFFFFF for v in lowbias32(signed)]
    assert got == [lowbias32_python(v) for v in values]


def test_the_compiled_hash_gives_the_eager_bits():
    """Inductor's C++ (vector loop and scalar tail: 4,099 values) wraps the int32 products as eager does."""
    x = torch.arange(-2049, 2050, dtype=torch.int32) * 1_048_573
    torch._dynamo.reset()
    assert torch.equal(torch.compile(lowbias32, dynamic=False)(x), lowbias32(x))


def test_eager_dropout_is_torchs_own():
    """Outside torch.compile nothing changes: the same draws from PyTorch's generator as nn.Dropout."""
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    ours = Dropout(0.3).train()(x)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.Dropout(0.3).train()(x))
    assert not uses_hashed_mask(x)
    assert torch.equal(Dropout(0.3).eval()(x), x) and torch.equal(dropout(x, 0.0), x)
    assert isinstance(Dropout(0.1), torch.nn.Dropout)  # set_dropout and state dicts see an nn.Dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_hashed_masks_have_bernoulli_statistics(p):
    n = 1 << 20
    a, b = hashed_keep_mask((n,), p, "cpu"), hashed_keep_mask((n,), p, "cpu")
    sd = math.sqrt(p * (1 - p) / n)
    for m in (a, b):
        assert abs(float(m.float().mean()) - (1 - p)) < 5 * sd
    # Two calls draw two seeds: independent masks agree on a fraction p^2 + (1-p)^2 of elements.
    agree = float((a == b).float().mean())
    assert abs(agree - (p * p + (1 - p) ** 2)) < 5 * math.sqrt(0.25 / n)
    # Neighbours within one mask are uncorrelated (an index hash, not a counter).
    x = a.float() - a.float().mean()
    for lag in (1, 2, 16, 256):
        corr = float((x[:-lag] * x[lag:]).mean() / x.var())
        assert abs(corr) < 5 / math.sqrt(n), (lag, corr)


def test_hashed_mask_is_the_published_hash_against_its_threshold():
    """The int32 mask, element by element, against lowbias32 in Python integers: keep when the hash's low
    31 bits are at least round(p * 2^31) (the sign trick in hashed_keep_mask is this comparison)."""
    p, n = 0.3, 4099
    torch.manual_seed(5)
    mask = hashed_keep_mask((n,), p, "cpu")
    torch.manual_seed(5)
    seed = int(torch.randint(-(2**31), 2**31, (), dtype=torch.int32)) & 0xFFFFFFFF
    expect = [int((lowbias32_python(lowbias32_python(i) ^ seed) & 0x7FFFFFFF) >= round(p * 2**31)) for i in range(n)]
    assert mask.dtype == torch.int32 and mask.tolist() == expect


def test_hashed_masks_follow_torch_manual_seed():
    torch.manual_seed(7)
    a = hashed_keep_mask((1000,), 0.2, "cpu")
    torch.manual_seed(7)
    assert torch.equal(a, hashed_keep_mask((1000,), 0.2, "cpu"))


def test_compiled_dropout_scales_kept_values_and_routes_the_gradient():
    torch._dynamo.reset()
    p = 0.25
    f = torch.compile(lambda t: dropout(t, p), dynamic=False)
    x = (torch.rand(300, 200) + 0.5).requires_grad_()
    y = f(x)
    kept = y != 0
    assert abs(float(kept.float().mean()) - (1 - p)) < 0.01
    assert torch.allclose(y[kept], x.detach()[kept] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p))
    # The compiled draw is the hashed mask of one seed, reproducible from torch.manual_seed.
    torch.manual_seed(11)
    y1 = f(x)
    torch.manual_seed(11)
    assert torch.equal(y1, f(x))


def test_compiled_attention_with_dropout_takes_the_written_out_path(monkeypatch):
    """fast_attention under compile with dropout: eq. 1 written out with the hashed mask (the trace goes
    through reference_attention and hashed_keep_mask); without dropout the compiled call equals the eager one."""
    import transformer_lab.nn.attention as attention
    import transformer_lab.nn.dropout as nn_dropout

    calls = {"reference": 0, "hashed": 0}

    def spy(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(attention, "reference_attention", spy("reference", attention.reference_attention))
    monkeypatch.setattr(nn_dropout, "hashed_keep_mask", spy("hashed", nn_dropout.hashed_keep_mask))
    torch._dynamo.reset()
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    f = torch.compile(lambda q, k, v, p: attention.fast_attention(q, k, v, mask, dropout_p=p).output, dynamic=False)
    assert torch.allclose(f(q, k, v, 0.0), attention.fast_attention(q, k, v, mask).output, atol=1e-5)
    assert calls == {"reference": 0, "hashed": 0}
    out = f(q, k, v, 0.5)
    assert calls["reference"] >= 1 and calls["hashed"] >= 1  # traced through the written-out path and the hash
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, attention.fast_attention(q, k, v, mask).output, atol=1e-3)  # dropout did act


def test_probability_one_drops_everything_compiled_or_not():
    x = torch.randn(10, 10)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(torch.compile(lambda t: dropout(t, 1.0))(x), torch.zeros_like(x))
    assert torch.equal(F.dropout(x, 1.0), torch.zeros_like(x))
