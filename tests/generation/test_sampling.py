"""Generation for decoder-only models (``generation.sampling``): the cache changes speed, not tokens;
a left-padded batch equals each prompt alone; the window slides past the context; rows stop at the
end token; the filters keep what they should; bad settings and prompts are clear errors. GPTs with
learned (GPT-2) and rotary positions, random weights (the HF oracle is in models/test_gpt.py)."""


import pytest
import torch

from transformer_lab.generation.sampling import SamplingConfig, cut_at_eos, filter_logits, generate, next_token
from transformer_lab.models.gpt import GPT, GPTConfig

V = 300


def gpt(position: str = "learned") -> GPT:
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=V, max_len=48, d_model=64, n_heads=4, n_layers=3, d_ff=256, eos_id=V - 1,
                         position=position)).eval()


@pytest.fixture(scope="module", params=["learned", "rotary"])
def ours(request):
    return gpt(request.param)


def test_cached_equals_uncached(ours):
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    for cfg in (SamplingConfig(max_new_tokens=30, greedy=True),
                SamplingConfig(max_new_tokens=30, temperature=0.8, top_k=20, top_p=0.9)):
        a = generate(ours, prompts, cfg, torch.Generator().manual_seed(0), return_logits=True)
        b = generate(ours, prompts, SamplingConfig(**{**cfg.__dict__, "use_cache": False}),
                     torch.Generator().manual_seed(0), return_logits=True)
        assert a.tokens == b.tokens
        assert (a.logits - b.logits).abs().max() <= 1e-5


def test_batched_left_padding_equals_each_prompt_alone(ours):
    prompts = [[5, 6, 7, 8, 9, 20, 21], [10, 11], [12, 13, 14]]
    batch = generate(ours, prompts, SamplingConfig(max_new_tokens=20, greedy=True), return_logits=True)
    for i, p in enumerate(prompts):
        alone = generate(ours, [p], SamplingConfig(max_new_tokens=20, greedy=True), return_logits=True)
        assert alone.tokens[0] == batch.tokens[i]
        n = len(alone.tokens[0])
        assert (alone.logits[0, :n] - batch.logits[i, :n]).abs().max() <= 1e-5


def test_generation_slides_past_the_context(ours):
    """48 positions: 40 prompt + 30 new crosses max_len; the window slides (nanoGPT's crop) and
    the cached and uncached runs still agree."""
    prompt = torch.randint(0, V - 1, (40,)).tolist()
    cfg = SamplingConfig(max_new_tokens=30, greedy=True, stop_at_eos=False)
    a = generate(ours, [prompt], cfg, return_logits=True)
    b = generate(ours, [prompt], SamplingConfig(**{**cfg.__dict__, "use_cache": False}), return_logits=True)
    assert a.tokens == b.tokens and len(a.tokens[0]) == 30
    assert (a.logits - b.logits).abs().max() <= 1e-5


def test_stops_at_eos(ours):
    """A row ends at its first end token (kept); others go on; the loop ends when all have."""
    prompts = [[5, 6, 7], [9, 8]]
    free = generate(ours, prompts, SamplingConfig(max_new_tokens=12, greedy=True, stop_at_eos=False)).tokens
    eos = free[0][3]
    out = generate(ours, prompts, SamplingConfig(max_new_tokens=12, greedy=True, eos_id=eos)).tokens
    for row, full in zip(out, free):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert row == full[:cut]
    assert len(out[0]) <= 4


def test_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    p = logits.softmax(-1)[0]  # [0.636, 0.234, 0.086, 0.032, 0.012]
    keep = ~torch.isinf(filter_logits(logits, top_p=float(p[0] + p[1]) - 1e-4))
    assert keep.tolist() == [[True, True, False, False, False]]
    assert (~torch.isinf(filter_logits(logits, top_p=0.01))).sum() == 1  # the top token always stays
    g = torch.Generator().manual_seed(0)

    draws = torch.stack([next_token(logits, SamplingConfig(top_k=2), g) for _ in range(2000)])
    assert set(draws.flatten().tolist()) == {0, 1}
    frac = (draws == 0).float().mean().item()  # renormalised over the top 2: e^4 / (e^4 + e^3) = 0.731
    assert abs(frac - 0.731) < 0.04


