"""INT8 inference of a BERT encoder (default all-MiniLM-L6-v2, else a random BERT-base): our QuantLinear
layers (``compression.linear``, dynamic scheme: per-channel weights, per-token activations, ``torch._int_mm``) against
``torch.ao.quantization.quantize_dynamic`` on the same fp32 model, each timed beside the fp32 model in
the same rounds. The speed is input tokens/s of the eval forward; agreement is the cosine between the
fp32 and the INT8 mean-pooled hidden states (the lowest over the batch). ``--compile``: ours under
``torch.compile`` (it fuses the per-token quantization and the rescale around the integer GEMM), timed
against a compiled fp32 model too, so the speed-up is not the compiler's alone."""

from __future__ import annotations

import copy
import tempfile
import warnings

import torch
import torch.nn.functional as F

from transformer_lab.bench.bert import _bert_folder
from transformer_lab.bench.harness import BenchResult, speed_row, time_rounds
from transformer_lab.compression import QuantConfig, linear_weight_bytes, quantize_model
from transformer_lab.models.hf import load_bert


def bench_int8(model: str | None = None, batch: int = 8, length: int = 128, steps: int = 3,
               rounds: int = 5, compile: bool = False) -> BenchResult:
    with tempfile.TemporaryDirectory() as tmp:
        folder, name = _bert_folder(model, tmp)
        fp32 = load_bert(folder).eval()
    if length > fp32.config.max_len:
        raise ValueError(f"length: {length} exceeds the model's max_len={fp32.config.max_len}")
    ours = quantize_model(copy.deepcopy(fp32), QuantConfig())
    with warnings.catch_warnings():  # torch.ao announces its own deprecation
        warnings.simplefilter("ignore")
        peer = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    torch.manual_seed(0)
    tokens = torch.randint(1000, fp32.config.vocab_size, (batch, length))
    models = {"fp32": fp32, "ours": ours, "peer": peer}
    if compile:
        models.update(ours=torch.compile(ours), fp32_compiled=torch.compile(fp32))
    with torch.no_grad():  # (the first call compiles)
        pooled = {k: m(tokens).hidden.mean(dim=1) for k, m in models.items()}
    cosine = {k: round(float(F.cosine_similarity(pooled["fp32"], pooled[k]).min()), 4) for k in ("ours", "peer")}

    def runner(m):
        def run():
            with torch.no_grad():
                m(tokens)
        return run

    seconds = time_rounds({k: runner(m) for k, m in models.items()}, steps, rounds)

    def pair(a: str, b: str) -> dict[str, float]:  # a against b: tokens/s of each, b's time / a's
        return speed_row(tokens.numel(), {"ours": seconds[a], "peer": seconds[b]})

    row, fp_row, peer_fp_row = pair("ours", "peer"), pair("ours", "fp32"), pair("peer", "fp32")
    result = {"benchmark": "int8", "model": name, "batch": batch, "length": length,
              "unit": "input tokens/s (eval forward, no grad)", **row, "fp32": fp_row["peer"],
              "speedup_over_fp32": {"ours": fp_row["ratio"], "peer": peer_fp_row["ratio"]},
              "min_cosine_to_fp32": cosine,
              "linear_weight_bytes": {"fp32": linear_weight_bytes(fp32), "ours": linear_weight_bytes(ours)},
              "peer_name": "torch.ao.quantization.quantize_dynamic (qint8)", "compiled": compile,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    rows = [("int8 tok/s: ours vs torch.ao", row), ("ours vs fp32", fp_row), ("torch.ao vs fp32", peer_fp_row)]
    if compile:
        c_row = pair("ours", "fp32_compiled")
        result.update(fp32_compiled=c_row["peer"])
        result["speedup_over_fp32"]["ours_over_compiled_fp32"] = c_row["ratio"]
        rows.append(("ours vs compiled fp32", c_row))
    notes = [f"min cosine to fp32 (mean-pooled hidden states): ours {cosine['ours']}, torch.ao {cosine['peer']}"]
    return BenchResult(result, rows, notes=notes)
