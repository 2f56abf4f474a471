"""Parameter-efficient fine-tuning: a frozen model plus a few trainable parameters.

    lora     low-rank updates B·A on chosen Linear layers (``lora``)
    qlora    the same, on a base whose Linear weights are stored in 4-bit NF4 (``nf4``)
    prefix   trainable keys and values before every self-attention layer's input (``prefix``)
    prompt   trainable input vectors before the token embeddings (``prompt``)

``apply_adapter(model, AdapterConfig(...))`` changes a BERT, GPT or encoder–decoder model in place:
it replaces the targeted layers or fills the model's ``prefix`` / ``prompt`` slot, then freezes every
parameter except the adapter's and those of the modules named in ``train`` (a task's fresh head).
The config travels with the model (``model.adapter_config``) so a checkpoint can rebuild it.
``merge_lora`` folds LoRA updates into plain Linear weights; ``peft_format`` reads and writes the
adapter files of Hugging Face ``peft``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from transformer_lab.adapters.lora import LoRALinear
from transformer_lab.adapters.nf4 import BLOCK, NF4Linear
from transformer_lab.adapters.prefix import PrefixTuning
from transformer_lab.adapters.prompt import SoftPrompt
from transformer_lab.adapters.targets import find_linears, matches, parse_targets, set_module
from transformer_lab.nn.embeddings import TokenEmbedding

METHODS = ("lora", "qlora", "prefix", "prompt")
# Peak learning rates when a task's command gives none: only a few parameters train, and they take
# larger steps than full fine-tuning's 5e-5. Measured on SST-2 with all-MiniLM-L6-v2 (100 steps of 32,
# dev accuracy; full fine-tuning at 5e-5: 0.803): LoRA r=8 on w_q,w_v 0.509 at 5e-4 (it had not moved),
# 0.806 at 2e-3; prefix with its MLP 0.509 at 5e-3 (diverged), 0.698 at 1e-3 (without the MLP: 0.540 at
# 5e-3, 0.756 at 2e-2); prompt tuning 0.731 at 3e-2 (200 steps).
LEARNING_RATES = {"lora": 2e-3, "qlora": 2e-3, "prefix": 1e-3, "prompt": 3e-2}
PROMPT_INITS = ("vocab", "text")


@dataclass(frozen=True)
class AdapterConfig:
    method: str = "lora"
    # LoRA / QLoRA (Hu et al. §4.1: r = 8 on W_q and W_v is the paper's GPT-3 choice, α = 2r a common one)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input (peft's lora_dropout)
    targets: str = "w_q,w_v"  # comma-separated module names (see ``targets``)
    block: int = BLOCK  # QLoRA: numbers per NF4 absmax block
    double_quant: bool = True  # QLoRA: quantize the block constants too
    # prefix tuning (Li & Liang: reparameterized through an MLP while training)
    prefix_len: int = 20
    prefix_hidden: int = 512  # the MLP's width; 0 = no reparameterization
    # prompt tuning (Lester et al.: initialised from vocabulary embeddings)
    prompt_len: int = 20
    prompt_init: str = "vocab"  # "vocab": sampled words; "text": the tokens of ``prompt_ids``
    prompt_ids: str = ""  # token ids of the init text, comma-separated (the task's tokenizer makes them)
    train: str = ""  # comma-separated modules trained in full beside the adapter (e.g. "classifier")
    seed: int = 0  # the adapter's initial values

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.r < 1:
            raise ValueError(f"r: the LoRA rank must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha: expected > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected 0 <= p < 1, got {self.dropout}")
        for name in ("prefix_len", "prompt_len", "block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.prefix_hidden < 0:
            raise ValueError(f"prefix_hidden: expected >= 0 (0: no reparameterization), got {self.prefix_hidden}")
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(f"prompt_init: expected one of {PROMPT_INITS}, got {self.prompt_init!r}")
        if self.prompt_init == "text" and not self.prompt_ids:
            raise ValueError("prompt_init='text' needs the text's token ids (prompt_ids)")
        parse_targets(self.targets)

    @property
    def trained_modules(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.train.split(",") if t.strip())


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({100 * self.fraction:.3f}%)"


def attention_shape(model: nn.Module, method: str) -> tuple[int, int, int]:
    """(self-attention layers, heads, head width) of a model with prefix and prompt slots; an
    encoder-decoder's layers are its encoder's, then its decoder's."""
    c = model.config
    if not hasattr(model, "prefix"):
        raise ValueError(f"{method} tuning: supported for BERT, GPT and encoder-decoder models, not "
                         f"{type(model).__name__}")
    n_layers = c.n_layers if hasattr(c, "n_layers") else c.n_encoder_layers + c.n_decoder_layers
    return n_layers, c.n_heads, c.d_model // c.n_heads


