"""Weights in the Hugging Face formats: BERT folders and GPT-2 folders (read and write).

A BERT folder is what ``transformers`` writes with ``save_pretrained``: ``config.json`` (HF keys),
``model.safetensors`` (HF tensor names) and ``vocab.txt``. ``load_bert`` reads one into ``Bert``,
``save_bert`` writes one that ``transformers.BertModel.from_pretrained`` reads back.

GPT-2 stores its projections as ``Conv1D``: weight (in, out), the transpose of ``nn.Linear``'s
(out, in), and the Q, K, V projections as one (D, 3D) matrix ``c_attn``; ``gpt_from_hf_state``
splits and transposes them.

A BERT with another position encoding or an attention pattern (``pretrain bert --position alibi
--attention window:64``) has no Hugging Face form: its folder has the same three files, with
``model_type`` "transformer-lab-bert" (so ``transformers`` refuses it by name instead of loading a
different model) and the encoding and pattern under the config's ``"transformer_lab"`` key; tensors
keep their HF names, and those BERT has none for (T5's bias table, Shaw's distance embeddings) are
stored once under ``transformer_lab.`` plus our name. ``load_bert`` reads both kinds.

Missing or mismatched tensors are errors that list names and shapes, except heads the folder does
not have (loading a plain encoder for fine-tuning): those keep their fresh initialisation, and the
log says so (as ``transformers`` does).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch
from torch import Tensor

from transformer_lab.config import read_json_object
from transformer_lab.files import refuse_onnx_export, umask_mode
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.gpt import GPT, GPTConfig

log = logging.getLogger(__name__)

_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_OUR_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}

# (HF name, our name) for one BERT layer and the rest; "{i}" is the layer index.
_BERT_LAYER = [
    ("attention.self.query", "self_attn.w_q"),
    ("attention.self.key", "self_attn.w_k"),
    ("attention.self.value", "self_attn.w_v"),
    ("attention.output.dense", "self_attn.w_o"),
    ("attention.output.LayerNorm", "sublayers.0.norm"),
    ("intermediate.dense", "ffn.w_1"),
    ("output.dense", "ffn.w_2"),
    ("output.LayerNorm", "sublayers.1.norm"),
]
_BERT_REST = [
    ("bert.embeddings.word_embeddings", "embed.token"),
    ("bert.embeddings.token_type_embeddings", "embed.segment"),
    ("bert.embeddings.position_embeddings", "embed.position.embedding"),
    ("bert.embeddings.LayerNorm", "embed.norm"),
    ("bert.pooler.dense", "pooler"),
    ("cls.predictions.transform.dense", "mlm.dense"),
    ("cls.predictions.transform.LayerNorm", "mlm.norm"),
    ("cls.predictions.bias", "mlm.decoder.bias"),
    ("cls.seq_relationship", "nsp"),
    ("classifier", "classifier.1"),
]

# HF tensors with no counterpart here, by design: buffers, and the MLM decoder's tied copies.
_BERT_IGNORABLE = re.compile(r"(position_ids|cls\.predictions\.decoder\.(weight|bias))$")


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "not found (expected a Hugging Face model folder with config.json)")


def hf_folder(folder: str | Path, reader: str) -> tuple[str, dict[str, Any]]:
    """A Hugging Face model folder's kind, "bert" or "gpt2", and its config.json; a clear error for a
    folder without one, or of another model type (``reader``: the command, for the message)."""
    config = Path(folder) / "config.json"
    refuse_onnx_export(folder)
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: neither one of our run/checkpoint folders nor a Hugging Face model folder "
                                "(no config.json)")
    hf = read_json_object(config)
    kind = hf.get("model_type")
    if kind in BERT_TYPES:
        return "bert", hf
    if kind == "gpt2":
        return "gpt2", hf
    raise ValueError(f"{config}: model_type {kind!r}; {reader} reads BERT and GPT-2 folders, and our checkpoints")


def _read_weights(folder: Path) -> dict[str, Tensor]:
    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (this loader reads safetensors weights only, never pickles)")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


# --- BERT -----------------------------------------------------------------------------------------
OUR_BERT = "transformer-lab-bert"  # model_type of a BERT folder with our position encoding or pattern
BERT_TYPES = ("bert", OUR_BERT)  # the model_type values load_bert reads
_OURS = "transformer_lab."  # the prefix of tensors a Hugging Face BERT has no name for


def check_types(hf: dict[str, Any], where: str, ints: tuple[str, ...], floats: tuple[str, ...],
                nullable: tuple[str, ...] = ()) -> None:
    """A Hugging Face config's numbers as numbers ("hidden_size": "384" was a TypeError deep in the model):
    ValueError naming the key. ``ints``: whole numbers; null only for the ``nullable`` (where the reader
    takes null as its default); a missing key is the reader's to default or to name."""
    for key in (*ints, *floats):
        if key not in hf:
            continue
        v = hf[key]
        if v is None and key in nullable:
            continue
        whole = key in ints
        if v is None or isinstance(v, bool) or not isinstance(v, int if whole else (int, float)) or (
                not whole and not math.isfinite(v)):
            raise ValueError(f"{where}: {key} must be a {'whole' if whole else 'finite'} number, got {json.dumps(v)}")


