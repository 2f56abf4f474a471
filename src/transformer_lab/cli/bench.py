"""`transformer-lab bench model`: our encoder-decoder against torch.nn.Transformer, same sizes and
weights, run in turn in one process.

* training: forward + label-smoothed loss + backward + Adam step, target tokens per second;
* inference: eval-mode encoder forward (no grad) against nn.TransformerEncoder, source tokens/s.

Rounds alternate ours / peer, and the median round counts, so drift in the machine's speed
(turbo, another process) hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from transformer_lab.data.vocab import PAD
from transformer_lab.models.presets import PRESETS, preset
from transformer_lab.models.torch_peer import TorchTransformerPeer
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.masks import padding_mask
from transformer_lab.training.losses import label_smoothed_nll


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: ours against the peer library",
                       description="Benchmarks: ours and the peer side by side in one process.")
    bsub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    m = bsub.add_parser("model", help="encoder-decoder vs torch.nn.Transformer",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--preset", default="base", choices=sorted(PRESETS))
    m.add_argument("--batch", type=int, default=32, help="sentences per batch")
    m.add_argument("--length", type=int, default=24, help="source and target length")
    m.add_argument("--vocab-size", type=int, default=None, help="shared vocabulary (default: the preset's)")
    m.add_argument("--steps", type=int, default=5, help="timed steps per round")
    m.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    m.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=bench_model)

    tr = bsub.add_parser("translation", help="training step in the translation pipeline vs nn.Transformer",
                         description="Target tokens/s of training steps on the same Multi30k token-bucket batches "
                                     "(same sizes, weights, loss and Adam): ours vs torch.nn.Transformer, rounds "
                                     "interleaved in one process.")
    tr.add_argument("--model", default="multi30k", choices=sorted(PRESETS))
    tr.add_argument("--steps", type=int, default=6, help="batches per round")
    tr.add_argument("--rounds", type=int, default=3)
    tr.add_argument("--max-tokens", type=int, default=4000)
    tr.add_argument("--cache-dir", default=None)
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=bench_translation)

    dec = bsub.add_parser("decode", help="decoding speed with and without the KV cache",
                          description="Sentences/s translating Multi30k validation sentences, greedy and beam 4, "
                                      "with the KV cache (ours) against without it (peer: the same model "
                                      "re-running the decoder over the whole prefix each step).")
    dec.add_argument("--checkpoint", default=None, help="a trained translation checkpoint (default: untrained multi30k model)")
    dec.add_argument("--sentences", type=int, default=100)
    dec.add_argument("--beams", default="1,4")
    dec.add_argument("--cache-dir", default=None)
    dec.add_argument("--json", action="store_true")
    dec.set_defaults(func=bench_decode)

    t = bsub.add_parser("tokenizer", help="our tokenizers vs HF tokenizers on Multi30k English train",
                        description="Train each algorithm with ours and with HF tokenizers on the same corpus, then "
                                    "encode it with our readable tokenizer and with the fast backend (HF tokenizers "
                                    "built from the same vocabulary): lines/s and the ratio ours/peer.")
    t.add_argument("--algo", default="all", choices=["all", "bpe", "bytelevel", "wordpiece"])
    t.add_argument("--data", default=None, help="corpus file (default: $TRANSFORMER_LAB_DATA/multi30k/train.en.gz)")
    t.add_argument("--vocab-size", type=int, default=8000, help="bytelevel and wordpiece vocabulary")
    t.add_argument("--merges", type=int, default=8000, help="bpe merges")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=bench_tokenizer)

    from transformer_lab.cli import bench_lm

    bench_lm.register(bsub)


def _time_rounds(fns: dict[str, Callable[[], None]], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, rounds interleaved; one untimed warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def print_result(result: dict, as_json: bool, rows: list[tuple[str, dict]]) -> None:
    """One JSON object, or the scalar settings on one line and a table of ours / peer / ratio rows."""
    if as_json:
        print(json.dumps(result))
        return
    print(", ".join(f"{k} {v}" for k, v in result.items() if not isinstance(v, (dict, list)) and k not in ("ours", "peer", "ratio")))
    print(f"{'':34}{'ours':>12}{'peer':>12}{'ratio':>8}")
    for label, r in rows:
        print(f"{label:34}{r['ours']:>12,.1f}{r['peer']:>12,.1f}{r['ratio']:>8.2f}")


def _train_step(model: torch.nn.Module, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        res = label_smoothed_nll(model(src, tgt_in), tgt_out, 0.1, PAD)
        optimizer.zero_grad(set_to_none=True)
        (res.loss / res.n_tokens).backward()
        optimizer.step()

    return step


def bench_model(args: argparse.Namespace) -> int:
    for name in ("steps", "rounds", "batch", "length"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}: expected >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {} if args.vocab_size is None else dict(src_vocab_size=args.vocab_size, tgt_vocab_size=args.vocab_size)
    cfg = preset(args.preset, **overrides)
    if args.length + 1 > cfg.max_len:
        raise ValueError(f"--length: {args.length} exceeds the preset's max_len={cfg.max_len}")
    ours = Transformer(cfg)
    peer = TorchTransformerPeer(ours)  # same weights, PyTorch's layers
    v = cfg.tgt_vocab_size
    src = torch.randint(4, v, (args.batch, args.length))
    tgt = torch.randint(4, v, (args.batch, args.length + 1))
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    n_tgt = tgt_out.numel()

    ours.train(), peer.train()
    adam = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    train_t = _time_rounds(
        {
            "ours": _train_step(ours, src, tgt_in, tgt_out, torch.optim.Adam(ours.parameters(), **adam)),
            "peer": _train_step(peer, src, tgt_in, tgt_out, torch.optim.Adam(peer.parameters(), **adam)),
        },
        args.steps, args.rounds,
    )

    ours.eval(), peer.eval()
    x = ours.src_embed(src).detach()
    mask = padding_mask(src, PAD)
    pos = torch.arange(args.length)
    key_padding = src == PAD  # nn.Transformer's polarity: True = ignore

    def infer_ours() -> None:
        with torch.no_grad():
            ours.encoder(x, mask, pos)

    def infer_peer() -> None:
        with torch.no_grad():
            peer.transformer.encoder(x, src_key_padding_mask=key_padding)

    infer_t = _time_rounds({"ours": infer_ours, "peer": infer_peer}, args.steps * 2, args.rounds)

    train = {k: n_tgt / t for k, t in train_t.items()}
    infer = {k: src.numel() / t for k, t in infer_t.items()}
    result = {
        "benchmark": "model",
        "preset": args.preset,
        "batch": args.batch,
        "length": args.length,
        "threads": torch.get_num_threads(),
        "unit": "target tokens/s (train step: forward, loss, backward, Adam)",
        "ours": round(train["ours"], 1),
        "peer": round(train["peer"], 1),
        "ratio": round(train["ours"] / train["peer"], 3),
        "peer_name": "torch.nn.Transformer",
        "inference": {
            "unit": "source tokens/s (eval encoder forward, no grad)",
            "ours": round(infer["ours"], 1),
            "peer": round(infer["peer"], 1),
            "ratio": round(infer["ours"] / infer["peer"], 3),
            "peer_name": "torch.nn.TransformerEncoder",
        },
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"preset {args.preset}, batch {args.batch} x length {args.length}, {result['threads']} threads, torch {torch.__version__}")
        print(f"{'':24}{'ours':>12}{'peer':>12}{'ratio':>8}")
        print(f"{'train tgt tok/s':24}{result['ours']:>12,.0f}{result['peer']:>12,.0f}{result['ratio']:>8.2f}   (peer: nn.Transformer)")
        i = result["inference"]
        print(f"{'encoder infer tok/s':24}{i['ours']:>12,.0f}{i['peer']:>12,.0f}{i['ratio']:>8.2f}   (peer: nn.TransformerEncoder)")
    return 0


def _corpus_path(arg: str | None):
    import os
    from pathlib import Path

    if arg:
        return Path(arg)
    root = os.environ.get("TRANSFORMER_LAB_DATA")
    if not root:
        raise ValueError("--data: give a corpus file, or set TRANSFORMER_LAB_DATA to a folder holding multi30k/train.en.gz")
    return Path(root) / "multi30k" / "train.en.gz"


def _hf_trained(algo: str, lines: list[str], size: int):
    """The peer trainer of each algorithm in HF tokenizers, configured like ours."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import ByteLevelBPETokenizer as HFByteLevel
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    if algo == "bytelevel":
        tok = HFByteLevel()
        tok.train_from_iterator(lines, vocab_size=size, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
        return tok
    if algo == "wordpiece":
        tok = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                            show_progress=False)
    else:
        tok = HFTokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "removed")
        trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=2, end_of_word_suffix="</w>",
                                      special_tokens=["<pad>", "<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def _ours_trained(algo: str, lines: list[str], size: int):
    if algo == "bpe":
        from transformer_lab.tokenizers.bpe import BPETokenizer

        return BPETokenizer.train(lines, size)
    if algo == "bytelevel":
        from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer.train(lines, size)
    from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

    return WordPieceTokenizer.train(lines, size, min_frequency=1)


def bench_tokenizer(args: argparse.Namespace) -> int:
    from transformer_lab.tokenizers.fast import FastTokenizer
    from transformer_lab.tokenizers.io import read_corpus

    path = _corpus_path(args.data)
    lines = read_corpus([path])
    algos = ["bpe", "bytelevel", "wordpiece"] if args.algo == "all" else [args.algo]
    results = {}
    for algo in algos:
        size = args.merges if algo == "bpe" else args.vocab_size
        t0 = time.perf_counter()
        ours = _ours_trained(algo, lines, size)
        t_train_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        _hf_trained(algo, lines, size)
        t_train_peer = time.perf_counter() - t0
        fast = FastTokenizer.from_tokenizer(ours)  # same vocabulary, Rust implementation
        t0 = time.perf_counter()
        ids_ours = [ours.encode(line) for line in lines]
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids_fast = fast.encode_batch(lines)
        t_peer = time.perf_counter() - t0
        results[algo] = {
            "vocab_size": ours.vocab_size,
            "ours": round(len(lines) / t_ours, 1),
            "peer": round(len(lines) / t_peer, 1),
            "ratio": round(t_peer / t_ours, 4),
            "identical_ids": ids_ours == ids_fast,
            "train_s_ours": round(t_train_ours, 2),
            "train_s_peer": round(t_train_peer, 2),
        }
    total_ours = sum(len(lines) / r["ours"] for r in results.values())
    total_peer = sum(len(lines) / r["peer"] for r in results.values())
    summary = {
        "benchmark": "tokenizer",
        "corpus": str(path),
        "lines": len(lines),
        "unit": "lines/s encoded (ours: readable Python; peer: HF tokenizers, same vocabulary)",
        "ours": round(len(results) * len(lines) / total_ours, 1),
        "peer": round(len(results) * len(lines) / total_peer, 1),
        "ratio": round(total_peer / total_ours, 4),
        "algorithms": results,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{path}: {len(lines)} lines")
        print(f"{'algorithm':12}{'vocab':>7}{'ours l/s':>11}{'HF l/s':>11}{'ratio':>8}{'same ids':>10}{'train ours':>12}{'train HF':>10}")
        for algo, r in results.items():
            print(f"{algo:12}{r['vocab_size']:>7}{r['ours']:>11,.0f}{r['peer']:>11,.0f}{r['ratio']:>8.3f}"
                  f"{str(r['identical_ids']):>10}{r['train_s_ours']:>11.1f}s{r['train_s_peer']:>9.1f}s")
        print("The training pipeline encodes with the fast backend (ids identical, checked above).")
    return 0


def _multi30k_data(cache_dir):
    from pathlib import Path

    from transformer_lab.tasks import translation as tr

    files = (tr.named_files("multi30k", "de", "en", "train"), tr.named_files("multi30k", "de", "en", "valid"))
    return tr.prepare_data(*files, cache_dir=Path(cache_dir) if cache_dir else None)


def bench_translation(args: argparse.Namespace) -> int:
    from transformer_lab.tasks import translation as tr
    from transformer_lab.training.losses import label_smoothed_cross_entropy

    data = _multi30k_data(args.cache_dir)
    torch.manual_seed(0)
    ours = tr.build_model(data, args.model, max_len=100)
    peer = TorchTransformerPeer(ours)
    buckets = tr.batches(data, args.max_tokens, seed=0)
    batches = [buckets.make(ix) for ix in buckets.epoch(0)[: args.steps]]
    n_tokens = sum(b.n_tokens for b in batches)

    def runner(model):
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

        def run() -> None:
            for b in batches:
                res = label_smoothed_cross_entropy(model.logits(b.src, b.tgt_in), b.tgt_out, 0.1, tr.PAD)
                opt.zero_grad(set_to_none=True)
                (res.loss / res.n_tokens).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

        return run

    t = _time_rounds({"ours": runner(ours), "peer": runner(peer)}, 1, args.rounds)
    result = {"benchmark": "translation", "unit": "target tokens/s (train steps on Multi30k de-en token buckets)",
              "model": args.model, "batches_per_round": len(batches), "max_tokens": args.max_tokens,
              "ours": round(n_tokens / t["ours"], 1), "peer": round(n_tokens / t["peer"], 1),
              "ratio": round(t["peer"] / t["ours"], 3), "peer_name": "torch.nn.Transformer", "threads": torch.get_num_threads()}
    print_result(result, args.json, [("train tgt tok/s (same batches)", result)])
    return 0


def bench_decode(args: argparse.Namespace) -> int:
    from transformer_lab.tasks import translation as tr
    from transformer_lab.training.checkpoint import load_model

    data = _multi30k_data(args.cache_dir)
    if args.checkpoint:
        from transformer_lab.cli.translate import _resolve

        loaded = load_model(_resolve(args.checkpoint))
        model = loaded.model
        tok_src, tok_tgt = tr.load_tokenizers(loaded.path)
    else:
        torch.manual_seed(0)
        model, tok_src, tok_tgt = tr.build_model(data, "multi30k", max_len=100), data.tokenizer_src, data.tokenizer_tgt
    model.eval()
    sentences = data.valid_src[: args.sentences]
    rows = {}
    for beam in [int(b) for b in args.beams.split(",")]:
        times = {}
        outputs = {}
        for name, cache in (("cached", True), ("uncached", False)):
            t0 = time.perf_counter()
            outputs[name] = tr.translate(model, tok_src, tok_tgt, sentences, beam=beam, use_cache=cache)
            times[name] = time.perf_counter() - t0
        rows[f"beam{beam}"] = {"ours": round(len(sentences) / times["cached"], 2),
                               "peer": round(len(sentences) / times["uncached"], 2),
                               "ratio": round(times["uncached"] / times["cached"], 3),
                               "identical_output": outputs["cached"] == outputs["uncached"]}
    first = next(iter(rows.values()))
    result = {"benchmark": "decode", "unit": "sentences/s (Multi30k val, de-en)", "sentences": len(sentences),
              "trained": bool(args.checkpoint), "ours": first["ours"], "peer": first["peer"], "ratio": first["ratio"],
              "peer_name": "same model without KV cache", "by_beam": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{len(sentences)} sentences, {'trained' if args.checkpoint else 'untrained'} model")
        print(f"{'':10}{'cached s/s':>12}{'uncached s/s':>14}{'speed-up':>10}{'same output':>13}")
        for k, r in rows.items():
            print(f"{k:10}{r['ours']:>12.2f}{r['peer']:>14.2f}{r['ratio']:>10.2f}{str(r['identical_output']):>13}")
    return 0
