"""Oracle: our encoder-decoder against torch.nn.Transformer holding the same weights.

nn.Transformer always ends each stack with a LayerNorm; the paper's post-LN model has none, so for
post-LN the reference's encoder.norm and decoder.norm are replaced by nn.Identity (see
transformer_lab.models.torch_peer); for pre-LN they get our final norms' weights. Embeddings and the
generator are not part of nn.Transformer: the reference logits apply our generator weights, copied,
to nn.Transformer's decoder output (TorchTransformerPeer).
"""

import pytest
import torch

from conftest import padded_batch
from transformer_lab.models.presets import preset
from transformer_lab.models.torch_peer import TorchTransformerPeer, to_torch_transformer, torch_masks
from transformer_lab.models.transformer import Transformer

V = 41


def build(norm_first: bool, activation: str = "relu", impl: str = "sdpa") -> Transformer:
    cfg = preset("tiny", src_vocab_size=V, tgt_vocab_size=V, n_encoder_layers=2, n_decoder_layers=3,
                 norm_first=norm_first, activation=activation, attention_impl=impl)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_matches_torch_nn_transformer(norm_first, activation, impl):
    model = build(norm_first, activation, impl)
    ref = to_torch_transformer(model).eval()
    src = padded_batch(4, 9, V)  # padded rows: key-padding masks in use
    tgt = padded_batch(4, 7, V)
    masks = torch_masks(src, tgt, pad_id=0)

    memory = model.encode(src)
    hidden = model.decode(memory, src, tgt)
    logp = model.generator(hidden)

    # Grad mode on: nn.TransformerEncoder's inference fast path (nested tensors) stays off, so the
    # reference computes every position, padded ones included, with its ordinary layers.
    x_src, x_tgt = model.src_embed(src), model.tgt_embed(tgt)
    ref_memory = ref.encoder(x_src, src_key_padding_mask=masks["src_key_padding_mask"])
    ref_hidden = ref.decoder(x_tgt, ref_memory, tgt_mask=masks["tgt_mask"],
                             tgt_key_padding_mask=masks["tgt_key_padding_mask"],
                             memory_key_padding_mask=masks["memory_key_padding_mask"])
    ref_logp = model.generator(ref_hidden)

    real_src = (src != 0)[..., None]
    real_tgt = (tgt != 0)[..., None]
    torch.testing.assert_close(memory * real_src, ref_memory * real_src, atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden * real_tgt, ref_hidden * real_tgt, atol=1e-5, rtol=0)
    torch.testing.assert_close(logp * real_tgt, ref_logp * real_tgt, atol=1e-5, rtol=0)
    # Padded positions too: both compute them with the same masks.
    torch.testing.assert_close(memory, ref_memory, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_peer_module_end_to_end_matches(norm_first):
    model = build(norm_first)
    peer = TorchTransformerPeer(model).eval()
    src, tgt = padded_batch(3, 8, V), padded_batch(3, 6, V)
    torch.testing.assert_close(model(src, tgt), peer(src, tgt), atol=1e-5, rtol=0)
    # The inference fast path of nn.TransformerEncoder (no_grad, eval) agrees at real positions.
    with torch.no_grad():
        ours, theirs = model(src, tgt), peer(src, tgt)
    real = (tgt != 0)[..., None]
    torch.testing.assert_close(ours * real, theirs * real, atol=1e-5, rtol=0)


def test_post_ln_has_no_final_norm_and_pre_ln_has_one():
    assert isinstance(build(False).encoder.norm, torch.nn.Identity)
    assert isinstance(build(True).decoder.norm, torch.nn.LayerNorm)
