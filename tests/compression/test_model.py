"""Quantizing whole models: which layers convert, calibration through forward hooks, and a quantized
checkpoint that loads back into the same function (the saved model is the oracle for the loaded one)."""

import copy

import pytest
import torch

from transformer_lab.compression import QuantConfig, QuantLinear, linear_weight_bytes, quantize_model
from transformer_lab.models.gpt import GPT, GPTConfig
from transformer_lab.models.transformer import Transformer, TransformerConfig
from transformer_lab.runs import load_model, save_checkpoint


def _translation_model(**kw):
    torch.manual_seed(0)
    return Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, d_ff=64,
                                         n_encoder_layers=1, n_decoder_layers=1, dropout=0.0, **kw)).eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(4, 50, (2, 7), generator=g), torch.randint(4, 50, (2, 5), generator=g)) for _ in range(3)]


def _calibrate(model):
    for src, tgt in _batches():
        model(src, tgt)


def test_every_linear_converts_but_the_skipped_and_the_tied_projection():
    model = _translation_model()
    src, tgt = _batches()[0]
    with torch.no_grad():
        want = model(src, tgt)
        quantize_model(model, QuantConfig(skip="decoder.layers.0.ffn"))
        got = model(src, tgt)
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    assert kinds["encoder.layers.0.self_attn.w_q"] == "QuantLinear"
    assert kinds["generator.proj"] == "Linear"  # tied to the target embedding
    assert kinds["decoder.layers.0.ffn.w_1"] == "Linear"  # skipped
    assert float((got.exp() - want.exp()).abs().max()) < 0.05


def test_skip_takes_a_name_or_its_end_and_records_the_paths_it_kept(tmp_path):
    """``skip="w_q"`` kept nothing in fp32 (only a full path matched, and a name matching nothing was
    silently ignored); it now names every layer's w_q, as an adapter's target does, the checkpoint records
    the paths, and a name that keeps nothing is an error."""
    model = quantize_model(_translation_model(), QuantConfig(skip="self_attn.w_q,ffn"))
    fp32 = sorted(n for n, m in model.named_modules() if type(m) is torch.nn.Linear and n != "generator.proj")
    assert fp32 == sorted([f"{s}.layers.0.self_attn.w_q" for s in ("encoder", "decoder")]
                          + [f"{s}.layers.0.ffn.w_{i}" for s in ("encoder", "decoder") for i in (1, 2)])
    assert model.quant_config.skip == ",".join(["encoder.layers.0.self_attn.w_q", "decoder.layers.0.self_attn.w_q",
                                                "encoder.layers.0.ffn", "decoder.layers.0.ffn"])
    save_checkpoint(tmp_path / "q", model, {"step": 0})
    assert sum(isinstance(m, QuantLinear) for m in load_model(tmp_path / "q").model.modules()) == 16 - 6
    for bad, match in (("foo", "'foo' matches no module"), ("bert.pooler.dense", "matches no module.*named w_1, w_2, w_k"),
                       ("norm", "nothing in them this quantization changes"),
                       ("src_embed", "nothing in them this quantization changes")):  # (without embeddings=True)
        with pytest.raises(ValueError, match=match):
            quantize_model(_translation_model(), QuantConfig(skip=bad))


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(scheme="static", calibrate="kl"),
                                 QuantConfig(scheme="static", calibrate="percentile", smooth=0.5),
                                 QuantConfig(scheme="weight-only", bits=4, granularity="group", group_size=16),
                                 QuantConfig(bits=4, smooth=0.8, granularity="tensor"),
                                 QuantConfig(embeddings=True), QuantConfig(activations="tensor", tied=True),
                                 QuantConfig(activations="tensor", tied=True, embeddings=True),
                                 QuantConfig(activations="tensor", tied=True, smooth=0.8)])
def test_a_quantized_checkpoint_loads_back_to_the_same_function(cfg, tmp_path):
    model = quantize_model(_translation_model(), cfg, calibrate=_calibrate)
    src, tgt = _batches()[0]
    save_checkpoint(tmp_path / "q", model, {"step": 0})
    loaded = load_model(tmp_path / "q").model.eval()
    assert loaded.quant_config == cfg
    # encoder 4 + 2 (attention, FFN), decoder 4 + 4 + 2, and with ``tied`` the generator tied to the embeddings
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 16 + cfg.tied
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, tgt), model(src, tgt), atol=0, rtol=0)
    fp32 = linear_weight_bytes(_translation_model()) + (4 * 50 * 32 if cfg.tied else 0)  # + the tied generator
    assert linear_weight_bytes(loaded) < fp32 / (3.5 if cfg.bits == 8 else 5)  # (16-weight groups: a 4-byte scale each)


