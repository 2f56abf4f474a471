"""ONNX export of our three model families, with the KV cache as explicit graph inputs and outputs.

An ONNX graph is a pure function, so a decoder's cache becomes tensors: each step takes the past
keys and values of every self-attention layer, ``past_key_i`` / ``past_value_i`` (B, H, P, Dh), and
returns them grown by the new positions as ``present_key_i`` / ``present_value_i``; a first step
passes P = 0. The translation model is two graphs: ``encoder.onnx`` (source -> memory, and each
decoder layer's cross-attention K/V, computed once per sentence) and ``decoder.onnx`` (one step).

    BERT         input_ids, attention_mask, token_type_ids -> last_hidden_state, pooler_output[, logits]
    GPT          input_ids, past_* -> logits (B, T, V), present_*
    translation  encoder: src -> memory, cross_key_i, cross_value_i
                 decoder: tgt (B, T), src (B, S) (its padding), cross_*, past_* -> log_probs (B, T, V), present_*

Exported with PyTorch's TorchScript-based exporter (``dynamo=False``): it traces one call, so the
Python-side checks (token ranges, shapes) run at export time only; batch, sequence and past lengths
are dynamic axes. ``tests/export`` holds onnxruntime's outputs to PyTorch's within 1e-4.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transformer_lab.compression import QuantLinear
from transformer_lab.models.bert import Bert
from transformer_lab.models.gpt import GPT
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.kv_cache import AttentionCache, DecoderCache

OPSET = 17
# The opsets our graphs export at: from 14 (the causal mask's tril) to the TorchScript exporter's newest.
MIN_OPSET = 14
MAX_OPSET = getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)


def _check_exportable(model: nn.Module) -> None:
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("model: quantized with our integer kernels, which ONNX has no operator for; export the fp32 "
                         "checkpoint (export onnx --int8 quantizes the ONNX graph with onnxruntime)")
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError("model: carries an adapter; merge a LoRA adapter first (transformer-lab peft merge); prefix "
                         "and prompt adapters are not exported")
    pattern = getattr(getattr(model, "config", None), "attention", "full")
    if pattern != "full":
        raise ValueError(f"model: its self-attention pattern ({pattern!r}) runs as a loop over blocks whose count "
                         "depends on the length, which a traced ONNX graph would fix; not exported")


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]], opset: int) -> Path:
    was_training = [m.training for m in module.modules()]
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-side checks turned into constants
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    finally:
        for m, mode in zip(module.modules(), was_training):
            m.training = mode
    return path


def _cache_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(n) for kind in ("key", "value")]


def _empty_past(n_layers: int, b: int, heads: int, d_head: int, length: int = 0) -> list[Tensor]:
    return [torch.zeros(b, heads, length, d_head) for _ in range(2 * n_layers)]


# --- BERT -----------------------------------------------------------------------------------------
class _BertGraph(nn.Module):
    def __init__(self, model: Bert):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor):
        out = self.model(input_ids, token_type_ids, attention_mask=attention_mask)
        return (out.hidden, out.pooled) if out.class_logits is None else (out.hidden, out.pooled, out.class_logits)


def bert_inputs(input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, np.ndarray]:
    """The feed of the BERT graph: ids (B, S), the mask (True / 1 = real token; default all), segment 0."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    return {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy(),
            "token_type_ids": torch.zeros_like(input_ids).numpy()}


def export_bert(model: Bert, path: str | Path, opset: int = OPSET) -> Path:
    _check_exportable(model)
    b, s = 2, 8
    ids = torch.randint(0, model.config.vocab_size, (b, s))
    mask, seg = torch.ones_like(ids), torch.zeros_like(ids)
    outputs = ["last_hidden_state", "pooler_output"] + (["logits"] if model.classifier is not None else [])
    bs = {0: "batch", 1: "sequence"}
    axes = {"input_ids": bs, "attention_mask": bs, "token_type_ids": bs, "last_hidden_state": bs,
            "pooler_output": {0: "batch"}, "logits": {0: "batch"}}
    return _export(_BertGraph(model), (ids, mask, seg), Path(path), ["input_ids", "attention_mask", "token_type_ids"],
                   outputs, {k: v for k, v in axes.items() if k in outputs or k.endswith(("ids", "mask"))}, opset)


# --- GPT ------------------------------------------------------------------------------------------
class _GPTGraph(nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, *past: Tensor):
        cache = [AttentionCache(k=past[2 * i], v=past[2 * i + 1]) for i in range(len(past) // 2)]
        logits = self.model(input_ids, cache=cache)
        return (logits, *[t for c in cache for t in (c.k, c.v)])


def _gpt_shape(model: GPT) -> tuple[int, int, int]:
    c = model.config
    return c.n_layers, c.n_heads, c.d_model // c.n_heads


def gpt_inputs(model_or_shape: GPT | tuple[int, int, int], input_ids: np.ndarray, past: list[np.ndarray] | None = None
               ) -> dict[str, np.ndarray]:
    """The feed of one GPT step: ``past`` None = the first step (an empty cache)."""
    n, h, dh = _gpt_shape(model_or_shape) if isinstance(model_or_shape, GPT) else model_or_shape
    if past is None:
        past = [np.zeros((input_ids.shape[0], h, 0, dh), np.float32)] * (2 * n)
    return {"input_ids": input_ids, **dict(zip(_cache_names("past", n), past))}


def export_gpt(model: GPT, path: str | Path, opset: int = OPSET) -> Path:
    _check_exportable(model)
    n, h, dh = _gpt_shape(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 3))
    past = _empty_past(n, 2, h, dh, length=4)  # traced with a non-empty past: the concatenation is in the graph
    past_names, present_names = _cache_names("past", n), _cache_names("present", n)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"},
            **{k: {0: "batch", 2: "past"} for k in past_names}, **{k: {0: "batch", 2: "total"} for k in present_names}}
    return _export(_GPTGraph(model), (ids, *past), Path(path), ["input_ids", *past_names], ["logits", *present_names],
                   axes, opset)