def _token_table(model: nn.Module) -> torch.Tensor:
    """The input token embeddings a soft prompt lives among (an encoder-decoder's: the source's)."""
    embed = model.embed if hasattr(model, "embed") else model.src_embed
    return embed.token.weight


def _in_trained(name: str, trained: tuple[str, ...]) -> bool:
    """Whether module or parameter ``name`` is (inside) one of the ``trained`` modules."""
    parts = name.split(".")
    return any(matches(".".join(parts[:i]), t) for i in range(1, len(parts) + 1) for t in trained)


def _embedding_tables(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, TokenEmbedding))}


def apply_adapter(model: nn.Module, cfg: AdapterConfig) -> nn.Module:
    """Add the adapter of ``cfg`` to ``model`` (in place) and freeze the rest. Returns the model."""
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError(f"model already has a {model.adapter_config.method} adapter; merge it or start from the base")
    trained = cfg.trained_modules
    if trained:
        find_linears(model, trained, kinds=(nn.Module,))  # each name must exist
    generator = torch.Generator().manual_seed(cfg.seed)
    state = torch.random.get_rng_state()
    torch.random.manual_seed(cfg.seed)  # nn.init draws from the global generator
    try:
        if cfg.method in ("lora", "qlora"):
            tables = _embedding_tables(model)
            if cfg.method == "qlora":  # every frozen Linear in NF4, except one tied to the embeddings (it is one)
                for name, m in list(model.named_modules()):
                    if type(m) is nn.Linear and name and not _in_trained(name, trained) and id(m.weight) not in tables:
                        set_module(model, name, NF4Linear(m, cfg.block, cfg.double_quant))
            found = find_linears(model, parse_targets(cfg.targets), (nn.Linear, NF4Linear))
            for name in found:
                if id(getattr(model.get_submodule(name), "weight", None)) in tables:
                    raise ValueError(f"target: {name}'s weight is the token-embedding table (tied); a LoRA there "
                                     "could not be merged without changing the embeddings; choose other layers")
            adapted = [name for name in found if not _in_trained(name, trained)]
            if not adapted:  # (it trained, then failed to save: "the model has no LoRA layers")
                raise ValueError(f"target: {cfg.targets!r} matches only {', '.join(found)}, in the head that trains in "
                                 "full; choose layers of the model, such as w_q,w_v")
            for name in adapted:
                set_module(model, name, LoRALinear(model.get_submodule(name), cfg.r, cfg.alpha, cfg.dropout))
        elif cfg.method == "prefix":
            n_layers, n_heads, d_head = attention_shape(model, "prefix")
            model.prefix = PrefixTuning(n_layers, n_heads, d_head, cfg.prefix_len, cfg.prefix_hidden or None)
        else:
            attention_shape(model, "prompt")
            table = _token_table(model)
            if cfg.prompt_init == "vocab":
                model.prompt = SoftPrompt.from_vocab(table, cfg.prompt_len, generator)
            else:
                ids = [int(i) for i in cfg.prompt_ids.split(",") if i.strip()]
                model.prompt = SoftPrompt.from_text(table, ids, cfg.prompt_len)
        device = next(model.parameters()).device
        model.to(device)
    finally:
        torch.random.set_rng_state(state)
    freeze_except_adapter(model, trained)
    model.adapter_config = cfg
    return model


def is_adapter_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or name.startswith(("prefix.", "prompt."))


def freeze_except_adapter(model: nn.Module, trained: tuple[str, ...] = ()) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_parameter(name) or _in_trained(name, trained))


def parameter_counts(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters (tied tensors once; an NF4 weight counts its numbers)."""
    params = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in params if p.requires_grad)
    quantized = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))
    return ParameterCount(trainable, sum(p.numel() for p in params) + quantized)


def fold_prefix(model: nn.Module) -> None:
    """Replace a prefix's reparameterization MLP by the table it computes (inference, saving)."""
    if getattr(model, "prefix", None) is not None and model.prefix.transform is not None:
        model.prefix.fold()
        model.adapter_config = replace(model.adapter_config, prefix_hidden=0)
        freeze_except_adapter(model, model.adapter_config.trained_modules)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its layer and put plain Linear layers back (a QLoRA base is
    dequantized first: the merged model is full precision). Prefix and prompt adapters stay."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            if isinstance(m.base, NF4Linear):
                m.base = m.base.to_linear()
            m.merge()
            set_module(model, name, m.base)
    for name, m in list(model.named_modules()):
        if isinstance(m, NF4Linear):
            set_module(model, name, m.to_linear())
    cfg = getattr(model, "adapter_config", None)
    if cfg is not None and cfg.method in ("lora", "qlora"):
        model.adapter_config = None
    return model


__all__ = ["AdapterConfig", "LoRALinear", "NF4Linear", "ParameterCount", "PrefixTuning", "SoftPrompt", "apply_adapter",
           "fold_prefix", "freeze_except_adapter", "merge_lora", "parameter_counts"]
