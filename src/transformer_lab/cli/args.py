"""Argument helpers shared by the commands: checked number types (a bad value is an argparse error
naming the flag, before any work), the run-folder options, and text input from stdin."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformer_lab.tasks.common import RunOptions
from transformer_lab.tokenizers.corpus import decode_lines


def _number(kind: type, low: float, inclusive: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value >= low if inclusive else value > low) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, 0, False, "an integer >= 1")
non_negative_int = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0.0, False, "a number > 0")
non_negative_float = _number(float, 0.0, True, "a number >= 0")


def probability(text: str) -> float:
    value = non_negative_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text}")
    return value


def add_run_args(p: argparse.ArgumentParser, out_required: bool = False) -> None:
    """--out, --resume, --overwrite, --device, --seed, --no-progress."""
    g = p.add_argument_group("run")
    g.add_argument("--out", required=out_required, default=None, help="run folder: checkpoints, metrics, plots")
    g.add_argument("--resume", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="continue this run (its checkpoints/last) or checkpoint folder exactly where it stopped")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that holds an earlier run (removes its checkpoints, metrics, plots)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--seed", type=non_negative_int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_options(args: argparse.Namespace, default_out: str | None = None) -> RunOptions:
    return RunOptions(out=Path(args.out or default_out), resume=Path(args.resume) if args.resume else None,
                      overwrite=args.overwrite, device=args.device)


def add_split_special_tokens(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split-special-tokens", action="store_true", default=None,
                   help='treat "[MASK]", "[SEP]", "<|endoftext|>" ... in the text as ordinary text (default: as the '
                        "model folder's tokenizer does, which for Hugging Face folders means special tokens)")


def texts_or_stdin(texts: list[str], what: str) -> list[str]:
    """The TEXT arguments, else the lines of stdin (UTF-8, checked)."""
    out = texts or list(decode_lines(sys.stdin.buffer, "stdin"))
    if not out:
        raise ValueError(f"TEXT: nothing to {what} (give TEXT arguments or lines on stdin)")
    return out