# --- translation ----------------------------------------------------------------------------------
class _EncoderGraph(nn.Module):
    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor):
        memory = self.model.encode(src)
        cross = []
        for layer in self.model.decoder.layers:
            att = layer.cross_attn
            cross += [att._split(att.w_k(memory)), att._split(att.w_v(memory))]
        return (memory, *cross)


class _DecoderGraph(nn.Module):
    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, tgt: Tensor, src: Tensor, *caches: Tensor):
        n = self.model.config.n_decoder_layers
        cross, past = caches[: 2 * n], caches[2 * n:]
        cache = DecoderCache([AttentionCache(k=past[2 * i], v=past[2 * i + 1]) for i in range(n)],
                             [AttentionCache(static=True, k=cross[2 * i], v=cross[2 * i + 1]) for i in range(n)])
        b, s, d = src.size(0), src.size(1), self.model.config.d_model
        memory = cross[0].new_zeros(b, s, d)  # unused: every layer's cross-attention K/V come from the cache
        h = self.model.decode(memory, src, tgt, cache=cache)
        return (self.model.generator(h), *[t for c in cache.self_attn for t in (c.k, c.v)])


def _translation_shape(model: Transformer) -> tuple[int, int, int]:
    c = model.config
    return c.n_decoder_layers, c.n_heads, c.d_model // c.n_heads


def export_translation(model: Transformer, folder: str | Path, opset: int = OPSET) -> tuple[Path, Path]:
    _check_exportable(model)
    if model.prompt is not None or model.prefix is not None:
        raise ValueError("model: prefix and prompt adapters are not exported")
    folder = Path(folder)
    n, h, dh = _translation_shape(model)
    c = model.config
    src = torch.randint(4, c.src_vocab_size, (2, 6))
    names = _cache_names("cross", n)
    enc = _export(_EncoderGraph(model), (src,), folder / "encoder.onnx", ["src"], ["memory", *names],
                  {"src": {0: "batch", 1: "source"}, "memory": {0: "batch", 1: "source"},
                   **{k: {0: "batch", 2: "source"} for k in names}}, opset)
    with torch.no_grad():
        cross = list(_EncoderGraph(model).eval()(src)[1:])
    tgt = torch.randint(4, c.tgt_vocab_size, (2, 1))
    past = _empty_past(n, 2, h, dh, length=3)
    past_names, present_names = _cache_names("past", n), _cache_names("present", n)
    axes = {"tgt": {0: "batch", 1: "target"}, "src": {0: "batch", 1: "source"}, "log_probs": {0: "batch", 1: "target"},
            **{k: {0: "batch", 2: "source"} for k in names}, **{k: {0: "batch", 2: "past"} for k in past_names},
            **{k: {0: "batch", 2: "total"} for k in present_names}}
    dec = _export(_DecoderGraph(model), (tgt, src, *cross, *past), folder / "decoder.onnx",
                  ["tgt", "src", *names, *past_names], ["log_probs", *present_names], axes, opset)
    return enc, dec


def export_model(model: nn.Module, folder: str | Path, opset: int = OPSET) -> list[Path]:
    """The ONNX file(s) of ``model`` in ``folder`` (model.onnx; encoder.onnx + decoder.onnx for translation)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, Transformer):
        return list(export_translation(model, folder, opset))
    if isinstance(model, GPT):
        return [export_gpt(model, folder / "model.onnx", opset)]
    if isinstance(model, Bert):
        return [export_bert(model, folder / "model.onnx", opset)]
    raise ValueError(f"model: no ONNX export for {type(model).__name__}")


# --- running the graphs ---------------------------------------------------------------------------
def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path``; a missing, empty or corrupt file is a ValueError naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for an unreadable graph
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e).strip()[:200]}); "
                         "export it again") from None


class OnnxSeq2SeqStep:
    """``generation.search``'s step interface over the exported encoder and decoder: greedy and
    beam search run on onnxruntime unchanged. Shapes as ``Seq2SeqStep``."""

    def __init__(self, encoder: Any, decoder: Any, src: Tensor, pad_id: int = 0):
        self.decoder, self.pad_id = decoder, pad_id
        self.src = src.numpy()
        _, *cross = encoder.run(None, {"src": self.src})
        self.cross = cross
        n = len(cross) // 2
        h, dh = cross[0].shape[1], cross[0].shape[3]
        self.past = [np.zeros((self.src.shape[0], h, 0, dh), np.float32)] * (2 * n)
        self.names = _cache_names("cross", n) + _cache_names("past", n)

    def __call__(self, prefixes: Tensor) -> Tensor:
        if self.past[0].shape[2] != prefixes.size(1) - 1:
            raise ValueError(f"prefixes: cache holds {self.past[0].shape[2]} positions, prefix has {prefixes.size(1)}")
        feed = {"tgt": prefixes[:, -1:].numpy(), "src": self.src, **dict(zip(self.names, self.cross + self.past))}
        logp, *self.past = self.decoder.run(None, feed)
        logp = torch.from_numpy(logp[:, -1])
        return logp.index_fill(1, torch.tensor([self.pad_id]), float("-inf"))

    def expand(self, k: int) -> None:
        self.reorder(torch.arange(self.src.shape[0]).repeat_interleave(k))

    def reorder(self, index: Tensor) -> None:
        i = index.numpy()
        self.src = self.src[i]
        self.cross = [c[i] for c in self.cross]
        self.past = [p[i] for p in self.past]
