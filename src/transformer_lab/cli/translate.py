"""`transformer-lab translate` and `transformer-lab evaluate`: decode with a trained checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger("transformer_lab")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("translate", help="translate sentences with a checkpoint",
                       description="Translate TEXT arguments, or stdin one sentence per line when no TEXT is given.")
    t.add_argument("text", nargs="*", metavar="TEXT")
    _common(t)
    t.add_argument("--plot-attention", default=None, metavar="PNG",
                   help="cross-attention of the last decoder layer for the first sentence, one panel per head")
    t.set_defaults(func=translate_cmd)

    e = sub.add_parser("evaluate", help="BLEU/chrF of a translation checkpoint, or loss/perplexity of a language model",
                       description="Translation: translate --src and score against --ref with sacrebleu (detokenised, "
                                   "cased). Language model (GPT): --text FILE gives loss and perplexity.")
    _common(e)
    e.add_argument("--src", default=None, help="source sentences, one per line (plain or .gz)")
    e.add_argument("--ref", default=None, help="reference translations, aligned with --src")
    e.add_argument("--text", default=None, help="GPT: a text file to score (loss per token, perplexity)")
    e.add_argument("--context", type=int, default=None, help="GPT: window length (default: the model's max_len)")
    e.add_argument("--out", default=None, help="also write the translations to this file")
    e.add_argument("--json", action="store_true", help='print one JSON object: {"bleu", "chrf", "signature", ...}')
    e.set_defaults(func=evaluate_cmd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (uses checkpoints/best, else last)")
    p.add_argument("--beam", type=int, default=4, help="beam size (1: greedy)")
    p.add_argument("--alpha", type=float, default=0.6, help="length penalty α")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-cache", action="store_true", help="decode without the KV cache (slower; for comparison)")
    p.add_argument("--device", default=None)


def _resolve(path: str) -> Path:
    p = Path(path)
    for sub in ("checkpoints/best", "checkpoints/last"):
        if (p / sub / "config.json").is_file():
            return p / sub
    return p


def _load(args):
    from transformer_lab.tasks.translation import load_tokenizers
    from transformer_lab.training.checkpoint import load_model

    if args.beam < 1:
        raise ValueError(f"--beam: expected >= 1, got {args.beam}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(_resolve(args.checkpoint), map_location=device)
    tok_src, tok_tgt = load_tokenizers(loaded.path)
    return loaded.model.eval(), tok_src, tok_tgt


def translate_cmd(args: argparse.Namespace) -> int:
    from transformer_lab.tasks.translation import translate
    from transformer_lab.tokenizers.io import decode_lines

    model, tok_src, tok_tgt = _load(args)
    sentences = args.text or list(decode_lines(sys.stdin.buffer, "stdin"))
    outputs = translate(model, tok_src, tok_tgt, sentences, beam=args.beam, alpha=args.alpha,
                        batch_size=args.batch_size, use_cache=not args.no_cache)
    for line in outputs:
        print(line)
    if args.plot_attention and sentences:
        plot_attention(model, tok_src, tok_tgt, sentences[0], args.plot_attention)
        log.info("wrote %s", args.plot_attention)
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    from transformer_lab.data.parallel import read_parallel
    from transformer_lab.tasks.translation import corpus_scores, translate

    if args.text:
        from transformer_lab.cli.gpt import evaluate_lm_cmd

        return evaluate_lm_cmd(args)
    if not (args.src and args.ref):
        raise ValueError("--src/--ref: a translation checkpoint needs both (a language model: --text FILE)")
    model, tok_src, tok_tgt = _load(args)
    data = read_parallel(args.src, args.ref)
    hyps = translate(model, tok_src, tok_tgt, data.src, beam=args.beam, alpha=args.alpha,
                     batch_size=args.batch_size, use_cache=not args.no_cache)
    if args.out:
        Path(args.out).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    scores = {**corpus_scores(hyps, data.tgt), "sentences": len(hyps), "beam": args.beam}
    if args.json:
        print(json.dumps(scores))
    else:
        print(f"BLEU {scores['bleu']:.2f}  ({scores['signature']})")
        print(f"chrF {scores['chrf']:.2f}  ({scores['chrf_signature']})")
    return 0


def plot_attention(model, tok_src, tok_tgt, sentence: str, path: str) -> None:
    """Greedy-decode one sentence while recording the last layer's cross-attention, then draw each
    head: output tokens down, source tokens across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transformer_lab.generation.search import Seq2SeqStep, greedy_search
    from transformer_lab.tasks.translation import BOS, EOS

    device = next(model.parameters()).device
    src_ids = tok_src.encode(sentence)[: model.config.max_len - 2] + [EOS]
    src = torch.tensor([src_ids], device=device)
    step = Seq2SeqStep(model, src, use_cache=True, record_cross_attention=True)
    res = greedy_search(step, 1, BOS, EOS, min(len(src_ids) + 50, model.config.max_len - 1))
    out_ids = res.tokens[0] + [EOS]
    weights = torch.cat(step.cross_attention[: len(out_ids)], dim=2)[0].float().cpu()  # (H, T_out, S)
    src_labels, out_labels = _labels(tok_src, src_ids), _labels(tok_tgt, out_ids)
    h = weights.size(0)
    cols = min(4, h)
    rows = (h + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 0.28 * len(out_labels) * rows + 2), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= h:
            ax.axis("off")
            continue
        ax.imshow(weights[k].numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_title(f"head {k + 1}", fontsize=9)
        ax.set_xticks(range(len(src_labels)), src_labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(out_labels)), out_labels if k % cols == 0 else [""] * len(out_labels), fontsize=7)
    fig.suptitle(f"cross-attention, last decoder layer\n{sentence}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _labels(tok, ids: list[int]) -> list[str]:
    """Readable piece labels: byte-level pieces decoded one by one (Ġ shown as a space)."""
    if tok.algorithm == "bytelevel":
        return [tok.decode([i], skip_special=False) for i in ids]
    return [tok.id_to_token[i] for i in ids]
