"""Adapters in Hugging Face ``peft``'s own files: ``adapter_config.json`` + ``adapter_model.safetensors``.

An adapter trained here loads with ``peft.PeftModel.from_pretrained`` onto the ``transformers`` model
of the same base (``BertModel`` / ``BertForSequenceClassification`` for a BERT, ``GPT2LMHeadModel``
for a GPT) and computes the same outputs; an adapter ``peft`` saved for those loads here.

Names. peft stores a LoRA layer as ``base_model.model.<HF module>.lora_A.weight`` (and ``lora_B``),
a task head trained in full (``modules_to_save``) as ``base_model.model.<HF module>.weight``, and a
prefix or soft prompt as one tensor ``prompt_embeddings`` (prompt learning saves heads as
``base_model.<HF module>.weight``). Module names follow ``models.hf``'s tensor maps. The encoder-decoder has no ``transformers``
counterpart: its adapters keep this project's module names (``base_model.model.encoder.layers.0...``,
task type SEQ_2_SEQ_LM), a file in peft's layout that this reader loads back.

GPT-2 computes Q, K and V with one fused layer ``c_attn`` (D -> 3D), where this GPT has three. A
peft LoRA on ``c_attn`` (A: (r, D), B: (3D, r)) is three LoRAs here sharing A, with B cut in three
rows blocks; LoRAs on some of w_q, w_k, w_v become one ``c_attn`` LoRA of rank k·r (A stacked, B
block-diagonal, α scaled by k so α/r stays), written with peft's ``rank_pattern``. Both directions
are exact (a shared A is written once).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from transformer_lab.adapters import AdapterConfig, apply_adapter, attention_shape, freeze_except_adapter
from transformer_lab.adapters.lora import LoRALinear
from transformer_lab.adapters.targets import set_module
from transformer_lab.config import read_json_object
from transformer_lab.files import umask_mode
from transformer_lab.models.bert import Bert
from transformer_lab.models.gpt import GPT
from transformer_lab.models.hf import bert_name_pairs
from transformer_lab.models.transformer import Transformer

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PEFT_TYPES = {"lora": "LORA", "qlora": "LORA", "prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}
_QKV = ("w_q", "w_k", "w_v")


# --- module names: ours <-> the transformers model's ----------------------------------------------
def _module_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(HF module name, our module name) for the Linear layers an adapter may touch."""
    if isinstance(model, Bert):
        task_model = model.config.n_labels or model.config.pretraining_heads
        return [(h if task_model else h.removeprefix("bert."), o) for h, o in bert_name_pairs(model.config.n_layers)]
    if isinstance(model, Transformer):  # no transformers counterpart: our names, top module by top module
        return [(name, name) for name, _ in model.named_children()]
    if isinstance(model, GPT):
        pairs = [("lm_head", "lm_head")]
        for i in range(model.config.n_layers):
            h, o = f"transformer.h.{i}.", f"blocks.layers.{i}."
            pairs += [(h + "attn.c_proj", o + "self_attn.w_o"), (h + "mlp.c_fc", o + "ffn.w_1"),
                      (h + "mlp.c_proj", o + "ffn.w_2")]
        return pairs
    raise ValueError(f"peft format: supported for BERT and GPT models (as transformers' BERT and GPT-2), "
                     f"not {type(model).__name__}")


def _rename(model: nn.Module, name: str, to_hf: bool) -> str:
    """Our module or parameter name as the transformers model's (``to_hf``), or back."""
    for h, o in _module_pairs(model):
        old, new = (o, h) if to_hf else (h, o)
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    raise ValueError(f"peft format: no transformers name for module {name}" if to_hf else
                     f"peft format: module {name} has no counterpart in this {type(model).__name__}")


def _task_type(model: nn.Module) -> str:
    if isinstance(model, GPT):
        return "CAUSAL_LM"
    if isinstance(model, Transformer):
        return "SEQ_2_SEQ_LM"
    return "SEQ_CLS" if model.config.n_labels else "FEATURE_EXTRACTION"


def _split_gpt_qkv(name: str) -> tuple[int, str] | None:
    """'blocks.layers.3.self_attn.w_k' -> (3, 'w_k')."""
    parts = name.split(".")
    if len(parts) == 5 and parts[:2] == ["blocks", "layers"] and parts[3] == "self_attn" and parts[4] in _QKV:
        return int(parts[2]), parts[4]
    return None


# --- writing --------------------------------------------------------------------------------------
def _lora_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, tuple[int, float]]]:
    """peft tensors of every LoRA layer, and each HF module's (rank, alpha)."""
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, tuple[int, float]] = {}
    fused: dict[int, dict[str, LoRALinear]] = {}
    for name, m in model.named_modules():
        if not isinstance(m, LoRALinear):
            continue
        if m.merged:
            raise ValueError(f"{name}: the LoRA update is merged into the weight; unmerge it before saving the adapter")
        qkv = _split_gpt_qkv(name) if isinstance(model, GPT) else None
        if qkv is not None:
            fused.setdefault(qkv[0], {})[qkv[1]] = m
            continue
        hf = _rename(model, name, to_hf=True)
        tensors[f"base_model.model.{hf}.lora_A.weight"] = m.lora_A.weight
        tensors[f"base_model.model.{hf}.lora_B.weight"] = m.lora_B.weight
        ranks[hf] = (m.r, m.alpha)
    for i, parts in fused.items():
        hf = f"transformer.h.{i}.attn.c_attn"
        a, b, r, alpha = _fuse_qkv(parts, model.config.d_model, hf)
        tensors[f"base_model.model.{hf}.lora_A.weight"], tensors[f"base_model.model.{hf}.lora_B.weight"] = a, b
        ranks[hf] = (r, alpha)
    return tensors, ranks


