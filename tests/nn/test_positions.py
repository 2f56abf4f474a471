"""Position encodings: the sinusoidal table's formula and its linear-shift property (§3.5)."""

import math

import pytest
import torch

from transformer_lab.nn.positions import LearnedPositionEmbedding, SinusoidalPositionEncoding, sinusoid_table


def test_table_is_the_papers_formula():
    d, table = 16, sinusoid_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-7)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-7)


@pytest.mark.parametrize("k", [1, 2, 5, 17, 100])
def test_shift_by_k_is_a_fixed_linear_map(k):
    """PE(pos+k) = M(k) PE(pos), M(k) block-diagonal 2x2 rotations built from PE(k) alone:
    [sin(ω(p+k)), cos(ω(p+k))] = [[cos ωk, sin ωk], [-sin ωk, cos ωk]] [sin ωp, cos ωp]."""
    d = 512
    table = sinusoid_table(512 + k, d)
    sin_k, cos_k = table[k, 0::2], table[k, 1::2]  # (d/2,)
    M = torch.zeros(d, d)
    idx = torch.arange(0, d, 2)
    M[idx, idx], M[idx, idx + 1] = cos_k, sin_k
    M[idx + 1, idx], M[idx + 1, idx + 1] = -sin_k, cos_k
    pos = torch.arange(512)
    shifted = table[pos] @ M.T
    assert (shifted - table[pos + k]).abs().max().item() <= 1e-5


def test_sinusoidal_has_no_parameters_and_adds_to_embeddings():
    pe = SinusoidalPositionEncoding(8, max_len=20)
    assert list(pe.parameters()) == []
    assert "table" not in pe.state_dict()  # recomputed, never stored in checkpoints
    x = torch.zeros(2, 5, 8)
    torch.testing.assert_close(pe.add_to_embeddings(x, torch.arange(5)), sinusoid_table(20, 8)[:5].expand(2, 5, 8))


@pytest.mark.parametrize("cls", [SinusoidalPositionEncoding, LearnedPositionEmbedding])
def test_position_beyond_table_is_a_clear_error(cls):
    pe = cls(8, max_len=10)
    with pytest.raises(ValueError, match="max_len=10"):
        pe.add_to_embeddings(torch.zeros(1, 11, 8), torch.arange(11))


def test_learned_positions_are_trained_parameters():
    pe = LearnedPositionEmbedding(8, max_len=10)
    out = pe.add_to_embeddings(torch.zeros(1, 4, 8), torch.arange(4))
    out.sum().backward()
    assert pe.embedding.weight.grad[:4].abs().sum() > 0 and pe.embedding.weight.grad[4:].abs().sum() == 0


# --- rotary: a relative variant plugged in through the same interface ----------------------------

from transformer_lab.models.presets import preset  # noqa: E402
from transformer_lab.models.transformer import Transformer  # noqa: E402
from transformer_lab.nn.attention import MultiHeadAttention  # noqa: E402
from transformer_lab.nn.positions import RotaryPositionEncoding  # noqa: E402


def test_rotary_equals_complex_multiplication():
    """Oracle: pairs (x_2i, x_2i+1) as complex numbers times e^{i·pos·θ_i} (RoFormer, eq. 13-14)."""
    rope = RotaryPositionEncoding(8)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    pos = torch.arange(5) + 3
    theta = 10000 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    z = torch.view_as_complex(x.reshape(2, 3, 5, 4, 2).contiguous())
    expected = torch.view_as_real(z * torch.polar(torch.ones(5, 4, dtype=torch.float64), pos[:, None] * theta))
    got, _ = rope.rotate_qk(x.float(), x.float(), pos, pos)
    torch.testing.assert_close(got, expected.reshape(2, 3, 5, 8).float(), atol=1e-5, rtol=0)


def test_rotary_attention_depends_only_on_relative_position():
    mha = MultiHeadAttention(16, 4, position=RotaryPositionEncoding(4)).eval()
    x = torch.randn(2, 6, 16)
    pos = torch.arange(6)
    out = mha(x, x, None, pos, pos).output
    shifted = mha(x, x, None, pos + 11, pos + 11).output
    torch.testing.assert_close(out, shifted, atol=1e-5, rtol=0)
    assert not torch.allclose(out, mha(x, x, None, pos, pos.flip(0)).output, atol=1e-3)


def test_rotary_model_plugs_in_without_changing_layers():
    model = Transformer(preset("tiny", src_vocab_size=20, tgt_vocab_size=20, position="rotary")).eval()
    assert model.encoder.layers[0].self_attn.position is model.position
    assert model.decoder.layers[0].cross_attn.position is None  # no relative positions across sequences
    src, tgt = torch.randint(1, 20, (2, 7)), torch.randint(1, 20, (2, 5))
    out = model(src, tgt)
    assert torch.isfinite(out).all()
    # order matters to the model: permuting the source changes the output
    assert not torch.allclose(out, model(src.flip(1), tgt), atol=1e-4)
    # reference and fast attention paths agree with rotary too
    ref = Transformer(preset("tiny", src_vocab_size=20, tgt_vocab_size=20, position="rotary",
                             attention_impl="reference")).eval()
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(ref(src, tgt), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rotary_angles_stay_exact_in_low_precision(dtype):
    """In bf16, 257 == 256; the angles must still be computed in float32: the same vector at positions
    256 and 257 must come out rotated differently (computed in bf16, both would be rotated by 256·θ)."""
    rope = RotaryPositionEncoding(8).to(dtype)
    x = torch.randn(1, 1, 1, 8).expand(1, 1, 2, 8)  # one vector, at two positions
    pos = torch.tensor([256, 257])
    low, _ = rope.rotate_qk(x.to(dtype), x.to(dtype), pos, pos)
    ref, _ = RotaryPositionEncoding(8).rotate_qk(x, x, pos, pos)
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.02)
    assert not torch.allclose(low[0, 0, 0].float(), low[0, 0, 1].float(), atol=1e-2)
    assert torch.tensor([256.0, 257.0], dtype=torch.bfloat16).unique().numel() == 1  # what bf16 angles would see
