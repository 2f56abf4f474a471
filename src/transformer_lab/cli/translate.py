"""`transformer-lab translate` and `transformer-lab evaluate`: decode with a trained checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from transformer_lab.cli.args import (add_device, add_split_special_tokens, non_negative_float, positive_int,
                                      refuse_unused, texts_or_stdin)
from transformer_lab.files import check_writable
from transformer_lab.runtime import choose_device
from transformer_lab.tasks import lm, translation

log = logging.getLogger("transformer_lab")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("translate", help="translate sentences with a checkpoint",
                       description="Translate TEXT arguments, or stdin one sentence per line when no TEXT is given "
                                   "(one output line per input line; a blank line gives a blank line).")
    t.add_argument("text", nargs="*", metavar="TEXT")
    _common(t)
    t.add_argument("--plot-attention", default=None, metavar="PNG",
                   help="cross-attention of the last decoder layer for the first sentence, one panel per head")
    t.set_defaults(func=translate_cmd)

    e = sub.add_parser("evaluate", help="BLEU/chrF of a translation checkpoint, or loss/perplexity of a language model",
                       description="Translation: translate every line of --src and score against --ref with sacrebleu "
                                   "(detokenised, cased). Language model (GPT): --text FILE gives loss and perplexity.")
    _common(e)
    e.add_argument("--src", default=None, help="source sentences, one per line (plain or .gz)")
    e.add_argument("--ref", default=None, help="reference translations, aligned with --src")
    e.add_argument("--text", default=None, help="GPT: a text file to score (loss per token, perplexity)")
    e.add_argument("--context", type=positive_int, default=None,
                   help="GPT: window length (default: the model's max_len; relative positions allow more)")
    e.add_argument("--memory", type=positive_int, default=None,
                   help="GPT with relative positions: read in segments of --context, each also attending to this many "
                        "positions before it (Transformer-XL's recurrence)")
    e.add_argument("--band", type=positive_int, default=None,
                   help="GPT: also the loss per band of this many positions (e.g. the training length)")
    add_split_special_tokens(e)
    e.add_argument("--out", default=None, help="also write the translations to this file (one line per --src line)")
    e.add_argument("--json", action="store_true", help='print one JSON object: {"bleu", "chrf", "signature", ...}')
    e.set_defaults(func=evaluate_cmd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (uses checkpoints/best, else last)")
    p.add_argument("--beam", type=positive_int, default=None, help="beam size (1: greedy; default 4)")
    p.add_argument("--alpha", type=non_negative_float, default=None, help="length penalty α (default 0.6)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--no-cache", action="store_true", help="decode without the KV cache (slower; for comparison)")
    p.add_argument("--static-cache", action="store_true",
                   help="keys and values in buffers allocated once for the call (every step the same shapes)")
    p.add_argument("--compile", action="store_true",
                   help="the decoding step under torch.compile, with the static cache (CUDA graphs on a GPU); "
                        "the first steps compile (tens of seconds)")
    add_device(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal)")


def translate_cmd(args: argparse.Namespace) -> int:
    if args.plot_attention:  # (before any work: matplotlib picks the format from the suffix)
        from matplotlib.figure import Figure
        kinds = Figure().canvas.get_supported_filetypes()
        if Path(args.plot_attention).suffix.lstrip(".").lower() not in kinds:
            raise ValueError(f"--plot-attention {args.plot_attention}: the suffix names the image format; one of "
                             f"{', '.join('.' + k for k in sorted(kinds))}")
        check_writable(args.plot_attention, "--plot-attention")
    sentences = texts_or_stdin(args.text, "translate")
    if args.plot_attention and not sentences[0].strip():  # (it failed after translating everything)
        raise ValueError("--plot-attention: the first sentence, whose attention it draws, is blank")
    search = _search(args)
    model, tok_src, tok_tgt = translation.load_translator(args.checkpoint, choose_device(args.device))
    outputs = translation.translate(model, tok_src, tok_tgt, sentences, **search,
                                    batch_size=args.batch_size, use_cache=not args.no_cache,
                                    static_cache=args.static_cache, compile=args.compile,
                                    progress=not args.no_progress)
    for line in outputs:
        print(line)
    if args.plot_attention:
        translation.plot_attention(model, tok_src, tok_tgt, sentences[0], args.plot_attention, **search)
        log.info("wrote %s", args.plot_attention)
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    device = choose_device(args.device)
    if args.text:
        return _evaluate_lm(args, device)
    if not (args.src and args.ref):
        raise ValueError("--src/--ref: a translation checkpoint needs both (a language model: --text FILE)")
    refuse_unused("a translation's BLEU: they read a language model's --text", context=args.context, band=args.band,
            memory=args.memory)
    if args.out:
        check_writable(args.out, "--out")
    model, tok_src, tok_tgt = translation.load_translator(args.checkpoint, device)
    scores, hyps = translation.evaluate(model, tok_src, tok_tgt, args.src, args.ref, **_search(args),
                                        batch_size=args.batch_size, use_cache=not args.no_cache,
                                        static_cache=args.static_cache, compile=args.compile,
                                        progress=not args.no_progress)
    if args.out:
        Path(args.out).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        log.info("wrote %d translations to %s", len(hyps), args.out)
    if args.json:
        print(json.dumps(scores))
    else:
        print(f"BLEU {scores['bleu']:.2f}  ({scores['signature']})")
        print(f"chrF {scores['chrf']:.2f}  ({scores['chrf_signature']})")
        print(f"{scores['sentences']} sentences ({scores['blank_sources']} blank, {scores['truncated_sources']} cut to the "
              "model's length)")
    return 0


def _search(args: argparse.Namespace) -> dict:
    """The beam search's settings: the options given, else the defaults (beam 4, α 0.6)."""
    if args.beam == 1:  # greedy search ranks no hypotheses (--alpha was ignored)
        refuse_unused("--beam 1 (greedy: no hypotheses to rank by length)", alpha=args.alpha)
    return {"beam": 4 if args.beam is None else args.beam, "alpha": 0.6 if args.alpha is None else args.alpha}


def _evaluate_lm(args: argparse.Namespace, device) -> int:
    if args.static_cache or args.compile:
        raise ValueError("--static-cache/--compile: for translation; a language model's loss reads whole windows "
                         "(no decoding; `generate` has them)")
    refuse_unused("a language model's --text (they are a translation's)", src=args.src, ref=args.ref, out=args.out,
            beam=args.beam, alpha=args.alpha, no_cache=args.no_cache)
    model, tok = lm.load_lm(args.checkpoint, device, args.split_special_tokens)
    res = lm.evaluate_file(model, tok, args.text, args.context, args.batch_size, args.band, args.memory,
                           progress=not args.no_progress)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"loss {res['loss']:.4f} nats/token  perplexity {res['perplexity']:.2f}  ({res['tokens']:,} tokens, "
              f"context {res['context']}{', memory ' + str(res['memory']) if 'memory' in res else ''})")
        for b in res.get("loss_by_band", []):
            print(f"  positions {b['from']:>6}-{b['to'] - 1:<6} loss {b['loss']:.4f}")
    return 0
