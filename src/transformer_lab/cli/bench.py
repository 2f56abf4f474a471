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


def _train_step(model: torch.nn.Module, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        res = label_smoothed_nll(model(src, tgt_in), tgt_out, 0.1, PAD)
        optimizer.zero_grad(set_to_none=True)
        (res.loss / res.n_tokens).backward()
        optimizer.step()

    return step


def bench_model(args: argparse.Namespace) -> int:
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
