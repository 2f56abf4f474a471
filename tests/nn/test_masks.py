"""Masks: their convention, and the invariances they must give a whole model."""

import torch

from conftest import padded_batch
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.masks import causal_mask, combine_masks, cross_attention_mask, decoder_self_mask, padding_mask

V = 30


def model() -> Transformer:
    return Transformer(preset("tiny", src_vocab_size=V, tgt_vocab_size=V)).eval()


def test_mask_shapes_and_polarity():
    tokens = torch.tensor([[4, 5, 0], [6, 0, 0]])
    pm = padding_mask(tokens, 0)
    assert pm.shape == (2, 1, 1, 3) and pm.dtype == torch.bool
    assert pm[0, 0, 0].tolist() == [True, True, False]
    cm = causal_mask(3)
    assert cm.shape == (1, 1, 3, 3)
    assert cm[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    dm = decoder_self_mask(tokens, 0)
    assert dm.shape == (2, 1, 3, 3)
    assert dm[1, 0].tolist() == [[True, False, False], [True, False, False], [True, False, False]]
    assert torch.equal(cross_attention_mask(tokens, 0), pm)
    assert combine_masks(None, None) is None


def test_changing_padded_source_tokens_changes_no_real_output():
    m = model()
    src, tgt = padded_batch(4, 10, V, min_len=3), padded_batch(4, 6, V)
    out = m(src, tgt)
    memory = m.encode(src)
    # Same padding positions, different ids there: feed explicit masks built from the original
    # padding, so the change is only in the tokens the masks hide.
    src2 = src.clone()
    pad = src == 0
    src2[pad] = torch.randint(1, V, (int(pad.sum()),))
    src_mask = padding_mask(src, 0)
    memory2 = m.encode(src2, src_mask)
    real = (~pad)[..., None]
    torch.testing.assert_close(memory * real, memory2 * real, atol=1e-6, rtol=0)
    out2 = m.generator(m.decoder(m.tgt_embed(tgt), memory2, decoder_self_mask(tgt, 0), src_mask,
                                 torch.arange(tgt.size(1))))
    torch.testing.assert_close(out, out2, atol=1e-6, rtol=0)


def test_future_target_tokens_do_not_change_earlier_outputs():
    m = model()
    src = padded_batch(3, 8, V)
    tgt = torch.randint(1, V, (3, 7))
    out = m(src, tgt)
    for cut in (1, 3, 6):
        tgt2 = tgt.clone()
        tgt2[:, cut:] = torch.randint(1, V, (3, 7 - cut))
        out2 = m(src, tgt2)
        torch.testing.assert_close(out[:, :cut], out2[:, :cut], atol=1e-6, rtol=0)
        assert not torch.allclose(out[:, cut:], out2[:, cut:])


def test_all_padding_sequence_gives_finite_outputs():
    m = model()
    src = padded_batch(3, 6, V)
    src[1] = 0  # an all-padding source sequence in the batch
    tgt = padded_batch(3, 5, V)
    tgt[2, 1:] = 0
    out = m(src, tgt)
    assert out.shape == (3, 5, V)
    assert torch.isfinite(out).all()
    m.train()
    m(src, tgt).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_column_padded_in_every_row_keeps_shape():
    """RELIABILITY 4: a position padded in every row must not be dropped."""
    m = model()
    src = padded_batch(3, 6, V)
    src[:, -2:] = 0
    assert m.encode(src).shape == (3, 6, m.config.d_model)
