"""`transformer-lab tokenizer train|encode`: learn a subword vocabulary, or encode stdin with one."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from transformer_lab.cli.args import add_split_special_tokens, positive_int
from transformer_lab.files import check_new_folder
from transformer_lab.tokenizers.bpe import BPETokenizer
from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
from transformer_lab.tokenizers.corpus import decode_lines, read_corpus
from transformer_lab.tokenizers.io import load_tokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

log = logging.getLogger("transformer_lab")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train subword tokenizers and encode text",
                       description="Subword tokenizers: BPE (subword-nmt compatible), byte-level BPE (GPT-2), WordPiece (BERT).")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    t = tsub.add_parser("train", help="learn a tokenizer from text files",
                        description="Learn a tokenizer from UTF-8 text files (plain or .gz), one sentence per line. "
                                    "bpe takes --merges (as subword-nmt's -s) and writes merges.txt with the </w> "
                                    "convention; bytelevel and wordpiece take --vocab-size.")
    t.add_argument("files", nargs="+", metavar="FILE")
    t.add_argument("--algo", required=True, choices=["bpe", "bytelevel", "wordpiece"],
                   help="bpe: subword-nmt's; bytelevel: GPT-2's; wordpiece: BERT's")
    t.add_argument("--vocab-size", type=positive_int, help="final vocabulary size (bytelevel, wordpiece)")
    t.add_argument("--merges", type=positive_int, help="number of merge operations (bpe)")
    t.add_argument("--min-frequency", type=positive_int, default=2,
                   help="merge no pair seen fewer times than this")
    t.add_argument("--cased", action="store_true", help="wordpiece: keep case and accents")
    t.add_argument("--out", required=True, help="output folder (new or empty)")
    t.add_argument("--overwrite", action="store_true", help="write into a folder that holds files (the tokenizer's "
                                                            "own are replaced, nothing else is removed)")
    t.set_defaults(func=train)

    e = tsub.add_parser("encode", help="encode lines from stdin",
                        description="Read lines on stdin, print one line of space-separated ids per input line "
                                    "(--tokens: the pieces). PATH: a folder we wrote, a Hugging Face folder or "
                                    "tokenizer.json, or a BERT vocab.txt (WordPiece, lowercased unless --cased). "
                                    "Literal special-token text is read as the tokenizer says: ordinary text for "
                                    "ours, the special token for Hugging Face files (as transformers does).")
    e.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="a folder tokenizer train wrote, a Hugging Face folder or tokenizer.json, or a vocab.txt")
    e.add_argument("--tokens", action="store_true", help="print pieces instead of ids")
    e.add_argument("--cased", action="store_true", default=None, help="vocab.txt: a cased BERT vocabulary")
    mode = e.add_mutually_exclusive_group()
    mode.add_argument("--allow-special", action="store_true", help='read "[SEP]", "<|endoftext|>" ... in the text as special tokens')
    add_split_special_tokens(mode)
    e.set_defaults(func=encode)


def train(args: argparse.Namespace) -> int:
    if args.algo == "bpe":
        if args.merges is None:
            raise ValueError("--merges: bpe needs a positive number of merges")
        if args.vocab_size is not None:
            raise ValueError("--vocab-size: bpe is sized by --merges (as subword-nmt's -s)")
    elif args.vocab_size is None:
        raise ValueError(f"--vocab-size: {args.algo} needs a positive vocabulary size")
    if args.cased and args.algo != "wordpiece":
        raise ValueError(f"--cased: for wordpiece (which lowercases by default); {args.algo} always keeps case")
    check_new_folder(args.out, args.overwrite, "--overwrite to write the tokenizer into it")
    lines = read_corpus(args.files)
    t0 = time.perf_counter()
    if args.algo == "bpe":
        tok = BPETokenizer.train(lines, args.merges, min_frequency=args.min_frequency)
    elif args.algo == "bytelevel":
        tok = ByteLevelBPETokenizer.train(lines, args.vocab_size, min_frequency=args.min_frequency)
    else:
        tok = WordPieceTokenizer.train(lines, args.vocab_size, lowercase=not args.cased, min_frequency=args.min_frequency)
    out = tok.save(args.out)
    log.info("%s: %d lines, vocabulary %d, %.1f s -> %s", args.algo, len(lines), tok.vocab_size,
             time.perf_counter() - t0, out)
    return 0


def encode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer, cased=args.cased, split_special_tokens=args.split_special_tokens)
    allow = True if args.allow_special else None  # None: the tokenizer's own setting
    out = sys.stdout
    for line in decode_lines(sys.stdin.buffer, "stdin"):
        if args.tokens:
            out.write(" ".join(tok.tokenize(line, allow_special=allow)) + "\n")
        else:
            out.write(" ".join(map(str, tok.encode(line, allow_special=allow))) + "\n")
    return 0