def test_a_tiny_temperature_is_argmax_and_a_huge_one_uniform():
    """Logits divided by 1e-39 overflowed to inf, and softmax(inf - inf) is NaN: `--temperature 1e-39` was a
    traceback ("probability tensor contains either inf, nan or element < 0"), the server a 500. The logits
    are now shifted to a maximum of 0 first: the same distribution, and no overflow at either end."""
    logits = torch.tensor([[4.0, 3.0, 9.0, 1.0], [0.5, 0.2, 0.1, 7.0]])
    g = torch.Generator().manual_seed(0)
    for t in (1e-39, 1e-46, 1e-300):  # (1e-46 is 0 in float32)
        picks = {tuple(next_token(logits, SamplingConfig(temperature=t), g).tolist()) for _ in range(50)}
        assert picks == {(2, 3)}
    draws = torch.stack([next_token(logits, SamplingConfig(temperature=1e30), g) for _ in range(4000)])
    assert all(abs((draws[:, 0] == k).float().mean().item() - 0.25) < 0.04 for k in range(4))


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_sampling_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kw)


def test_bad_prompts(ours):
    with pytest.raises(ValueError, match="max_len=48"):
        generate(ours, [list(range(49))])
    with pytest.raises(ValueError, match="empty prompt"):
        generate(ours, [[1], []])
    with pytest.raises(ValueError, match="out of range"):
        generate(ours, [[V + 5]])




def test_on_step_streams_every_step_and_cut_at_eos():
    model = gpt()
    seen = []
    res = generate(model, [[5, 6], [7]], SamplingConfig(max_new_tokens=6, greedy=True, stop_at_eos=False),
                   on_step=lambda t: seen.append(t.clone()))
    assert len(seen) == 6 and all(t.shape == (2,) for t in seen)
    assert cut_at_eos(seen, None) == res.tokens
    eos = res.tokens[0][2]
    assert cut_at_eos(seen, eos)[0] == res.tokens[0][: res.tokens[0].index(eos) + 1]


def test_a_block_sparse_model_generates_each_prompt_length_as_it_would_alone():
    """Under block:B a left-padded row would see other keys than alone (the blocks follow the columns; a
    review measured 0.03 in the logits): generate refuses prompts of several lengths, and lm.sample runs
    one call per length, so every prompt's continuation is the one it gets alone."""
    from transformer_lab.tasks.lm import sample
    from transformer_lab.tokenizers.char import CharTokenizer

    tok = CharTokenizer.train("abcdefghij klmnop")
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=48, d_model=32, n_heads=2, n_layers=2, d_ff=64,
                          attention="block:4,random:1")).eval()
    with torch.no_grad():  # sharper than at initialisation, so the keys a row sees change its greedy tokens
        for p in model.parameters():
            p.mul_(4 if p.dim() > 1 else 1)
    cfg = SamplingConfig(max_new_tokens=12, greedy=True, stop_at_eos=False)
    with pytest.raises(ValueError, match="block-sparse pattern"):
        generate(model, [[1, 2, 3], [1, 2, 3, 4, 5, 6]], cfg)
    prompts = ["abc def", "ab", "abc dee", "klmnop abc"]
    pieces, steps = [], []
    together = sample(model, tok, prompts, cfg, on_text=pieces.append, on_step=lambda: steps.append(1)).texts
    assert together == [sample(model, tok, [p], cfg).texts[0] for p in prompts]
    # the stream is the first sample alone, and progress counts max_new_tokens steps over the groups' calls
    assert "".join(pieces) == together[0] and len(steps) == cfg.max_new_tokens
