"""`transformer-lab tokenizer train|encode`: learn a subword vocabulary, or encode stdin with one."""

from __future__ import annotations

import argparse
import logging
import sys
import time

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
    t.add_argument("--algo", required=True, choices=["bpe", "bytelevel", "wordpiece"])
    t.add_argument("--vocab-size", type=int, help="final vocabulary size (bytelevel, wordpiece)")
    t.add_argument("--merges", type=int, help="number of merge operations (bpe)")
    t.add_argument("--min-frequency", type=int, default=2, help="ignore pairs (bpe, bytelevel) or words (wordpiece) rarer than this")
    t.add_argument("--cased", action="store_true", help="wordpiece: keep case and accents")
    t.add_argument("--out", required=True, help="output folder")
    t.set_defaults(func=train)

    e = tsub.add_parser("encode", help="encode lines from stdin",
                        description="Read lines on stdin, print one line of space-separated ids per input line "
                                    "(--tokens: the pieces). PATH: a folder we wrote, a tokenizer.json, or a BERT "
                                    "vocab.txt (WordPiece, lowercased unless --cased).")
    e.add_argument("--tokenizer", required=True, metavar="PATH")
    e.add_argument("--tokens", action="store_true", help="print pieces instead of ids")
    e.add_argument("--cased", action="store_true", help="vocab.txt: a cased BERT vocabulary")
    e.add_argument("--allow-special", action="store_true", help='treat "[SEP]", "<|endoftext|>" ... in the text as special tokens')
    e.set_defaults(func=encode)


def train(args: argparse.Namespace) -> int:
    from transformer_lab.tokenizers.io import read_corpus

    if args.algo == "bpe":
        if args.merges is None or args.merges < 1:
            raise ValueError(f"--merges: bpe needs a positive number of merges, got {args.merges}")
        if args.vocab_size is not None:
            raise ValueError("--vocab-size: bpe is sized by --merges (as subword-nmt's -s)")
    elif args.vocab_size is None or args.vocab_size < 1:
        raise ValueError(f"--vocab-size: {args.algo} needs a positive vocabulary size, got {args.vocab_size}")
    lines = read_corpus(args.files)
    t0 = time.perf_counter()
    if args.algo == "bpe":
        from transformer_lab.tokenizers.bpe import BPETokenizer

        tok = BPETokenizer.train(lines, args.merges, min_frequency=args.min_frequency)
    elif args.algo == "bytelevel":
        from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer.train(lines, args.vocab_size, min_frequency=args.min_frequency)
    else:
        from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

        tok = WordPieceTokenizer.train(lines, args.vocab_size, lowercase=not args.cased, min_frequency=args.min_frequency)
    out = tok.save(args.out)
    log.info("%s: %d lines, vocabulary %d, %.1f s -> %s", args.algo, len(lines), tok.vocab_size,
             time.perf_counter() - t0, out)
    return 0


def encode(args: argparse.Namespace) -> int:
    from transformer_lab.tokenizers.io import decode_lines, load_tokenizer

    tok = load_tokenizer(args.tokenizer, cased=args.cased)
    out = sys.stdout
    for line in decode_lines(sys.stdin.buffer, "stdin"):
        if args.tokens:
            out.write(" ".join(tok.tokenize(line, allow_special=args.allow_special)) + "\n")
        else:
            out.write(" ".join(map(str, tok.encode(line, allow_special=args.allow_special))) + "\n")
    return 0
