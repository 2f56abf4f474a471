"""INT8 Linear layers: the integer path (torch._int_mm) against the readable fp32 path of the same
formulas, both against the fp32 layer within the grid's error, and which layers a model converts."""

import pytest
import torch

from transformer_lab.compression.int8 import Int8Linear, quantize_linears
from transformer_lab.compression.observers import MSEObserver
from transformer_lab.models.transformer import Transformer, TransformerConfig


@pytest.mark.parametrize("shape", [(8, 16, 48), (1, 48), (3, 5, 48)])
def test_the_integer_path_equals_the_reference_path(shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80)
    x = torch.randn(*shape) * 2
    with torch.no_grad():
        fast, slow, exact = Int8Linear(linear, "int")(x), Int8Linear(linear, "reference")(x), linear(x)
    assert fast.shape == exact.shape
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)  # the same numbers, summed in int32 vs fp32
    assert float((fast - exact).norm() / exact.norm()) < 0.02  # 8-bit grids on both operands


def test_a_weight_observer_sets_the_weight_grid():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16)
    with torch.no_grad():
        linear.weight[0, 0] = 40.0  # one outlier in row 0
    plain, clipped = Int8Linear(linear), Int8Linear(linear, weight_observer=MSEObserver(bits=8, symmetric=True, axis=0))
    assert float(clipped.scale[0]) <= float(plain.scale[0])
    torch.testing.assert_close(clipped.scale[1:], plain.scale[1:], rtol=0.2, atol=0)


def test_quantize_linears_converts_every_linear_but_the_tied_projection():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, d_ff=64,
                                          n_encoder_layers=1, n_decoder_layers=1, dropout=0.0)).eval()
    src, tgt = torch.randint(4, 50, (2, 7)), torch.randint(4, 50, (2, 5))
    with torch.no_grad():
        want = model(src, tgt)
        quantize_linears(model, skip=("decoder.layers.0.ffn",))
        got = model(src, tgt)
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    assert kinds["encoder.layers.0.self_attn.w_q"] == "Int8Linear" and kinds["generator.proj"] == "Linear"
    assert kinds["decoder.layers.0.ffn.w_1"] == "Linear"  # skipped
    assert float((got.exp() - want.exp()).abs().max()) < 0.05


def test_bad_input_is_refused():
    layer = Int8Linear(torch.nn.Linear(8, 4))
    with pytest.raises(ValueError, match="last dimension 6"):
        layer(torch.randn(2, 6))
    with pytest.raises(ValueError, match="impl"):
        Int8Linear(torch.nn.Linear(8, 4), impl="fast")
    with pytest.raises(ValueError, match="per output channel"):
        Int8Linear(torch.nn.Linear(8, 4), weight_observer=MSEObserver(axis=None))


def test_bench_int8_json_has_ours_peer_ratio_and_agreement(capsys):
    import json

    from transformer_lab.cli.main import main

    assert main(["bench", "int8", "--batch", "2", "--length", "16", "--steps", "1", "--rounds", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"ours", "peer", "ratio", "fp32", "speedup_over_fp32"} <= set(r)
    assert r["min_cosine_to_fp32"]["ours"] > 0.95  # per-channel weights, per-token activations
    assert r["linear_weight_bytes"]["fp32"] > 3.5 * r["linear_weight_bytes"]["ours"]


@pytest.mark.slow  # two models compile (~30 s)
def test_bench_int8_compiled(capsys):
    import json

    from transformer_lab.cli.main import main

    assert main(["bench", "int8", "--batch", "2", "--length", "16", "--steps", "1", "--rounds", "1", "--compile",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["compiled"] and "ours_over_compiled_fp32" in r["speedup_over_fp32"]
    assert r["min_cosine_to_fp32"]["ours"] > 0.95
