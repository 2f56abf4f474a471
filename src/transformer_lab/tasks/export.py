"""`transformer-lab export onnx`: a model (our checkpoint, or a Hugging Face BERT / GPT-2 folder) as
ONNX graphs beside its tokenizer files, checked against PyTorch with onnxruntime before it is kept.

    OUT/model.onnx                       BERT, GPT (with past_* / present_* KV-cache tensors)
    OUT/encoder.onnx, OUT/decoder.onnx   translation (``export.onnx`` documents the inputs and outputs)
    OUT/model.int8.onnx ...              with ``int8``: onnxruntime's dynamic INT8 quantization of each graph
    OUT/export.json                      kind, files, the special ids and cache shapes a runtime needs,
                                         and the measured largest difference from PyTorch
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transformer_lab.export import MAX_OPSET, MIN_OPSET, OnnxSeq2SeqStep, bert_inputs, export_model, gpt_inputs, onnx_session
from transformer_lab.files import replace_folder
from transformer_lab.generation.search import Seq2SeqStep
from transformer_lab.models.bert import Bert
from transformer_lab.models.gpt import GPT
from transformer_lab.models.transformer import Transformer
from transformer_lab.tasks.quantize import check_output, load_source, refuse_peft_run

TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted on the check inputs


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str
    out: str
    opset: int = 17
    int8: bool = False  # also write onnxruntime's dynamic INT8 version of each graph
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ValueError(f"opset: expected {MIN_OPSET}..{MAX_OPSET} (14: the causal mask's tril; {MAX_OPSET}: the "
                             f"newest PyTorch's TorchScript exporter writes), got {self.opset}")


def max_difference(model: nn.Module, files: list[Path], seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| over outputs on random inputs of two shapes (padding included;
    for decoders also a second, cached step)."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0

    def diff(a, b) -> float:
        return float(np.abs(np.asarray(a) - b.detach().numpy()).max())

    with torch.no_grad():
        if isinstance(model, Bert):
            s = onnx_session(files[0])
            for b, t in ((1, 5), (3, 17)):
                ids = torch.randint(0, model.config.vocab_size, (b, t), generator=g)
                mask = torch.ones_like(ids)
                mask[0, t // 2 + 1:] = 0
                got = s.run(None, bert_inputs(ids, mask))
                out = model(ids, attention_mask=mask)
                worst = max(worst, diff(got[0], out.hidden), diff(got[1], out.pooled))
        elif isinstance(model, GPT):
            s = onnx_session(files[0])
            ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=g)
            first = s.run(None, gpt_inputs(model, ids[:, :5].numpy()))
            second = s.run(None, gpt_inputs(model, ids[:, 5:].numpy(), first[1:]))
            want = model(ids)
            worst = max(diff(first[0], want[:, :5]), diff(second[0], want[:, 5:]))
        else:
            src = torch.randint(4, model.config.src_vocab_size, (2, 9), generator=g)
            src[1, 6:] = model.config.pad_id
            ours, theirs = Seq2SeqStep(model, src), OnnxSeq2SeqStep(onnx_session(files[0]), onnx_session(files[1]), src,
                                                                    model.config.pad_id)
            prefix = torch.full((2, 1), 1)
            for _ in range(3):
                a, b = ours(prefix), theirs(prefix)
                finite = torch.isfinite(a)
                worst = max(worst, float((a[finite] - b[finite]).abs().max()))
                prefix = torch.cat([prefix, a.argmax(-1, keepdim=True)], dim=1)
    return worst


def quantize_onnx(path: Path) -> Path:
    """onnxruntime's dynamic INT8 quantization (``quantize_dynamic``: int8 weights, activations per
    tensor at run time) of one graph, written beside it as NAME.int8.onnx."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(path.stem + ".int8.onnx")
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its per-tensor notes (INFO) and advice (WARNING)
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    finally:
        root.level = level
    return out


def _describe(model: nn.Module) -> dict[str, Any]:
    c = model.config
    if isinstance(model, Transformer):
        return {"kind": "translation", "pad_id": c.pad_id, "n_decoder_layers": c.n_decoder_layers, "n_heads": c.n_heads,
                "d_head": c.d_model // c.n_heads, "max_len": c.max_len}
    if isinstance(model, GPT):
        return {"kind": "gpt", "n_layers": c.n_layers, "n_heads": c.n_heads, "d_head": c.d_model // c.n_heads,
                "max_len": c.max_len, "eos_id": c.eos_id}
    return {"kind": "bert", "max_len": c.max_len, "pad_id": c.pad_id, "n_labels": c.n_labels}


def run(cfg: ExportConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    check_output(out, cfg.checkpoint, cfg.overwrite, earlier=lambda p: (p / "export.json").is_file(), what="export")
    source = load_source(cfg.checkpoint)
    refuse_peft_run(source, "export")
    model = source.model.eval()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = export_model(model, tmp, cfg.opset)
        worst = max_difference(model, files)
        if worst > TOLERANCE:
            raise ValueError(f"onnxruntime's outputs differ from PyTorch's by {worst:.2e} (> {TOLERANCE}); the export "
                             "is not kept")
        quantized = [quantize_onnx(f) for f in files] if cfg.int8 else []
        for p in source.tokenizer_files:
            (shutil.copytree if p.is_dir() else shutil.copyfile)(p, tmp / p.name)
        summary = {**_describe(model), "source": str(source.folder), "files": [f.name for f in files],
                   "int8_files": [f.name for f in quantized], "opset": cfg.opset, "max_abs_difference": worst,
                   "bytes": {f.name: f.stat().st_size for f in (*files, *quantized)}}
        (tmp / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