def _fuse_qkv(parts: dict[str, LoRALinear], d: int, where: str) -> tuple[Tensor, Tensor, int, float]:
    """One c_attn LoRA (A (R, D), B (3D, R)) computing the w_q / w_k / w_v LoRAs in ``parts``."""
    scalings = {m.scaling for m in parts.values()}
    if len(scalings) != 1:
        raise ValueError(f"{where}: the LoRAs of w_q, w_k, w_v have different alpha / r; GPT-2's fused c_attn "
                         "needs one scale")
    first = next(iter(parts.values()))
    shared = all(torch.equal(m.lora_A.weight, first.lora_A.weight) for m in parts.values())
    a = first.lora_A.weight if shared else torch.cat([m.lora_A.weight for m in parts.values()])  # (R, D)
    b = a.new_zeros(3 * d, a.size(0))
    col = 0
    for j, key in enumerate(_QKV):
        if key in parts:
            r = parts[key].r
            b[j * d:(j + 1) * d, col:col + r] = parts[key].lora_B.weight
            col += 0 if shared else r
    rank = a.size(0)
    return a, b, rank, first.scaling * rank


def save_peft(model: nn.Module, folder: str | Path, base_model: str | Path = "") -> Path:
    """Write the model's adapter as peft does (``save_pretrained``). ``base_model``: recorded as
    ``base_model_name_or_path`` (the folder or hub name of the base)."""
    cfg: AdapterConfig | None = getattr(model, "adapter_config", None)
    if cfg is None:
        raise ValueError("save_peft: the model has no adapter (adapters.apply_adapter adds one)")
    folder = Path(folder)
    c = model.config
    config: dict[str, Any] = {"peft_type": _PEFT_TYPES[cfg.method], "task_type": _task_type(model),
                              "base_model_name_or_path": str(base_model), "inference_mode": True, "revision": None}
    heads = {_rename(model, name, to_hf=True): p for name, p in model.named_parameters()
             if any(name == t or name.startswith(t + ".") for t in cfg.trained_modules)}
    trained = sorted({h.rsplit(".", 1)[0] for h in heads})  # HF modules trained in full (a task's head)
    if cfg.method in ("lora", "qlora"):
        tensors, ranks = _lora_tensors(model)
        if not ranks:
            raise ValueError("save_peft: the model has no LoRA layers")
        config.update(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=sorted(ranks),
                      bias="none", fan_in_fan_out=isinstance(model, GPT), init_lora_weights=True, use_rslora=False,
                      modules_to_save=trained or None,
                      rank_pattern={k: r for k, (r, _) in ranks.items() if r != cfg.r},
                      alpha_pattern={k: a for k, (r, a) in ranks.items() if a != cfg.alpha})
        tensors.update({f"base_model.model.{h}": p for h, p in heads.items()})
    else:
        n_virtual = (model.prefix if model.prefix is not None else model.prompt).length
        n_layers = attention_shape(model, cfg.method)[0]
        common = {"num_virtual_tokens": n_virtual, "token_dim": c.d_model, "num_transformer_submodules": 1,
                  "num_attention_heads": c.n_heads, "num_layers": n_layers, "modules_to_save": trained or None}
        config.update(common)
        if cfg.method == "prefix":
            config.update(encoder_hidden_size=c.d_model, prefix_projection=False)  # the MLP is folded away
            table = model.prefix.table()
        else:
            config.update(prompt_tuning_init="RANDOM", tokenizer_name_or_path=None, prompt_tuning_init_text=None)
            table = model.prompt.embeddings()
        tensors = {"prompt_embeddings": table}
        tensors.update({f"base_model.{h}": p for h, p in heads.items()})
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    safetensors.torch.save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                                metadata={"format": "pt"})
    umask_mode(tmp).replace(folder / WEIGHTS)
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


