"""LoRA layers and ``apply_adapter`` on small models: the formula (a Linear plus (α/r)·B·A written
out here), the starting point (B = 0: the base model's outputs), merge / unmerge, what trains, and
bad input (a target that matches nothing, r <= 0, adapter files for another base or damaged)."""

import pytest
import torch
from torch import nn

from transformer_lab.adapters import AdapterConfig, apply_adapter, merge_lora, parameter_counts
from transformer_lab.adapters.lora import LoRALinear
from transformer_lab.adapters.peft_format import load_peft, save_peft
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.gpt import GPT, GPTConfig
from transformer_lab.models.transformer import Transformer, TransformerConfig

V = 50


def small_bert(**kw) -> Bert:
    torch.manual_seed(0)
    return Bert(BertConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=40, dropout=0.0,
                           attention_dropout=0.0, **kw)).eval()


def small_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, max_len=40, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0,
                         attention_dropout=0.0)).eval()


def randomize_b(model: nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)


def test_lora_linear_is_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    lora = LoRALinear(base, r=3, alpha=6.0)
    x = torch.randn(5, 12)
    torch.testing.assert_close(lora(x), base(x), atol=0, rtol=0)  # B = 0 at the start
    nn.init.normal_(lora.lora_B.weight)
    expected = x @ base.weight.T + base.bias + (6.0 / 3) * (x @ lora.lora_A.weight.T) @ lora.lora_B.weight.T
    torch.testing.assert_close(lora(x), expected, atol=1e-5, rtol=1e-5)


def test_merge_equals_unmerged_and_unmerge_restores_the_weight():
    torch.manual_seed(0)
    base = nn.Linear(64, 48)
    w0 = base.weight.detach().clone()
    lora = LoRALinear(base, r=8, alpha=16.0)
    nn.init.normal_(lora.lora_B.weight, std=0.1)
    x = torch.randn(9, 64)
    unmerged = lora(x)
    lora.merge()
    torch.testing.assert_close(lora(x), unmerged, atol=1e-5, rtol=0)
    assert not torch.equal(base.weight, w0)
    lora.unmerge()
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)  # fp32 rounding only
    torch.testing.assert_close(lora(x), unmerged, atol=1e-6, rtol=0)


@pytest.mark.parametrize("make", [small_bert, small_gpt])
def test_apply_adapter_starts_at_the_base_model_and_trains_only_the_adapter(make):
    model = make()
    x = torch.randint(1, V, (2, 9))
    before = model(x)
    apply_adapter(model, AdapterConfig(method="lora", r=4, targets="w_q,w_v"))
    after = model(x)
    out = lambda o: o.hidden if hasattr(o, "hidden") else o  # noqa: E731
    torch.testing.assert_close(out(after), out(before), atol=0, rtol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (w_q, w_v) x (A, B)
    counts = parameter_counts(model)
    assert counts.trainable == 2 * 2 * 4 * (32 + 32)
    assert counts.total == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_merge_lora_gives_a_plain_model_with_the_same_outputs():
    model = apply_adapter(small_gpt(), AdapterConfig(method="lora", r=4, targets="w_q,w_k,w_v,w_o,w_1,w_2"))
    randomize_b(model)
    x = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        adapted = model(x)
        merged = merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        torch.testing.assert_close(merged(x), adapted, atol=1e-5, rtol=0)
    assert set(merged.state_dict()) == set(small_gpt().state_dict())


def test_encoder_decoder_takes_lora_on_cross_attention_only():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=32, n_heads=4, d_ff=64,
                                          n_encoder_layers=2, n_decoder_layers=2, dropout=0.0))
    apply_adapter(model, AdapterConfig(method="lora", r=2, targets="cross_attn.w_q,cross_attn.w_v"))
    adapted = {n.rsplit(".", 2)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {f"decoder.layers.{i}.cross_attn.{w}" for i in range(2) for w in ("w_q", "w_v")}


def test_a_target_that_matches_nothing_lists_the_layer_names():
    with pytest.raises(ValueError, match=r"'attn_q' matches no Linear layer.*w_k, w_o, w_q, w_v"):
        apply_adapter(small_bert(), AdapterConfig(method="lora", targets="attn_q"))


def test_hugging_face_names_are_accepted_for_q_k_v():
    model = apply_adapter(small_bert(), AdapterConfig(method="lora", targets="query,value"))
    assert isinstance(model.encoder.layers[0].self_attn.w_q, LoRALinear)
    assert isinstance(model.encoder.layers[0].self_attn.w_v, LoRALinear)


@pytest.mark.parametrize("bad", [dict(r=0), dict(r=-2), dict(alpha=0), dict(dropout=1.0), dict(method="ia3"),
                                 dict(targets=","), dict(prompt_init="text")])
def test_bad_adapter_settings_are_refused(bad):
    with pytest.raises(ValueError):
        AdapterConfig(**bad)


def test_an_adapter_for_another_base_names_the_shape_mismatch(tmp_path):
    model = apply_adapter(small_bert(), AdapterConfig(method="lora", targets="w_q"))
    save_peft(model, tmp_path)
    wider = Bert(BertConfig(vocab_size=V, d_model=48, n_layers=2, n_heads=4, d_ff=64, max_len=40))
    with pytest.raises(ValueError, match=r"lora_A.*shape \(8, 32\) in the adapter, \(8, 48\) in this model"):
        load_peft(wider, tmp_path)


def test_a_corrupt_or_missing_adapter_file_is_named(tmp_path):
    model = apply_adapter(small_bert(), AdapterConfig(method="lora", targets="w_q"))
    save_peft(model, tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="adapter_model.safetensors: not a readable safetensors file"):
        load_peft(small_bert(), tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors: not found"):
        load_peft(small_bert(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json"):
        load_peft(small_bert(), tmp_path)


@pytest.mark.parametrize("cfg", [AdapterConfig(method="lora", r=2, targets="w_q,w_1", train="classifier"),
                                 AdapterConfig(method="qlora", r=2, targets="w_v"),
                                 AdapterConfig(method="prefix", prefix_len=3, prefix_hidden=8),
                                 AdapterConfig(method="prompt", prompt_len=3)])
def test_a_checkpoint_of_an_adapted_model_loads_with_its_adapter(tmp_path, cfg):
    from transformer_lab.runs.checkpoint import load_model, save_checkpoint

    model = apply_adapter(small_bert(n_labels=2), cfg)
    randomize_b(model)
    save_checkpoint(tmp_path / "ckpt", model, {"step": 1})
    loaded = load_model(tmp_path / "ckpt").model.eval()
    assert loaded.adapter_config == cfg
    x = torch.randint(1, V, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).class_logits, model(x).class_logits, atol=0, rtol=0)
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == \
        [n for n, p in model.named_parameters() if p.requires_grad]


def test_lora_on_a_head_tied_to_the_embeddings_is_refused():
    with pytest.raises(ValueError, match="lm_head's weight is the token-embedding table"):
        apply_adapter(small_gpt(), AdapterConfig(method="lora", targets="lm_head"))