def bert_config_from_hf(hf: dict[str, Any], where: str = "config.json", **overrides) -> BertConfig:
    check_types(hf, where, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                            "max_position_embeddings", "type_vocab_size", "pad_token_id"),
                ("hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps"), nullable=("pad_token_id",))
    if hf.get("model_type", "bert") not in BERT_TYPES:
        raise ValueError(f"{where}: model_type {hf.get('model_type')!r} is not a BERT")
    if hf.get("model_type") == OUR_BERT:
        ours = hf.get("transformer_lab")
        if not isinstance(ours, dict) or set(ours) != {"position", "attention"}:
            raise ValueError(f"{where}: a {OUR_BERT} config needs 'transformer_lab': an object with 'position' and "
                             f"'attention', got {ours!r}")
        overrides = {**ours, **overrides}
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{where}: position_embedding_type {hf['position_embedding_type']!r} is not supported (absolute only)")
    act = hf.get("hidden_act", "gelu")
    if act not in _HF_ACT:
        raise ValueError(f"{where}: hidden_act {act!r} is not supported; expected one of {sorted(_HF_ACT)}")
    try:
        kw = dict(
            vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"], max_len=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2), dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1), activation=_HF_ACT[act],
            eps=hf.get("layer_norm_eps", 1e-12), pad_id=hf.get("pad_token_id", 0) or 0,
            n_labels=len(hf["id2label"]) if "BertForSequenceClassification" in hf.get("architectures", []) else 0,
            pretraining_heads=bool({"BertForPreTraining", "BertForMaskedLM"} & set(hf.get("architectures") or [])),
            nsp_head="BertForMaskedLM" not in (hf.get("architectures") or []),
        )
    except KeyError as e:
        raise ValueError(f"{where}: missing key {e.args[0]!r} of a BERT config") from None
    kw.update(overrides)
    return BertConfig(**kw)


def is_hf_bert(c: BertConfig) -> bool:
    """Whether ``transformers`` has this model: learned absolute positions, full attention."""
    return c.position == "learned" and c.attention == "full"


def bert_config_to_hf(c: BertConfig) -> dict[str, Any]:
    arch = ("BertForSequenceClassification" if c.n_labels else "BertModel" if not c.pretraining_heads
            else "BertForPreTraining" if c.nsp_head else "BertForMaskedLM")
    hf = {
        "architectures": [arch], "model_type": "bert", "vocab_size": c.vocab_size, "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "intermediate_size": c.d_ff,
        "max_position_embeddings": c.max_len, "type_vocab_size": c.type_vocab_size,
        "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attention_dropout,
        "hidden_act": _OUR_ACT[c.activation], "layer_norm_eps": c.eps, "pad_token_id": c.pad_id,
        "position_embedding_type": "absolute", "initializer_range": 0.02,
    }
    if not is_hf_bert(c):
        hf["model_type"] = OUR_BERT
        hf["transformer_lab"] = {"position": c.position, "attention": c.attention}
    if c.n_labels:
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.n_labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(c.n_labels)}
    return hf


def bert_name_pairs(n_layers: int) -> list[tuple[str, str]]:
    """(HF name, our name) for every tensor or module of an n-layer BERT, HF names ``bert.``-prefixed as
    the task models store them (BertModel's own names lack the prefix)."""
    pairs = list(_BERT_REST)
    for i in range(n_layers):
        pairs += [(f"bert.encoder.layer.{i}.{h}", f"encoder.layers.{i}.{o}") for h, o in _BERT_LAYER]
    return pairs


def _rename(name: str, pairs: list[tuple[str, str]]) -> str | None:
    for src, dst in pairs:
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    return None


