"""Quantizing a whole model: which Linear layers, with which grids, calibrated on which inputs.

    cfg = QuantConfig(scheme="static", calibrate="kl")
    quantize_model(model, cfg, calibrate=lambda m: [m(batch) for batch in calibration_batches])

Every ``nn.Linear`` becomes a ``QuantLinear`` except the layers ``skip`` names (or inside them: a name,
or the end of one at a dot, ``w_q`` being every layer's; recorded as the full paths it matched) and
a projection tied to an embedding table (embeddings stay fp32: a table lookup has no matmul to
speed up). The static scheme and SmoothQuant watch the layers' inputs while ``calibrate(model)`` runs
the fp32 model over sample inputs: each Linear is wrapped for the run, showing its input to an observer.

``model.quant_config`` records what was done; ``runs.checkpoint`` saves it in config.json and,
on load, ``quantized_shell`` rebuilds the same layers empty before the weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor, nn

from transformer_lab.compression.linear import ACTIVATIONS, GRANULARITIES, IMPLS, SCHEMES, QuantEmbedding, QuantLinear
from transformer_lab.compression.observers import OBSERVERS, Observer
from transformer_lab.nn.names import matches, short_name

# KL (TensorRT's entropy calibration) is for activations: one weight channel's few hundred values make a
# sparse 2048-bin histogram, and the search took about 0.1 s a channel (half an hour for MiniLM).
WEIGHT_OBSERVERS = tuple(k for k in OBSERVERS if k != "kl")

# An observer keeps at most this many activation values per layer (a seeded sample beyond): enough for
# a 2048-bin histogram's tails, bounded memory for 100 layers.
MAX_VALUES = 1 << 19


@dataclass(frozen=True)
class QuantConfig:
    scheme: str = "dynamic"  # dynamic (per-token activations) | static (calibrated activations) | weight-only
    bits: int = 8  # weight bits: 8 or 4 (activations are 8-bit in the integer schemes)
    granularity: str = "channel"  # weight scales: tensor | channel | group (weight-only)
    group_size: int = 32  # input features per scale with granularity "group"
    weight_calibrate: str = "minmax"  # the weight grid's observer (per output channel)
    calibrate: str = "minmax"  # the static scheme's activation observer: minmax | percentile | mse | kl
    smooth: float | None = None  # SmoothQuant's migration strength alpha in (0, 1]; None: off
    skip: str = ""  # comma-separated module names left in fp32
    embeddings: bool = False  # also int8 embedding tables (one scale per row), those not tied to an output layer
    activations: str = "token"  # dynamic scheme: one grid per token, or per tensor (fbgemm's kernel; faster decoding)
    tied: bool = False  # also an output projection tied to an embedding table (an int8 copy; the table stays fp32)

    def __post_init__(self) -> None:
        for name, value, allowed in (("scheme", self.scheme, SCHEMES), ("granularity", self.granularity, GRANULARITIES),
                                     ("bits", self.bits, (4, 8)), ("weight_calibrate", self.weight_calibrate, OBSERVERS),
                                     ("calibrate", self.calibrate, OBSERVERS), ("activations", self.activations, ACTIVATIONS)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {sorted(allowed)}, got {value!r}")
        if self.granularity == "group" and self.scheme != "weight-only":
            raise ValueError("granularity 'group' needs --scheme weight-only (an integer GEMM takes one weight scale "
                             "per output channel)")
        if self.smooth is not None:
            if not 0.0 < self.smooth <= 1.0:
                raise ValueError(f"smooth: expected 0 < alpha <= 1, got {self.smooth}")
            if self.scheme == "weight-only":
                raise ValueError("smooth: SmoothQuant moves activation range into the weights; with weight-only "
                                 "quantization the activations stay fp32 and there is nothing to smooth")

    @property
    def needs_calibration(self) -> bool:
        return self.scheme == "static" or self.smooth is not None

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.skip.split(",") if s.strip())


def _is_table(m: nn.Module) -> bool:
    """An embedding table: an nn.Embedding, or an embedding module owning its ``weight`` (TokenEmbedding)."""
    return isinstance(m, nn.Embedding) or (hasattr(m, "vocab_size") and isinstance(getattr(m, "weight", None), nn.Parameter))


def _tables(model: nn.Module) -> set[int]:
    """ids of the embedding tables (an nn.Embedding's, or an embedding module's own ``weight``)."""
    return {id(m.weight) for m in model.modules() if _is_table(m)}


# Named quantizations (``bench quantize --variants``, ``explain int8``).
PRESETS = {
    "dynamic": QuantConfig(),
    "dynamic-tensor": QuantConfig(granularity="tensor"),
    "dynamic-emb": QuantConfig(embeddings=True),
    "dynamic-smooth": QuantConfig(smooth=0.5),
    "static-minmax": QuantConfig(scheme="static"),
    "static-percentile": QuantConfig(scheme="static", calibrate="percentile"),
    "static-mse": QuantConfig(scheme="static", calibrate="mse"),
    "static-kl": QuantConfig(scheme="static", calibrate="kl"),
    "static-smooth": QuantConfig(scheme="static", smooth=0.5),
    "w8": QuantConfig(scheme="weight-only"),
    "w4-channel": QuantConfig(scheme="weight-only", bits=4),
    "w4": QuantConfig(scheme="weight-only", bits=4, granularity="group"),
    "w4a8": QuantConfig(bits=4),
    "fast": QuantConfig(activations="tensor", tied=True),
    "fast-emb": QuantConfig(activations="tensor", tied=True, embeddings=True),
    "fast-smooth": QuantConfig(activations="tensor", tied=True, smooth=0.8),
}


def resolve_skip(model: nn.Module, skip: tuple[str, ...], tied: bool = False, embeddings: bool = False) -> tuple[str, ...]:
    """The full paths of the modules ``skip`` names (``nn.names`` patterns, as an adapter's targets: ``w_q`` is
    every layer's). A name that matches no module, or only modules with nothing the quantization would touch (a
    Linear layer; with ``tied`` one tied to a table; with ``embeddings`` a table), is an error: it would keep
    nothing in fp32, silently."""
    def touched(kept: tuple[str, ...]) -> set[str]:
        return set(target_linears(model, kept, tied) + (target_embeddings(model, kept) if embeddings else []))

    modules = [name for name, _ in model.named_modules() if name]
    everything, out = touched(()), []
    for s in skip:
        hits = [n for n in modules if matches(n, s)]
        if not hits or not everything - touched(tuple(hits)):
            linears = target_linears(model)
            what = "matches no module" if not hits else "names modules with nothing in them this quantization changes"
            raise ValueError(f"skip: {s!r} {what} (a {type(model).__name__}); its Linear layers are named "
                             f"{', '.join(sorted({short_name(n) for n in linears}))} (e.g. {linears[0]}); a path "
                             "names one of them")
        out += [n for n in hits if n not in out]
    return tuple(out)


def tied_output_layers(model: nn.Module) -> list[str]:
    """The Linear layers whose weight is an embedding table (left fp32 unless ``tied``)."""
    return list(_tied_outputs(model, target_linears(model, tied=True)))


def target_linears(model: nn.Module, skip: tuple[str, ...] = (), tied: bool = False) -> list[str]:
    """The names of the Linear layers to quantize: all but the skipped and (unless ``tied``) those
    tied to an embedding table."""
    tables = set() if tied else _tables(model)
    return [name for name, m in model.named_modules()
            if type(m) is nn.Linear and id(m.weight) not in tables
            and not any(name == s or name.startswith(s + ".") for s in skip)]


def target_embeddings(model: nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """Embedding tables (nn.Embedding, or a module with a ``vocab_size`` and its own ``weight``) whose
    table no other module holds: one tied to a Linear output layer stays fp32 with it (with ``tied``
    that layer is quantized first, and then shares the int8 table). A module reachable under two names
    (the encoder-decoder's shared source and target embedding) is one owner."""
    owners: dict[int, set[int]] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(id(m))
    return [name for name, m in model.named_modules()
            if _is_table(m) and owners[id(m.weight)] == {id(m)} and not any(name == s or name.startswith(s + ".")
                                                                           for s in skip)]


def _quantize_embeddings(model: nn.Module, cfg: QuantConfig, empty: bool) -> dict[int, QuantEmbedding]:
    """Every target table -> QuantEmbedding (under each name the module has); {id(fp32 table): its int8 one}."""
    done = {}
    for n in target_embeddings(model, cfg.skipped):
        m = model.get_submodule(n)
        factor = float(getattr(m, "factor", 1.0))
        q = QuantEmbedding(*m.weight.shape, factor) if empty else QuantEmbedding.from_table(m.weight, factor)
        for name, other in list(model.named_modules(remove_duplicate=False)):
            if other is m:
                _set(model, name, q)
        done[id(m.weight)] = q
    return done


def _tied_outputs(model: nn.Module, names: list[str]) -> dict[str, int]:
    """{name: id(table)} of the Linear layers among ``names`` whose weight is an embedding table."""
    tables = _tables(model)
    return {n: id(model.get_submodule(n).weight) for n in names if id(model.get_submodule(n).weight) in tables}


def _share_tables(model: nn.Module, tied: dict[str, int], tables: dict[int, QuantEmbedding], cfg: QuantConfig) -> None:
    """A tied output layer reads the int8 table its embedding now holds: one int8 copy, as the fp32
    model had one table. (The same grid: symmetric min-max, one scale per row = per output channel.)"""
    if cfg.bits != 8 or cfg.granularity != "channel" or cfg.weight_calibrate != "minmax":
        return  # another weight grid than the table's: the output layer keeps its own copy
    for name, table in tied.items():
        if table in tables:
            layer, q = model.get_submodule(name), tables[table]
            layer.qweight, layer.weight_scale = q.qweight, q.weight_scale
            layer.weights_changed()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _check_quantizable(model: nn.Module) -> None:
    if getattr(model, "quant_config", None) is not None or any(isinstance(m, (QuantLinear, QuantEmbedding))
                                                                for m in model.modules()):
        raise ValueError("model: already quantized; quantize the fp32 checkpoint it was made from")
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError("model: carries an adapter (LoRA, prefix, ...); merge it first (transformer-lab peft merge) "
                         "and quantize the merged model")


class _Watched(nn.Module):
    """A Linear that shows its input to an observer first. (Not an ``nn.Linear``, so attention runs
    each projection through it rather than fusing the three weight matrices into one GEMM.)"""

    def __init__(self, linear: nn.Linear, observer: Observer, transform: Tensor | None):
        super().__init__()
        self.linear, self.observer, self.transform = linear, observer, transform

    def forward(self, x: Tensor) -> Tensor:
        seen = x.detach().reshape(-1, x.size(-1)).float()
        self.observer.observe(seen if self.transform is None else seen * self.transform)
        return self.linear(x)


@torch.no_grad()
def watch_inputs(model: nn.Module, names: list[str], make: Callable[[str], Observer],
                 calibrate: Callable[[nn.Module], object], transform: dict[str, Tensor] | None = None) -> dict[str, Observer]:
    """One observer per named Linear, fed the layer's input (flattened to (tokens, features), times
    ``transform[name]`` when given) while ``calibrate(model)`` runs the model in eval mode."""
    observers = {n: make(n) for n in names}
    linears = {n: model.get_submodule(n) for n in names}
    was_training = model.training
    try:
        for n in names:
            _set(model, n, _Watched(linears[n], observers[n], (transform or {}).get(n)))
        model.eval()
        calibrate(model)
    finally:
        for n in names:
            _set(model, n, linears[n])
        model.train(was_training)
    empty = [n for n, o in observers.items() if not o.count]
    if empty:
        raise ValueError(f"calibration: {len(empty)} layers saw no input ({', '.join(empty[:5])}); does the "
                         "calibration run use every part of the model (encoder and decoder)?")
    return observers


def shared_inputs(names: list[str], absmax: dict[str, Tensor]) -> list[list[str]]:
    """``names`` in groups of sibling layers (one parent module) that read the same input during
    calibration (equal per-channel max |x|): self-attention's Q, K, V; cross-attention's K, V. A group
    takes one SmoothQuant multiplier, from its layers' weights together (as the paper smooths a fused
    QKV), so it can still run as one product (``QuantLinear.joint``)."""
    groups: list[list[str]] = []
    for n in names:
        parent = n.rpartition(".")[0]
        home = next((g for g in groups if g[0].rpartition(".")[0] == parent and torch.equal(absmax[g[0]], absmax[n])), None)
        if home is None:
            groups.append([n])
        else:
            home.append(n)
    return groups


def smoothing_factors(x_absmax: Tensor, w: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's per-input-channel m_j = max|x_j|^α / max|W_:j|^(1-α) (both floored at 1e-5)."""
    w_absmax = w.detach().float().abs().amax(dim=0).clamp(min=1e-5)
    return (x_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.pow(1.0 - alpha)).clamp(min=1e-5)


def quantize_model(model: nn.Module, cfg: QuantConfig, calibrate: Callable[[nn.Module], object] | None = None,
                   impl: str = "int") -> nn.Module:
    """Replace the model's Linear layers by ``QuantLinear`` (in place; returns the model).
    ``calibrate(model)`` runs the fp32 model over sample inputs (needed by the static scheme and by
    SmoothQuant; it may be called twice)."""
    _check_quantizable(model)
    if cfg.needs_calibration and calibrate is None:
        raise ValueError(f"{'the static scheme' if cfg.scheme == 'static' else 'smooth'}: needs calibration data "
                         "(sample inputs the model reads)")
    if cfg.weight_calibrate not in WEIGHT_OBSERVERS:  # (a checkpoint that recorded one still loads)
        raise ValueError(f"weight_calibrate: expected one of {list(WEIGHT_OBSERVERS)}, got {cfg.weight_calibrate!r} "
                         "(an activation method: --calibrate)")
    if cfg.skipped:
        cfg = replace(cfg, skip=",".join(resolve_skip(model, cfg.skipped, cfg.tied, cfg.embeddings)))
    names = target_linears(model, cfg.skipped, cfg.tied)
    tied = _tied_outputs(model, names)
    if not names:
        raise ValueError("model: no Linear layer left to quantize (every one is skipped or tied to an embedding)")
    linears = {n: model.get_submodule(n) for n in names}
    smooth: dict[str, Tensor] = {}
    if cfg.smooth is not None:
        seen = watch_inputs(model, names, lambda n: _AbsMax(), calibrate)
        for group in shared_inputs(names, {n: seen[n].absmax for n in names}):
            m = smoothing_factors(seen[group[0]].absmax, torch.cat([linears[n].weight for n in group]), cfg.smooth)
            smooth.update(dict.fromkeys(group, m))
    inputs: dict[str, Observer] = {}
    if cfg.scheme == "static":
        kind = OBSERVERS[cfg.calibrate]
        kept = {} if cfg.calibrate == "minmax" else {"max_values": MAX_VALUES}
        inputs = watch_inputs(model, names, lambda n: kind(bits=8, symmetric=cfg.calibrate == "kl", **kept), calibrate, {n: 1.0 / m for n, m in smooth.items()} or None)
    weight_observer = OBSERVERS[cfg.weight_calibrate]
    for n in names:
        _set(model, n, QuantLinear.from_linear(
            linears[n], cfg.scheme, cfg.bits, cfg.granularity, cfg.group_size, weight_observer,
            inputs[n].qparams() if inputs else None, smooth.get(n), impl, cfg.activations))
    if cfg.embeddings:
        _share_tables(model, tied, _quantize_embeddings(model, cfg, empty=False), cfg)
    model.quant_config = cfg
    return model


def quantized_shell(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """The layers ``quantize_model(model, cfg)`` makes, empty, for a checkpoint's tensors to fill."""
    _check_quantizable(model)
    names = target_linears(model, cfg.skipped, cfg.tied)
    tied = _tied_outputs(model, names)
    for n in names:
        m = model.get_submodule(n)
        _set(model, n, QuantLinear(m.in_features, m.out_features, m.bias is not None, cfg.scheme, cfg.bits,
                                   cfg.granularity, cfg.group_size, cfg.smooth is not None, activations=cfg.activations))
    if cfg.embeddings:
        _share_tables(model, tied, _quantize_embeddings(model, cfg, empty=True), cfg)
    model.quant_config = cfg
    return model


def set_impl(model: nn.Module, impl: str) -> nn.Module:
    """Every QuantLinear computes with ``impl`` ("int": integer kernels, "reference": fp32 formulas)."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.impl = impl
    return model


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the Linear layers' weights (and scales) as stored: 4 per fp32 value, 1 per int8, 1/2 per
    int4. A projection tied to an embedding table is the table, not counted."""
    tables = _tables(model)
    return sum(m.weight_bytes() if isinstance(m, QuantLinear) else m.weight.numel() * m.weight.element_size()
               for m in model.modules()
               if isinstance(m, QuantLinear) or (isinstance(m, nn.Linear) and id(m.weight) not in tables))


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored (a tensor shared by two names counted once)."""
    seen: dict[int, int] = {}
    for t in model.state_dict().values():
        if isinstance(t, Tensor):
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
    return sum(seen.values())


class _AbsMax(Observer):
    """max |x| per input channel (SmoothQuant's activation statistic)."""

    def __init__(self):
        super().__init__(axis=-1)
        self.absmax: Tensor | None = None

    def _channels(self, x: Tensor) -> Tensor:
        return x.reshape(-1, x.size(-1)).t()

    def _add(self, rows: Tensor) -> None:
        m = rows.abs().amax(dim=1)
        self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)
