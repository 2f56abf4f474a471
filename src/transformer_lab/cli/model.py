"""`transformer-lab model summary`: parameter counts of a preset."""

from __future__ import annotations

import argparse
import json

from transformer_lab.cli.args import positive_int
from transformer_lab.models.presets import PRESETS, preset
from transformer_lab.models.summary import format_summary, parameter_summary
from transformer_lab.models.transformer import Transformer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model presets", description="Inspect model presets.")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    s = msub.add_parser("summary", help="parameter count per component",
                        description="Build a preset (random weights) and count its parameters by component.")
    s.add_argument("--preset", default="base", choices=sorted(PRESETS))
    s.add_argument("--vocab-size", type=positive_int, default=None, help="shared vocabulary size (default: the preset's)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=summary)


def summary(args: argparse.Namespace) -> int:
    overrides = {}
    if args.vocab_size is not None:
        overrides = dict(src_vocab_size=args.vocab_size, tgt_vocab_size=args.vocab_size)
    cfg = preset(args.preset, **overrides)
    result = {"preset": args.preset, **parameter_summary(Transformer(cfg))}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"preset {args.preset}: d_model={cfg.d_model} h={cfg.n_heads} d_ff={cfg.d_ff} "
              f"N={cfg.n_encoder_layers}/{cfg.n_decoder_layers} vocab={cfg.src_vocab_size}")
        print(format_summary(result))
    return 0