def bert_state_from_hf(hf_state: dict[str, Tensor], n_layers: int) -> tuple[dict[str, Tensor], list[str]]:
    """Our names for HF BERT tensors (with or without the ``bert.`` prefix of the task models; old
    ``gamma``/``beta`` LayerNorm names too). Returns (state, HF names that have no place in ours)."""
    pairs = bert_name_pairs(n_layers)
    state, unused = {}, []
    for name, t in hf_state.items():
        if name.startswith(_OURS):
            state[name[len(_OURS):]] = t
            continue
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))
        if not key.startswith(("bert.", "cls.", "classifier.")):
            key = "bert." + key
        ours = _rename(key, pairs)
        if ours is None:
            unused.append(name)  # position_ids buffers, decoder copies of tied tensors
        else:
            state[ours] = t
    return state, unused


def bert_state_to_hf(model: Bert) -> dict[str, Tensor]:
    """HF names, ``bert.`` prefixed as the task models (BertForPreTraining, ...) store them; a plain
    encoder is stored without the prefix, as BertModel does."""
    reverse = [(o, h) for h, o in bert_name_pairs(model.config.n_layers)]
    aliases = _aliases(model)
    masked_lm = model.config.pretraining_heads and not model.config.nsp_head
    out = {}
    for name, t in model.state_dict().items():
        if name in aliases or masked_lm and name.startswith("pooler."):
            continue  # stored under its first name (HF re-ties cls.predictions.decoder on load); BertForMaskedLM
            # has no pooler (only NSP trains it)
        hf = _rename(name, reverse)
        if hf is None and not is_hf_bert(model.config):
            out[_OURS + name] = t.detach().contiguous()
            continue
        if hf is None:
            raise ValueError(f"no Hugging Face name for {name}")
        plain = not (model.config.pretraining_heads or model.config.n_labels)
        out[hf[len("bert."):] if plain and hf.startswith("bert.") else hf] = t.detach().contiguous()
    return out


def load_state_checked(model: torch.nn.Module, state: dict[str, Tensor], where: str,
                       optional: Callable[[str], bool] = lambda name: False) -> list[str]:
    """Copy ``state`` into ``model``; a missing tensor (unless ``optional``) or a wrong shape is a
    ValueError listing every offender. Returns the optional tensors that kept their initialisation."""
    own = model.state_dict()
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and not optional(k)]
    if wrong or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors: " + ", ".join(f"{k} {tuple(own[k].shape)}" for k in missing[:12]))
        if wrong:
            parts.append(f"shape mismatch in {len(wrong)} tensors: " + "; ".join(wrong[:12]))
        raise ValueError(f"{where}: weights do not fit the model; " + "; ".join(parts))
    fresh = [k for k in own if k not in state]
    with torch.no_grad():
        for k, t in own.items():
            if k in state:
                t.copy_(state[k])
    return fresh


