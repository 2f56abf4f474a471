"""Quantization: the integer grid, its parameters from calibration, quantized layers and models.

    quant        the affine map x -> q = clamp(round(x / s) + z, q_min, q_max) and back, written out
    observers    calibration: which range [lo, hi] a tensor's grid covers (min-max, percentile, MSE, KL)
    linear       QuantLinear: int8/int4 weights; dynamic, static or weight-only; integer and fp32 paths
    model        QuantConfig and quantize_model: which layers, calibrated how (SmoothQuant as an option)
    pruning      structured pruning: whole FFN neurons (prune_ffn) or whole layers (keep_layers)

Readable first: every formula is plain PyTorch on fp32 tensors ("fake quantization": quantize, then
dequantize, so the error is visible in the model's own arithmetic); the integer path is tested equal
to it. ``torch.ao.quantization``'s observers and fake-quantize ops and onnxruntime's calibrators are
the oracles in the tests.
"""

from transformer_lab.compression.linear import QuantEmbedding, QuantLinear
from transformer_lab.compression.model import (QuantConfig, linear_weight_bytes, model_bytes, quantize_model,
                                               quantized_shell, set_impl)
from transformer_lab.compression.observers import (OBSERVERS, KLObserver, MinMaxObserver, MSEObserver,
                                                  PercentileObserver)
from transformer_lab.compression.pruning import ffn_neuron_scores, keep_layers, prune_ffn
from transformer_lab.compression.quant import QParams, dequantize, fake_quantize, qparams_from_range, quantize

__all__ = ["OBSERVERS", "KLObserver", "MSEObserver", "MinMaxObserver", "PercentileObserver", "QParams", "QuantConfig",
           "QuantEmbedding", "QuantLinear", "dequantize", "fake_quantize", "ffn_neuron_scores", "keep_layers", "linear_weight_bytes", "model_bytes", "prune_ffn", "qparams_from_range",
           "quantize", "quantize_model", "quantized_shell", "set_impl"]
