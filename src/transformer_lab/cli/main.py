"""`transformer-lab`: one command, one sub-command per job (`transformer-lab COMMAND --help`).

The CLI only turns arguments into configs, calls the tasks, and prints; errors a user can fix
(bad input, files, a diverged loss, a busy run folder) are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from transformer_lab import __version__
from transformer_lab.cli import (bench, bert, explain, export, finetune, generate, model, quantize, serve, tokenizer,
                                 train, translate)
from transformer_lab.runs import exit_code
from transformer_lab.runtime.signals import Interrupted


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors do not bury their one line under a usage of 30-odd lines (a long
    usage is named, not printed: --help has it). Sub-command parsers are of the same class."""

    def error(self, message: str):
        usage = self.format_usage()
        if usage.count("\n") > 4:
            usage = f"usage: {self.prog} [options]   ({self.prog} --help: every option)\n"
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="transformer-lab",
        description="The Transformer family from scratch: train, inspect and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train, translate, generate, bert, finetune, quantize, export, serve, model, tokenizer, bench, explain):
        module.register(sub)
    show_defaults(parser)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's help ends with its default, unless it has none (None, off) or the help already says it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                show_defaults(child)
            continue
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or default == []  # (identity: 0 and 0.0 are defaults to show, though they equal False)
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                or "default" in (action.help or "").lower() or action.help == argparse.SUPPRESS):
            continue
        action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)sub-command's own parser: ``finetune classify``'s, say, for its usage in an error."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name is None or name not in subs[0].choices:
            return parser
        parser = subs[0].choices[name]


def message(e: BaseException) -> str:
    """An error as one line for the user: an OS error without Python's "[Errno N]" prefix (its file named
    first, when it has one)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename is not None else e.strerror
    return str(e)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # a bare `transformer-lab`: what it can do
        parser.print_help()
        return 0
    args, extras = parser.parse_known_args(argv)
    if extras:  # named by the sub-command that was given them, with its usage (argparse: the top level's)
        chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
    threads = torch.get_num_threads()
    if getattr(args, "threads", None):  # (--threads: the training commands, and those that run a model)
        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, EOFError, ArithmeticError) as e:  # bad input, files, NaN loss
        print(f"transformer-lab {args.command}: error: {message(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:  # a signal in work that had no more specific way to stop
        print(f"transformer-lab {args.command}: stopped by signal {e.signum}", file=sys.stderr)
        return exit_code(e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)  # (main called in-process, as tests and notebooks do, leaves them as found)


if __name__ == "__main__":
    raise SystemExit(main())