def load_bert(folder: str | Path, announce_fresh: bool = True, **overrides) -> Bert:
    """An HF BERT folder into ``Bert``. ``overrides`` change the config (e.g. ``n_labels=2`` to add
    a fresh classification head, ``pretraining_heads=True``, dropout); ``announce_fresh``: log the heads
    left fresh (off when the caller fills them next, from an adapter say). In eval mode, as transformers'
    ``from_pretrained`` returns a model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder (expected config.json, model.safetensors, vocab.txt)")
    refuse_onnx_export(folder)
    config = bert_config_from_hf(_read_json(folder / "config.json"), str(folder / "config.json"), **overrides)
    model = Bert(config)
    state, unused = bert_state_from_hf(_read_weights(folder), config.n_layers)
    # Heads, and the pooler (BertForMaskedLM folders have none), start fresh when the folder lacks them.
    is_head = lambda k: k.startswith(("mlm.", "nsp.", "classifier.", "pooler."))  # noqa: E731
    state = {k: v for k, v in state.items() if k in model.state_dict() or not is_head(k)}
    state.update({alias: state[first] for alias, first in _aliases(model).items() if first in state})
    stray = [k for k in state if k not in model.state_dict() and not is_head(k)]
    if stray:  # e.g. T5 or Shaw tables in a folder read as another encoding
        raise ValueError(f"{folder / 'model.safetensors'}: {len(stray)} tensors have no place in this model "
                         f"(position {config.position!r}, attention {config.attention!r}): {stray[:12]}")
    fresh = load_state_checked(model, state, str(folder / "model.safetensors"), optional=is_head)
    fresh = [k for k in fresh if k != "mlm.decoder.weight"
             and not (k.startswith("pooler.") and model.nsp is None and model.classifier is None)]  # (unread then)
    if fresh and announce_fresh:
        log.info("%s: new heads, initialised fresh (train them before use): %s", folder, ", ".join(fresh))
    unexpected = [k for k in unused if not _BERT_IGNORABLE.search(k)]
    if unexpected:
        raise ValueError(f"{folder / 'model.safetensors'}: {len(unexpected)} tensors have no place in a "
                         f"{config.n_layers}-layer BERT: {unexpected[:12]}")
    return model.eval()  # (as from_pretrained: dropout off until training sets train mode)


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """Every further name of a parameter held under several (the MLM decoder's table, tied to the word
    embeddings; T5's bias table, shared by every layer) -> its first name, the one the file stores."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def save_bert(model: Bert, folder: str | Path, vocab_file: str | Path | None = None) -> Path:
    """Write an HF BERT folder (config.json, model.safetensors, vocab.txt) that ``transformers`` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(bert_config_to_hf(model.config), indent=2) + "\n")
    safetensors.torch.save_file(bert_state_to_hf(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    umask_mode(folder / "model.safetensors")
    if vocab_file is not None and Path(vocab_file).resolve() != (folder / "vocab.txt").resolve():
        shutil.copyfile(vocab_file, folder / "vocab.txt")
    return folder


# --- GPT-2 ----------------------------------------------------------------------------------------
def gpt_config_from_hf(hf: dict[str, Any], where: str = "config.json") -> GPTConfig:
    check_types(hf, where, ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer", "n_inner", "eos_token_id"),
                ("resid_pdrop", "attn_pdrop", "layer_norm_epsilon"), nullable=("n_inner", "eos_token_id"))
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{where}: scale_attn_weights=False / scale_attn_by_inverse_layer_idx=True change the "
                         "attention scaling; only GPT-2's standard 1/sqrt(d_head) is supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACT:
        raise ValueError(f"{where}: activation_function {act!r} is not supported; expected one of {sorted(_HF_ACT)}")
    eos = hf.get("eos_token_id")
    if eos is not None and not 0 <= eos < hf.get("vocab_size", 0):
        log.warning("%s: eos_token_id %s is outside the vocabulary; generation will not stop at it", where, eos)
        eos = None
    try:
        d = hf["n_embd"]
        return GPTConfig(
            vocab_size=hf["vocab_size"], max_len=hf["n_positions"], d_model=d, n_heads=hf["n_head"],
            n_layers=hf["n_layer"], d_ff=hf.get("n_inner") or 4 * d, dropout=hf.get("resid_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1), activation=_HF_ACT[act],
            eps=hf.get("layer_norm_epsilon", 1e-5), eos_id=eos,
        )
    except KeyError as e:
        raise ValueError(f"{where}: missing key {e.args[0]!r} of a GPT-2 config") from None


def gpt_from_hf_state(hf_state: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """HF ``GPT2LMHeadModel`` tensors -> ours: Conv1D weights transposed, c_attn split into Q, K, V."""
    d = config.d_model
    sd = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    if "lm_head.weight" in sd and "wte.weight" in sd and not torch.equal(sd["lm_head.weight"], sd["wte.weight"]):
        raise ValueError("lm_head.weight differs from transformer.wte.weight: an untied LM head is not supported")
    out: dict[str, Tensor] = {}

    def take(name: str) -> Tensor:
        if name not in sd:
            raise ValueError(f"GPT-2 state dict: missing tensor transformer.{name}")
        return sd[name]

    out["embed.token.weight"] = out["lm_head.weight"] = take("wte.weight")  # tied
    out["embed.position.embedding.weight"] = take("wpe.weight")
    out["blocks.norm.weight"], out["blocks.norm.bias"] = take("ln_f.weight"), take("ln_f.bias")
    for i in range(config.n_layers):
        h, o = f"h.{i}.", f"blocks.layers.{i}."
        for hf_ln, ours in (("ln_1", "sublayers.0.norm"), ("ln_2", "sublayers.1.norm")):
            out[o + ours + ".weight"], out[o + ours + ".bias"] = take(h + hf_ln + ".weight"), take(h + hf_ln + ".bias")
        w, b = take(h + "attn.c_attn.weight"), take(h + "attn.c_attn.bias")  # (D, 3D), (3D,)
        if w.shape != (d, 3 * d):
            raise ValueError(f"transformer.{h}attn.c_attn.weight: expected ({d}, {3 * d}), got {tuple(w.shape)}")
        for j, name in enumerate(("w_q", "w_k", "w_v")):
            out[o + f"self_attn.{name}.weight"] = w[:, j * d:(j + 1) * d].t()
            out[o + f"self_attn.{name}.bias"] = b[j * d:(j + 1) * d]
        out[o + "self_attn.w_o.weight"], out[o + "self_attn.w_o.bias"] = take(h + "attn.c_proj.weight").t(), take(h + "attn.c_proj.bias")
        out[o + "ffn.w_1.weight"], out[o + "ffn.w_1.bias"] = take(h + "mlp.c_fc.weight").t(), take(h + "mlp.c_fc.bias")
        out[o + "ffn.w_2.weight"], out[o + "ffn.w_2.bias"] = take(h + "mlp.c_proj.weight").t(), take(h + "mlp.c_proj.bias")
    return {k: v.contiguous() for k, v in out.items()}


def gpt_config_to_hf(c: GPTConfig) -> dict[str, Any]:
    if c.position != "learned":
        raise ValueError(f"position: GPT-2 has learned positions; this model uses {c.position!r} and cannot be written "
                         "as a GPT-2 folder (save a checkpoint instead)")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.max_len, "n_embd": c.d_model, "n_head": c.n_heads, "n_layer": c.n_layers, "n_inner": c.d_ff,
            "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.attention_dropout,
            "activation_function": {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.activation],
            "layer_norm_epsilon": c.eps, "bos_token_id": c.eos_id, "eos_token_id": c.eos_id,
            "scale_attn_weights": True, "tie_word_embeddings": True}


def gpt_to_hf_state(model: GPT) -> dict[str, Tensor]:
    """Ours -> HF ``GPT2LMHeadModel`` tensors (the inverse of ``gpt_from_hf_state``): W_Q, W_K, W_V
    joined into c_attn and every projection transposed to Conv1D's (in, out)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["embed.token.weight"], "transformer.wpe.weight": sd["embed.position.embedding.weight"],
           "transformer.ln_f.weight": sd["blocks.norm.weight"], "transformer.ln_f.bias": sd["blocks.norm.bias"]}
    for i in range(model.config.n_layers):
        h, o = f"transformer.h.{i}.", f"blocks.layers.{i}."
        for hf_ln, ours in (("ln_1", "sublayers.0.norm"), ("ln_2", "sublayers.1.norm")):
            out[h + hf_ln + ".weight"], out[h + hf_ln + ".bias"] = sd[o + ours + ".weight"], sd[o + ours + ".bias"]
        qkv = [sd[o + f"self_attn.{n}.weight"] for n in ("w_q", "w_k", "w_v")]
        out[h + "attn.c_attn.weight"] = torch.cat(qkv).t()  # (D, 3D)
        out[h + "attn.c_attn.bias"] = torch.cat([sd[o + f"self_attn.{n}.bias"] for n in ("w_q", "w_k", "w_v")])
        for hf_name, ours in (("attn.c_proj", "self_attn.w_o"), ("mlp.c_fc", "ffn.w_1"), ("mlp.c_proj", "ffn.w_2")):
            out[h + hf_name + ".weight"], out[h + hf_name + ".bias"] = sd[o + ours + ".weight"].t(), sd[o + ours + ".bias"]
    return {k: v.contiguous() for k, v in out.items()}


