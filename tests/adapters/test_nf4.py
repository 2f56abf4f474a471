"""NF4 (QLoRA's 4-bit NormalFloat) against the published code values and bitsandbytes' CPU kernels;
its error bound (round to nearest: at most half the widest gap between code values, times the block's
absmax), the paper's reason for it (normal weights lose less than with evenly spaced 4-bit levels),
the memory of the packed form, and QLoRA = LoRA on an NF4 base."""

import pytest
import torch
from torch import nn

from conftest import require
from transformer_lab.adapters import AdapterConfig, apply_adapter, merge_lora, parameter_counts
from transformer_lab.adapters.lora import LoRALinear
from transformer_lab.adapters.nf4 import DYNAMIC, NF4, NF4Linear, block_absmax, dequantize_nf4, quantize_nf4
from transformer_lab.models.gpt import GPT, GPTConfig

# QLoRA, Appendix E (and bitsandbytes' NF4 table): the 16 values of NF4.
PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_code_values_equal_the_published_table():
    torch.testing.assert_close(NF4, torch.tensor(PUBLISHED), atol=2e-7, rtol=0)


@pytest.mark.parametrize("shape", [(64, 128), (7, 33), (1000,)])
def test_error_is_within_half_the_widest_gap_times_the_block_absmax(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.05
    q = quantize_nf4(w, double_quant=False)
    err = (dequantize_nf4(q) - w).abs().reshape(-1)
    bound = (NF4.diff().max() / 2) * block_absmax(q).repeat_interleave(64)[: w.numel()]
    assert bool((err <= bound + 1e-7).all())
    assert q.packed.numel() == -(-w.numel() // 64) * 32  # two codes per byte, padded to whole blocks


def test_double_quantization_changes_the_block_constants_by_under_one_percent():
    w = torch.randn(512, 512, generator=torch.Generator().manual_seed(1)) * 0.02
    single, double = quantize_nf4(w, double_quant=False), quantize_nf4(w, double_quant=True)
    assert torch.equal(single.packed, double.packed)
    rel = ((block_absmax(double) - single.absmax).abs() / single.absmax).max()
    assert rel < 0.01
    assert double.nbytes() < single.nbytes()


def test_normal_weights_lose_less_in_nf4_than_with_evenly_spaced_levels():
    """The paper's argument for NF4 (§3): information-theoretically optimal for normal data. Against
    the same blockwise absmax with 16 evenly spaced levels in [-1, 1]."""
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(2))
    nf4 = (dequantize_nf4(quantize_nf4(w, double_quant=False)) - w).pow(2).mean()
    blocks = w.reshape(-1, 64)
    c = blocks.abs().amax(1, keepdim=True)
    levels = torch.linspace(-1, 1, 16)
    even = levels[((blocks / c)[..., None] - levels).abs().argmin(-1)] * c
    assert nf4 < 0.9 * (even - blocks).pow(2).mean()  # measured: 0.84 of it


def test_packed_weights_take_under_a_fifth_of_fp32():
    lin = nn.Linear(384, 1536)
    q = NF4Linear(lin)
    assert q.weight_bytes() / (lin.weight.numel() * 4) < 0.20
    x = torch.randn(3, 384)
    torch.testing.assert_close(q(x), nn.functional.linear(x, q.dequantized_weight(), lin.bias), atol=1e-6, rtol=0)


def test_our_packed_blocks_decode_as_bitsandbytes_does():
    bnb = require("bitsandbytes")
    import bitsandbytes.functional as F

    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(3))
    theirs, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = quantize_nf4(w, double_quant=False)
    assert torch.equal(ours.packed, theirs.reshape(-1))  # same codes, same nibble order
    torch.testing.assert_close(ours.absmax, state.absmax, atol=0, rtol=0)
    torch.testing.assert_close(dequantize_nf4(ours), F.dequantize_4bit(theirs, state), atol=1e-6, rtol=0)
    assert bnb.__version__


def test_double_quantized_blocks_decode_as_bitsandbytes_does():
    require("bitsandbytes")
    import bitsandbytes.functional as F

    torch.testing.assert_close(DYNAMIC, F.create_dynamic_map(signed=True), atol=0, rtol=0)
    w = torch.randn(300, 256, generator=torch.Generator().manual_seed(4)) * 0.03  # 1200 blocks: 5 groups of 256
    theirs, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = quantize_nf4(w, double_quant=True)
    assert torch.equal(ours.packed, theirs.reshape(-1))
    torch.testing.assert_close(ours.absmax_scale, state.state2.absmax, atol=0, rtol=0)
    # The 8-bit codes of the block constants: bitsandbytes' CPU search picks the farther of two codes
    # for a value within ~1e-5 of their midpoint (2 of these 1200); ours is the nearest.
    assert (ours.absmax_code != state.absmax).sum() <= 3
    # Our blocks, in bitsandbytes' own QuantState, decode to our values.
    state.absmax, state.offset = ours.absmax_code, ours.absmax_offset
    torch.testing.assert_close(F.dequantize_4bit(ours.packed.view_as(theirs), state), dequantize_nf4(ours),
                               atol=1e-6, rtol=0)


def test_qlora_is_lora_on_an_nf4_base():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, max_len=32, d_model=64, n_heads=4, n_layers=2, d_ff=128, dropout=0.0,
                          attention_dropout=0.0))
    apply_adapter(model, AdapterConfig(method="qlora", r=4, targets="w_q,w_v"))
    layer = model.blocks.layers[0]
    assert isinstance(layer.self_attn.w_q, LoRALinear) and isinstance(layer.self_attn.w_q.base, NF4Linear)
    assert isinstance(layer.ffn.w_1, NF4Linear)  # every frozen Linear is NF4 ...
    assert type(model.lm_head) is nn.Linear  # ... except the LM head, which is the embedding table
    x = torch.randint(0, 40, (2, 10))
    model(x).sum().backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert grads and all(".lora_" in n for n in grads)
    counts = parameter_counts(model)
    assert counts.trainable == 2 * 2 * 4 * (64 + 64)
    with torch.no_grad():
        nn.init.normal_(layer.self_attn.w_q.lora_B.weight)
        before = model(x)
        merged = merge_lora(model)  # dequantized, then merged: full precision
        assert not any(isinstance(m, (NF4Linear, LoRALinear)) for m in merged.modules())
        torch.testing.assert_close(merged(x), before, atol=1e-4, rtol=1e-4)


def test_merging_into_a_quantized_weight_in_place_is_refused():
    lora = LoRALinear(NF4Linear(nn.Linear(64, 64)), r=2, alpha=4)
    with pytest.raises(ValueError, match="dequantize it first"):
        lora.merge()
