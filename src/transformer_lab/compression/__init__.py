"""Quantization: the integer grid, its parameters from calibration, and (later) quantized models.

    quant        the affine map x -> q = clamp(round(x / s) + z, q_min, q_max) and back, written out
    observers    calibration: which range [lo, hi] a tensor's grid covers (min-max, percentile, MSE, KL)

Readable first: every formula is plain PyTorch on fp32 tensors ("fake quantization": quantize, then
dequantize, so the error is visible in the model's own arithmetic). ``torch.ao.quantization``'s
observers and fake-quantize ops are the oracle in the tests.
"""

from transformer_lab.compression.observers import (OBSERVERS, KLObserver, MinMaxObserver, MSEObserver,
                                                  PercentileObserver)
from transformer_lab.compression.quant import QParams, dequantize, fake_quantize, qparams_from_range, quantize

__all__ = ["OBSERVERS", "KLObserver", "MSEObserver", "MinMaxObserver", "PercentileObserver", "QParams", "dequantize",
           "fake_quantize", "qparams_from_range", "quantize"]
