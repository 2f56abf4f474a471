"""Named model sizes, in one table.

``base`` and ``big`` are Table 3 of the paper (shared 37,000-token BPE vocabulary, as for WMT'14
En-De). The small presets train on 2 CPU cores; their vocabulary is set by the data.
"""

from __future__ import annotations

from typing import Any

from transformer_lab.config import from_dict
from transformer_lab.models.bert import BertConfig
from transformer_lab.models.gpt import GPTConfig
from transformer_lab.models.transformer import TransformerConfig

PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017, Table 3: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1 -> 65 M params.
    "base": dict(d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6, dropout=0.1),
    # Table 3 "big": d_model=1024, d_ff=4096, h=16, P_drop=0.3 -> 213 M params. The attention weights keep
    # 0.1, as tensor2tensor's transformer_big (only its residual dropout is 0.3).
    "big": dict(d_model=1024, n_heads=16, d_ff=4096, n_encoder_layers=6, n_decoder_layers=6, dropout=0.3,
                attention_dropout=0.1),
    # Small models for 2 CPU cores; the synthetic demo uses "tiny".
    "tiny": dict(d_model=128, n_heads=4, d_ff=512, n_encoder_layers=2, n_decoder_layers=2, dropout=0.1, max_len=64),
    # Multi30k on 2 CPU cores (29,000 pairs, a joint 8,000-token vocabulary): about 6 M parameters.
    "multi30k": dict(d_model=256, n_heads=8, d_ff=512, n_encoder_layers=3, n_decoder_layers=3, dropout=0.1, max_len=256),
    "small": dict(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3, n_decoder_layers=3, dropout=0.1, max_len=256),
}


def preset(name: str, **overrides: Any) -> TransformerConfig:
    """The config of preset ``name`` with ``overrides`` applied (unknown keys are an error)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    return from_dict(TransformerConfig, values, where=f"preset {name!r}")




GPT_PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 small (124 M): 12 layers, 12 heads, 768 wide, context 1024, 50,257 byte-level BPE tokens.
    "gpt2": dict(vocab_size=50257, max_len=1024, d_model=768, n_heads=12, n_layers=12, d_ff=3072, eos_id=50256),
    # nanoGPT's shakespeare-char CPU configuration (its README): 4 layers, 4 heads, 128 wide,
    # context 64, dropout 0; the vocabulary (65 characters) is set by the data.
    "shakespeare-char": dict(max_len=64, d_model=128, n_heads=4, n_layers=4, d_ff=512, dropout=0.0,
                             attention_dropout=0.0),
    # nanoGPT's shakespeare-char GPU configuration (config/train_shakespeare_char.py): 6 layers, 6 heads,
    # 384 wide, context 256, dropout 0.2 (deviation: biases in every Linear and LayerNorm, as GPT-2; nanoGPT's
    # bias=False saves 0.3% of the parameters).
    "shakespeare-char-gpu": dict(max_len=256, d_model=384, n_heads=6, n_layers=6, d_ff=1536, dropout=0.2,
                                 attention_dropout=0.2),
    # A small subword LM for 2 CPU cores (--preset lm); the vocabulary is set by the tokenizer.
    "gpt-tiny": dict(max_len=128, d_model=128, n_heads=4, n_layers=4, d_ff=512, dropout=0.1, attention_dropout=0.1),
}

BERT_PRESETS: dict[str, dict[str, Any]] = {
    "bert-base": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072),  # 110 M
    "bert-mini": dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024),  # Turc et al. 2019's BERT-Mini
}


def gpt_preset(name: str, **overrides: Any) -> GPTConfig:
    if name not in GPT_PRESETS:
        raise ValueError(f"preset: unknown GPT preset {name!r}; expected one of {sorted(GPT_PRESETS)}")
    return from_dict(GPTConfig, {**GPT_PRESETS[name], **overrides}, where=f"preset {name!r}")


def bert_preset(name: str, **overrides: Any) -> BertConfig:
    if name not in BERT_PRESETS:
        raise ValueError(f"preset: unknown BERT preset {name!r}; expected one of {sorted(BERT_PRESETS)}")
    return from_dict(BertConfig, {**BERT_PRESETS[name], **overrides}, where=f"preset {name!r}")