# --- reading --------------------------------------------------------------------------------------
def read_peft(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    folder = Path(folder)
    config = read_json_object(folder / CONFIG, f"not found (expected a peft adapter folder: {CONFIG} + {WEIGHTS})")
    path = folder / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (this reader takes safetensors adapters only, never pickles)")
    try:
        tensors = safetensors.torch.load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    peft_type = config.get("peft_type")
    if peft_type not in ("LORA", "PREFIX_TUNING", "PROMPT_TUNING"):
        raise ValueError(f"{folder / CONFIG}: peft_type {peft_type!r} is not supported (LORA, PREFIX_TUNING, PROMPT_TUNING)")
    return config, tensors


def _check_shape(where: str, got: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(got.shape) != tuple(expected):
        raise ValueError(f"{where}: shape {tuple(got.shape)} in the adapter, {tuple(expected)} in this model "
                         "(an adapter for another base model?)")


def _pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup: a key matches a module name's end at a dot."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def load_peft(model: nn.Module, folder: str | Path) -> nn.Module:
    """Add the peft adapter in ``folder`` to ``model`` (a base without adapter), in place. Returns the model."""
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError(f"load_peft: the model already has a {model.adapter_config.method} adapter")
    folder = Path(folder)
    config, tensors = read_peft(folder)
    where = str(folder / WEIGHTS)
    heads = {}  # HF name -> tensor, for modules trained in full
    prefix = "base_model.model." if config["peft_type"] == "LORA" else "base_model."
    for key in list(tensors):
        if key.startswith(prefix) and ".lora_" not in key:
            heads[key[len(prefix):]] = tensors.pop(key)
    trained = sorted({_rename(model, h, to_hf=False).rsplit(".", 1)[0] for h in heads})  # e.g. classifier.1
    if config["peft_type"] == "LORA":
        _load_lora(model, config, tensors, where, ",".join(trained))
    else:
        method = "prefix" if config["peft_type"] == "PREFIX_TUNING" else "prompt"
        if "prompt_embeddings" not in tensors:
            raise ValueError(f"{where}: no prompt_embeddings tensor (a {method}-tuning adapter has one)")
        table = tensors["prompt_embeddings"]
        n = int(config.get("num_virtual_tokens", table.size(0)))
        if method == "prefix" and config.get("prefix_projection") and not config.get("inference_mode", True):
            raise ValueError(f"{folder / CONFIG}: a prefix saved with its projection MLP is not supported")
        cfg = AdapterConfig(method=method, prefix_len=n, prompt_len=n, prefix_hidden=0, train=",".join(trained))
        apply_adapter(model, cfg)
        target = model.prefix.embedding.weight if method == "prefix" else model.prompt.embedding.weight
        _check_shape(f"{where}: prompt_embeddings", table, tuple(target.shape))
        with torch.no_grad():
            target.copy_(table)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for h, t in heads.items():
            ours = _rename(model, h, to_hf=False)
            if ours not in own:
                raise ValueError(f"{where}: {h} has no counterpart ({ours}) in this model")
            _check_shape(f"{where}: {h}", t, tuple(own[ours].shape))
            own[ours].copy_(t)
    return model


def _load_lora(model: nn.Module, config: dict[str, Any], tensors: dict[str, Tensor], where: str, trained: str) -> None:
    r, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    modules = sorted({k[len("base_model.model."):].rsplit(".lora_", 1)[0] for k in tensors if ".lora_" in k})
    if not modules:
        raise ValueError(f"{where}: no lora_A / lora_B tensors")
    if config.get("use_dora") or config.get("use_rslora"):
        raise ValueError(f"{where}: DoRA and rsLoRA adapters are not supported")
    plan: dict[str, tuple[Tensor, Tensor, int, float]] = {}  # our module -> (A, B, r, alpha)
    for hf in modules:
        a, b = tensors.get(f"base_model.model.{hf}.lora_A.weight"), tensors.get(f"base_model.model.{hf}.lora_B.weight")
        if a is None or b is None:
            raise ValueError(f"{where}: {hf} needs both lora_A.weight and lora_B.weight")
        rank, alph = int(_pattern_value(ranks, hf, r)), float(_pattern_value(alphas, hf, alpha))
        _check_shape(f"{where}: {hf}.lora_A", a, (rank, a.size(1)))
        if hf.endswith("attn.c_attn") and isinstance(model, GPT):
            d = model.config.d_model
            _check_shape(f"{where}: {hf}.lora_B", b, (3 * d, rank))
            layer = hf.split(".")[2]
            for j, key in enumerate(_QKV):
                plan[f"blocks.layers.{layer}.self_attn.{key}"] = (a, b[j * d:(j + 1) * d], rank, alph)
        else:
            plan[_rename(model, hf, to_hf=False)] = (a, b, rank, alph)
    cfg = AdapterConfig(method="lora", r=r, alpha=alpha,
                        dropout=float(config.get("lora_dropout", 0.0)),
                        targets=",".join(sorted(plan)), train=trained)
    for name, (a, b, rank, alph) in plan.items():
        try:
            base = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: module {name} is not in this model") from None
        if type(base) is not nn.Linear:
            raise ValueError(f"{where}: {name} is a {type(base).__name__}, not a Linear layer")
        _check_shape(f"{where}: {name} lora_A", a, (rank, base.in_features))
        _check_shape(f"{where}: {name} lora_B", b, (base.out_features, rank))
        lora = LoRALinear(base, rank, alph, cfg.dropout)
        with torch.no_grad():
            lora.lora_A.weight.copy_(a)
            lora.lora_B.weight.copy_(b)
        set_module(model, name, lora)
    freeze_except_adapter(model, cfg.trained_modules)
    model.adapter_config = cfg
