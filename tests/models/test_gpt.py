"""GPT against Hugging Face's GPT2LMHeadModel (randomly initialised from a config, no download):
same logits after converting the weights (Conv1D layout), same greedy tokens as HF ``generate``;
and the generation contract (cache, left padding, sampling filters, bad input)."""

import json

import pytest
import torch
import transformers

from transformer_lab.generation.sampling import SamplingConfig, filter_logits, generate, left_pad
from transformer_lab.models.gpt import GPT, GPTConfig, positions_from_mask
from transformer_lab.models.hf import gpt_from_hf, gpt_from_hf_state
from transformer_lab.nn.attention import MultiHeadAttention
from transformer_lab.nn.feedforward import PositionwiseFeedForward
from transformer_lab.nn.layers import EncoderLayer, SublayerConnection

V = 300


@pytest.fixture(scope="module")
def hf_gpt2():
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=48, n_embd=64, n_layer=3, n_head=4,
                                  bos_token_id=V - 1, eos_token_id=V - 1)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def ours(hf_gpt2):
    return gpt_from_hf(hf_gpt2).eval()


def test_logits_equal_hf_gpt2(hf_gpt2, ours):
    x = torch.randint(0, V, (3, 40))
    with torch.no_grad():
        assert (hf_gpt2(x).logits - ours(x)).abs().max() <= 1e-5


def test_left_padded_logits_equal_hf_gpt2(hf_gpt2, ours):
    """HF with attention_mask and position_ids from the mask (what its generate does) == ours."""
    tokens, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]])
    pos = positions_from_mask(mask)
    with torch.no_grad():
        ref = hf_gpt2(tokens, attention_mask=mask.long(), position_ids=pos).logits
        got = ours(tokens, mask)
    assert (ref - got)[mask].abs().max() <= 1e-5  # real positions (HF fills padded rows differently)


def test_reference_and_fast_attention_paths_agree(hf_gpt2):
    fast = gpt_from_hf(hf_gpt2).eval()
    slow = GPT(GPTConfig(**{**fast.config.__dict__, "attention_impl": "reference"})).eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randint(0, V, (2, 30))
    with torch.no_grad():
        assert (fast(x) - slow(x)).abs().max() <= 1e-5


def test_greedy_generation_equals_hf_generate(hf_gpt2, ours):
    for prompt in ([5, 6, 7, 8, 9], [11], [3, 1, 4, 1, 5, 9, 2, 6]):
        ref = hf_gpt2.generate(torch.tensor([prompt]), max_new_tokens=25, do_sample=False, pad_token_id=0)
        got = generate(ours, [prompt], SamplingConfig(max_new_tokens=25, greedy=True, eos_id=V - 1))
        assert got.tokens[0] == ref[0, len(prompt):].tolist()


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
    from transformer_lab.generation.sampling import next_token
    draws = torch.stack([next_token(logits, SamplingConfig(top_k=2), g) for _ in range(2000)])
    assert set(draws.flatten().tolist()) == {0, 1}
    frac = (draws == 0).float().mean().item()  # renormalised over the top 2: e^4 / (e^4 + e^3) = 0.731
    assert abs(frac - 0.731) < 0.04


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
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


def test_missing_and_mismatched_tensors_are_listed(hf_gpt2):
    state = dict(hf_gpt2.state_dict())
    del state["transformer.h.1.attn.c_proj.weight"]
    with pytest.raises(ValueError, match=r"h\.1\.attn\.c_proj\.weight"):
        gpt_from_hf_state(state, gpt_from_hf(hf_gpt2).config)
    from transformer_lab.models.hf import load_state_checked
    m = GPT(GPTConfig(vocab_size=V, max_len=48, d_model=64, n_heads=4, n_layers=3, d_ff=256))
    good = gpt_from_hf_state(dict(hf_gpt2.state_dict()), m.config)
    good["blocks.layers.0.ffn.w_1.weight"] = torch.zeros(10, 64)
    del good["blocks.norm.bias"]
    with pytest.raises(ValueError, match=r"missing 1 tensors: blocks\.norm\.bias \(64,\).*ffn\.w_1\.weight: file \(10, 64\), model \(256, 64\)"):
        load_state_checked(m, good, "test")


def test_blocks_reuse_the_encoder_decoder_parts(ours):
    """One implementation: GPT's blocks are nn.layers.EncoderLayer with the shared attention, FFN
    and residual/LayerNorm modules, pre-LN."""
    for layer in ours.blocks.layers:
        assert type(layer) is EncoderLayer
        assert type(layer.self_attn) is MultiHeadAttention and type(layer.ffn) is PositionwiseFeedForward
        assert all(type(s) is SublayerConnection and s.norm_first for s in layer.sublayers)


def test_generate_cli_reads_a_hugging_face_gpt2_folder(tmp_path, hf_gpt2, capsys):
    """`generate --checkpoint` on a folder written by GPT2LMHeadModel.save_pretrained (with a
    tokenizer.json beside it): the same greedy tokens as HF generate."""
    from transformer_lab.cli.main import main
    from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer

    lines = [f"the cat {i} sat on the mat {i * 7} and the dog sat on the log {i * 13}\n" for i in range(300)]
    tok = ByteLevelBPETokenizer.train(lines, V)
    assert tok.vocab_size == V  # every id the model can produce decodes
    hf_gpt2.save_pretrained(tmp_path / "gpt2")
    tok.to_hf().save(str(tmp_path / "gpt2" / "tokenizer.json"))
    ids = tok.encode("the cat sat")
    ref = hf_gpt2.generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert main(["generate", "--checkpoint", str(tmp_path / "gpt2"), "--prompt", "the cat sat", "--max-new-tokens", "8",
                 "--greedy", "--json"]) == 0
    sample = json.loads(capsys.readouterr().out)["samples"][0]
    new = ref[0, len(ids):].tolist()
    if V - 1 in new:  # HF stops at its end token; so do we
        new = new[: new.index(V - 1) + 1]
    assert sample["text"] == tok.decode(new)
