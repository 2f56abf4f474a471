"""GPT against Hugging Face's GPT2LMHeadModel (randomly initialised from a config, no download):
same logits after converting the weights (Conv1D layout), same greedy tokens as HF ``generate``;
and the generation contract (cache, left padding, sampling filters, bad input)."""

import json

import pytest
import torch
import transformers

from transformer_lab.generation.sampling import SamplingConfig, generate, left_pad
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
