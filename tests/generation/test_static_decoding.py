"""Static K/V cache decoding (generation/static_decoding.py) against the growing cache (the eager path
every other test holds to transformers' GPT-2): the same greedy tokens and step logits, left padding and
running past the context included; compiled, one graph for every one-token step."""

import pytest
import torch

from transformer_lab.generation.sampling import SamplingConfig, generate
from transformer_lab.generation.static_decoding import StaticDecoder
from transformer_lab.models.gpt import GPT, GPTConfig


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, max_len=24, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0,
               attention_dropout=0.0, eos_id=3)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9]]  # left-padded to 5


def assert_static_equals_growing(model: GPT, new_tokens: int) -> None:
    kw = dict(max_new_tokens=new_tokens, greedy=True, stop_at_eos=False)
    grow = generate(model, PROMPTS, SamplingConfig(**kw), return_logits=True)
    static = generate(model, PROMPTS, SamplingConfig(**kw, static_cache=True), return_logits=True)
    assert static.tokens == grow.tokens
    torch.testing.assert_close(static.logits, grow.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rotary", "sinusoidal"])
def test_static_cache_gives_the_growing_caches_tokens_and_logits(position):
    # 30 new tokens after a 5-token prompt run past max_len=24: the window then slides without a cache
    assert_static_equals_growing(small_gpt(position=position), 30)


def test_the_buffers_take_what_the_generation_needs_rounded_up():
    model = small_gpt(max_len=300)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert StaticDecoder(model, mask, length=5 + 20).slots == 128  # not the whole context of 300
    assert StaticDecoder(model, mask, length=5 + 200).slots == 256
    assert StaticDecoder(model, mask, length=5 + 900).slots == 300 and StaticDecoder(model, mask).slots == 300
    assert_static_equals_growing(model, 20)


def test_static_cache_stops_rows_at_eos_like_the_growing_cache():
    model = small_gpt()
    cfg = dict(max_new_tokens=12, temperature=1.5)
    outs = []
    for static in (False, True):
        g = torch.Generator().manual_seed(4)
        outs.append(generate(model, PROMPTS, SamplingConfig(**cfg, eos_id=7, static_cache=static), g).tokens)
    assert outs[0] == outs[1]


def test_compiled_static_step_is_one_graph_and_gives_the_eager_tokens():
    from torch._dynamo.utils import counters

    model = small_gpt(max_len=40)
    kw = dict(max_new_tokens=20, greedy=True, stop_at_eos=False)
    torch._dynamo.reset()
    counters.clear()
    compiled = generate(model, PROMPTS, SamplingConfig(**kw, compile=True), return_logits=True)
    assert counters["stats"]["unique_graphs"] == 1  # every one-token step, one graph (the prompt runs eager)
    eager = generate(model, PROMPTS, SamplingConfig(**kw), return_logits=True)
    assert compiled.tokens == eager.tokens
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw, named", [
    (dict(position="alibi"), "position 'alibi'"),
    (dict(attention="window:4"), "attention pattern 'window:4'"),
])
def test_models_the_static_cache_cannot_serve_are_named(kw, named):
    model = small_gpt(**kw)
    with pytest.raises(ValueError, match=named):
        generate(model, PROMPTS, SamplingConfig(max_new_tokens=2, static_cache=True))
    with pytest.raises(ValueError, match="use_cache"):
        SamplingConfig(compile=True, use_cache=False)
    with pytest.raises(ValueError, match="max_len=24"):
        StaticDecoder(small_gpt(), torch.ones(1, 30, dtype=torch.bool))


def test_prompt_ids_are_checked_and_autocast_sets_the_buffers_dtype():
    with pytest.raises(ValueError, match="out of range"):  # as the growing cache's GPT.forward says it
        generate(small_gpt(), [[1, 50]], SamplingConfig(max_new_tokens=2, static_cache=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decoder = StaticDecoder(small_gpt(), torch.ones(1, 3, dtype=torch.bool))
    assert decoder.caches[0].k.dtype == torch.bfloat16
