"""Named model sizes, in one table.

``base`` and ``big`` are Table 3 of the paper (shared 37,000-token BPE vocabulary, as for WMT'14
En-De). The small presets train on 2 CPU cores; their vocabulary is set by the data.
"""

from __future__ import annotations

from typing import Any

from transformer_lab.config import from_dict
from transformer_lab.models.transformer import TransformerConfig

PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017, Table 3: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1 -> 65 M params.
    "base": dict(d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6, dropout=0.1),
    # Table 3 "big": d_model=1024, d_ff=4096, h=16, P_drop=0.3 -> 213 M params.
    "big": dict(d_model=1024, n_heads=16, d_ff=4096, n_encoder_layers=6, n_decoder_layers=6, dropout=0.3),
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


