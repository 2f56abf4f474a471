"""Prefix and prompt tuning inside our models. The peft comparisons are in test_peft_oracle.py; here:
a BERT prefix against the unmodified model on a longer input (peft cannot run prefixes on
transformers' BERT any more: it has no past keys), folding the reparameterization, generation with the
K/V cache against generation without, and bad input."""

import pytest
import torch

from transformer_lab.adapters import AdapterConfig, apply_adapter, parameter_counts
from transformer_lab.adapters.prefix import PrefixTuning
from transformer_lab.generation.sampling import SamplingConfig, generate
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.gpt import GPT, GPTConfig

V = 60


def small_bert() -> Bert:
    torch.manual_seed(0)
    return Bert(BertConfig(vocab_size=V, d_model=32, n_layers=3, n_heads=4, d_ff=64, max_len=40)).eval()


def small_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, max_len=40, d_model=32, n_heads=4, n_layers=2, d_ff=64)).eval()


def test_bert_prefix_equals_the_plain_model_reading_those_tokens_first():
    """Oracle: the unmodified BERT on [E; x]. Record every layer's keys and values at E's P positions,
    make them the prefix, and run x alone: x's outputs must be the same (positions P.. in both)."""
    model = small_bert()
    p, x = 5, torch.randint(1, V, (1, 9))
    e = torch.randint(1, V, (1, p))
    inputs = {}
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
             for i, layer in enumerate(model.encoder.layers)]
    with torch.no_grad():
        full = model(torch.cat([e, x], dim=1)).hidden
    for h in hooks:
        h.remove()
    prefix = PrefixTuning(3, 4, 8, length=p, hidden=None)
    with torch.no_grad():
        cols = []
        for i, layer in enumerate(model.encoder.layers):
            h = inputs[i][0, :p]  # (P, D): the layer's input at E's positions
            cols += [layer.self_attn.w_k(h), layer.self_attn.w_v(h)]
        prefix.embedding.weight.copy_(torch.cat(cols, dim=1))  # (P, L·2·D)
    model.prefix = prefix
    with torch.no_grad():
        got = model(x).hidden
    torch.testing.assert_close(got, full[:, p:], atol=1e-5, rtol=0)


def test_folding_the_reparameterization_keeps_the_outputs():
    model = apply_adapter(small_bert(), AdapterConfig(method="prefix", prefix_len=4, prefix_hidden=16))
    x = torch.randint(1, V, (2, 7))
    with torch.no_grad():
        before = model(x).hidden
        n_before = parameter_counts(model).trainable
        model.prefix.fold()
        torch.testing.assert_close(model(x).hidden, before, atol=1e-6, rtol=0)
    assert model.prefix.transform is None
    assert n_before == 4 * 32 + (32 * 16 + 16) + (16 * 3 * 2 * 32 + 3 * 2 * 32)  # E, W_1, W_2
    assert parameter_counts(model).trainable == 4 * 3 * 2 * 32


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_gpt_generation_with_the_cache_equals_generation_without(method):
    model = apply_adapter(small_gpt(), AdapterConfig(method=method, prefix_len=4, prompt_len=4, prefix_hidden=0))
    prompts = [[3, 4, 5, 6], [7, 8]]
    cached = generate(model, prompts, SamplingConfig(max_new_tokens=8, greedy=True, stop_at_eos=False))
    plain = generate(model, prompts, SamplingConfig(max_new_tokens=8, greedy=True, stop_at_eos=False,
                                                    use_cache=False))
    assert cached.tokens == plain.tokens
    base = generate(small_gpt(), prompts, SamplingConfig(max_new_tokens=8, greedy=True, stop_at_eos=False))
    assert cached.tokens != base.tokens  # the prefix / prompt changes what the model says


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_virtual_positions_count_against_the_context(method):
    model = apply_adapter(small_gpt(), AdapterConfig(method=method, prefix_len=10, prompt_len=10))
    assert model.context == 30
    model(torch.randint(0, V, (1, 30)))
    with pytest.raises(ValueError, match="prefix or prompt"):
        model(torch.randint(0, V, (1, 31)))


def test_prompt_from_text_repeats_the_text_tokens():
    model = apply_adapter(small_bert(), AdapterConfig(method="prompt", prompt_len=5, prompt_init="text",
                                                      prompt_ids="7,9"))
    table = model.embed.token.weight
    torch.testing.assert_close(model.prompt.embeddings(), table[[7, 9, 7, 9, 7]], atol=0, rtol=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        apply_adapter(small_bert(), AdapterConfig(method="prompt", prompt_init="text", prompt_ids=f"1,{V}"))