def save_gpt(model: GPT, folder: str | Path) -> Path:
    """Write an HF GPT-2 folder (config.json, model.safetensors) that ``transformers`` reads; the LM head
    is the embedding table (tied), so it is not stored."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(gpt_config_to_hf(model.config), indent=2) + "\n")
    safetensors.torch.save_file(gpt_to_hf_state(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    umask_mode(folder / "model.safetensors")
    return folder


def gpt_from_hf(hf_model_or_folder: Any) -> GPT:
    """Our ``GPT`` from an HF ``GPT2LMHeadModel`` object or a folder it saved (config.json +
    model.safetensors), in eval mode as ``from_pretrained`` returns its models (training sets train mode)."""
    if isinstance(hf_model_or_folder, (str, Path)):
        folder = Path(hf_model_or_folder)
        config = gpt_config_from_hf(_read_json(folder / "config.json"), str(folder / "config.json"))
        hf_state, where = _read_weights(folder), str(folder / "model.safetensors")
    else:
        config = gpt_config_from_hf(hf_model_or_folder.config.to_dict())
        hf_state, where = hf_model_or_folder.state_dict(), type(hf_model_or_folder).__name__
    model = GPT(config)
    load_state_checked(model, gpt_from_hf_state(hf_state, config), where)
    return model.eval()


# --- sentence-transformers ------------------------------------------------------------------------
def sentence_max_seq_length(folder: str | Path, model_max_len: int) -> int:
    """sentence-transformers truncates at sentence_bert_config.json's max_seq_length (256 for
    all-MiniLM-L6-v2); without that file, the model's position table."""
    path = Path(folder) / "sentence_bert_config.json"
    if path.is_file():
        value = read_json_object(path).get("max_seq_length")
        if value:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{path}: max_seq_length: expected a positive integer, got {value!r}")
            return min(value, model_max_len)
    return model_max_len
