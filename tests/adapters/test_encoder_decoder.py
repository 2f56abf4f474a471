"""Prefix and prompt tuning in the encoder-decoder (``models.transformer``). No library runs these on
our Transformer, so the oracle is the unmodified model itself: a soft prompt initialised from a text
must act as that text's tokens placed before the source, and a prefix holding the keys and values the
plain model computes for P tokens must give the outputs the plain model gives after reading them
(encoder and decoder halves separately). Then: incremental decoding against teacher forcing,
gradients, the peft-format files and checkpoints."""

import pytest
import torch

from transformer_lab.adapters import AdapterConfig, apply_adapter, parameter_counts
from transformer_lab.adapters.peft_format import load_peft, read_peft, save_peft
from transformer_lab.generation.search import Seq2SeqStep, beam_search
from transformer_lab.models.transformer import Transformer, TransformerConfig
from transformer_lab.runs.checkpoint import load_model, save_checkpoint

V, P = 40, 4


def small(position: str = "sinusoidal", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=32, n_heads=4, d_ff=64,
                                         n_encoder_layers=2, n_decoder_layers=3, dropout=0.0, max_len=40,
                                         position=position)).eval()


SRC = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])  # the second row padded
TGT = torch.tensor([[2, 11, 12, 13], [2, 14, 15, 16]])


def record_attention_inputs(layers) -> tuple[dict, list]:
    inputs: dict[int, torch.Tensor] = {}
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
             for i, layer in enumerate(layers)]
    return inputs, hooks


def keys_and_values(layers, inputs: dict, n: int) -> torch.Tensor:
    """(n, L·2·D): each layer's K and V at the first n positions, the prefix table's layout."""
    cols = []
    for i, layer in enumerate(layers):
        h = inputs[i][0, :n]
        cols += [layer.self_attn.w_k(h), layer.self_attn.w_v(h)]
    return torch.cat(cols, dim=1)


def test_a_prompt_from_a_text_acts_as_that_text_before_the_source():
    """Oracle: the plain model reading [text; src]: the same memory and the same decoder outputs."""
    plain = small()
    ids = [7, 8, 9, 10]
    text = torch.tensor(ids).expand(2, -1)
    with torch.no_grad():
        memory = plain.encode(torch.cat([text, SRC], dim=1))
        out = plain.decode(memory, torch.cat([text, SRC], dim=1), TGT)
    model = apply_adapter(small(), AdapterConfig(method="prompt", prompt_len=P, prompt_init="text",
                                                 prompt_ids=",".join(map(str, ids))))
    with torch.no_grad():
        got_memory = model.encode(SRC)
        got = model.decode(got_memory, SRC, TGT)
    assert got_memory.shape == (2, P + SRC.size(1), 32)
    torch.testing.assert_close(got_memory, memory, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, out, atol=1e-5, rtol=0)


def test_the_prefix_encoder_half_equals_the_plain_encoder_reading_those_tokens_first():
    plain = small()
    e = torch.tensor([[11, 12, 13, 14]])
    x = SRC[:1]
    inputs, hooks = record_attention_inputs(plain.encoder.layers)
    with torch.no_grad():
        full = plain.encode(torch.cat([e, x], dim=1))
        table = keys_and_values(plain.encoder.layers, inputs, P)
    for h in hooks:
        h.remove()
    model = apply_adapter(small(), AdapterConfig(method="prefix", prefix_len=P, prefix_hidden=0))
    with torch.no_grad():
        model.prefix.embedding.weight[:, : table.size(1)] = table  # the encoder's layers come first
        got = model.encode(x)
    torch.testing.assert_close(got, full[:, P:], atol=1e-5, rtol=0)


def test_the_prefix_decoder_half_equals_the_plain_decoder_reading_those_tokens_first():
    plain = small()
    f = torch.tensor([[17, 18, 19, 20]])
    src, y = SRC[:1], TGT[:1]
    memory = torch.randn(1, src.size(1), 32)
    inputs, hooks = record_attention_inputs(plain.decoder.layers)
    with torch.no_grad():
        full = plain.decode(memory, src, torch.cat([f, y], dim=1))
        table = keys_and_values(plain.decoder.layers, inputs, P)
    for h in hooks:
        h.remove()
    model = apply_adapter(small(), AdapterConfig(method="prefix", prefix_len=P, prefix_hidden=0))
    with torch.no_grad():
        model.prefix.embedding.weight[:, -table.size(1):] = table  # the decoder's layers come last
        got = model.decode(memory, src, y)
        step = Seq2SeqStep(model, src)
        step.memory = memory
        stepwise = torch.cat([model.decode(memory, src, y[:, k:k + 1], cache=step.cache) for k in range(y.size(1))], 1)
    torch.testing.assert_close(got, full[:, P:], atol=1e-5, rtol=0)
    torch.testing.assert_close(stepwise, got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["sinusoidal", "rotary"])
@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_cached_decoding_equals_teacher_forcing_and_beam_search_runs(method, position):
    model = apply_adapter(small(position), AdapterConfig(method=method, prefix_len=P, prompt_len=P, prefix_hidden=16))
    with torch.no_grad():
        full = model(SRC, TGT)[..., 1:]  # the step leaves out <pad>
        step = Seq2SeqStep(model, SRC)
        for k in range(TGT.size(1)):
            torch.testing.assert_close(step(TGT[:, : k + 1])[:, 1:], full[:, k], atol=1e-5, rtol=0)
        res = beam_search(Seq2SeqStep(model, SRC), 2, 3, 2, 3, 10)
    assert len(res.tokens) == 2


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_only_the_adapter_learns(method):
    model = apply_adapter(small(), AdapterConfig(method=method, prefix_len=P, prompt_len=P, prefix_hidden=16))
    model(SRC, TGT).mean().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith(f"{method}.") for n in trained)
    counts = parameter_counts(model)
    assert counts.trainable == sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"{method}."))


@pytest.mark.parametrize("cfg", [AdapterConfig(method="lora", r=2, targets="w_q,w_v"),
                                 AdapterConfig(method="prefix", prefix_len=P, prefix_hidden=0),
                                 AdapterConfig(method="prompt", prompt_len=P)])
def test_peft_files_and_checkpoints_round_trip(tmp_path, cfg):
    model = apply_adapter(small(), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # LoRA's B starts at zero: make the adapter matter
        want = model(SRC, TGT)
    save_peft(model, tmp_path / "adapter", "base-run")
    config, tensors = read_peft(tmp_path / "adapter")
    assert config["task_type"] == "SEQ_2_SEQ_LM"
    if cfg.method == "lora":
        assert "base_model.model.decoder.layers.0.cross_attn.w_q.lora_A.weight" in tensors  # our module names
    loaded = load_peft(small(), tmp_path / "adapter")
    save_checkpoint(tmp_path / "ckpt", model, {"step": 1})
    restored = load_model(tmp_path / "ckpt").model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(SRC, TGT), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(restored(SRC, TGT), want, atol=0, rtol=0)


def test_virtual_positions_count_against_max_len():
    model = apply_adapter(small(), AdapterConfig(method="prompt", prompt_len=P))
    with pytest.raises(ValueError, match="prefix or prompt positions"):
        model.encode(torch.randint(4, V, (1, 40 - P + 1)))
    with pytest.raises(ValueError, match="src_mask: not supported with a prefix or prompt"):
        model.encode(SRC, torch.ones(2, 1, 1, 5, dtype=torch.bool))