def test_calibration_is_required_and_a_quantized_model_is_refused():
    with pytest.raises(ValueError, match="calibration data"):
        quantize_model(_translation_model(), QuantConfig(scheme="static"))
    model = quantize_model(_translation_model(), QuantConfig())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, QuantConfig())
    with pytest.raises(ValueError, match="saw no input"):  # a calibration run that never reaches the decoder
        quantize_model(_translation_model(), QuantConfig(scheme="static"),
                       calibrate=lambda m: m.encode(_batches()[0][0]))
    with pytest.raises(ValueError, match="weight-only"):
        QuantConfig(scheme="weight-only", smooth=0.5)
    with pytest.raises(ValueError, match="calibrate"):
        QuantConfig(calibrate="entropy")
    with pytest.raises(ValueError, match="weight_calibrate: expected one of"):  # (an activation method: it took
        quantize_model(_translation_model(), QuantConfig(weight_calibrate="kl"))  # half an hour on MiniLM)


def test_a_gpt_quantizes_with_its_tied_head_in_fp32():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, max_len=16, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)).eval()
    tokens = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        want = gpt(tokens)
        quantize_model(gpt, QuantConfig(scheme="static", calibrate="mse"), calibrate=lambda m: m(tokens))
        got = gpt(tokens)
    assert type(gpt.lm_head).__name__ == "Linear"
    assert float((got.softmax(-1) - want.softmax(-1)).abs().max()) < 0.05


def test_int8_embedding_tables_keep_the_lookup_and_leave_tied_ones():
    """Untied tables become int8 rows; a table shared with the output projection (the default
    translation model ties source, target and generator) stays fp32 with it."""
    from transformer_lab.compression import QuantEmbedding, model_bytes

    model = _translation_model(share_embeddings=False)
    src, tgt = _batches()[0]
    before = model_bytes(model)
    with torch.no_grad():
        want = model.src_embed.token(src)
        quantize_model(model, QuantConfig(embeddings=True))
        got = model.src_embed.token(src)
    assert isinstance(model.src_embed.token, QuantEmbedding) and isinstance(model.tgt_embed.token, QuantEmbedding)
    assert float((got - want).abs().max()) <= float(want.abs().max()) / 127  # half a step of the widest row, and less
    assert model_bytes(model) < before
    tied = quantize_model(_translation_model(), QuantConfig(embeddings=True))
    assert not any(isinstance(m, QuantEmbedding) for m in tied.modules())
    # With the tied output layer quantized too, the shared table becomes one int8 table read by the source and
    # target lookups and the generator (as the fp32 model had one table): a third of the fp32 model's bytes.
    fp32 = _translation_model()
    shared = quantize_model(copy.deepcopy(fp32), QuantConfig(embeddings=True, tied=True))
    assert shared.src_embed.token is shared.tgt_embed.token and isinstance(shared.src_embed.token, QuantEmbedding)
    assert shared.generator.proj.qweight is shared.src_embed.token.qweight
    assert model_bytes(shared) < 0.35 * model_bytes(fp32)
    with torch.no_grad():
        assert float((shared(src, tgt).exp() - fp32(src, tgt).exp()).abs().max()) < 0.05


def test_layers_reading_one_input_share_one_smoothing_and_one_product():
    """SmoothQuant on siblings that read one input (self-attention's Q, K, V; cross-attention's K, V):
    one multiplier per group, from their weights together, so attention still runs them as one fbgemm
    product; the model's output equals the model run layer by layer (the joint product disabled)."""
    model = quantize_model(_translation_model(), QuantConfig(activations="tensor", tied=True, smooth=0.8), calibrate=_calibrate)
    mult = {n: m.input_multiplier for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for attn in ("encoder.layers.0.self_attn", "decoder.layers.0.self_attn"):
        assert torch.equal(mult[f"{attn}.w_q"], mult[f"{attn}.w_k"]) and torch.equal(mult[f"{attn}.w_q"], mult[f"{attn}.w_v"])
    cross = "decoder.layers.0.cross_attn"
    assert torch.equal(mult[f"{cross}.w_k"], mult[f"{cross}.w_v"]) and not torch.equal(mult[f"{cross}.w_q"], mult[f"{cross}.w_k"])
    assert not torch.equal(mult["encoder.layers.0.self_attn.w_o"], mult["encoder.layers.0.self_attn.w_q"])
    calls = []
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.register_forward_hook(lambda mod, i, o: calls.append(mod))
    src, tgt = _batches()[0]
    with torch.no_grad():
        together = model(src, tgt)
        n_joint = len(calls)
        calls.clear()
        for m in model.modules():
            if isinstance(m, QuantLinear):
                m.joint = lambda *others: None
        alone = model(src, tgt)
    # a joint product calls no layer's own forward: Q, K, V in both self-attentions, K and V in the cross-attention
    assert len(calls) - n_joint == 3 + 3 + 2
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
