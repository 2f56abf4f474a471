"""Our encoder-decoder against torch.nn.Transformer, same sizes and weights, run in turn in one process.

* training: forward + label-smoothed loss + backward + Adam step, target tokens per second;
* inference: eval-mode encoder forward (no grad) against nn.TransformerEncoder, source tokens/s.
"""

from __future__ import annotations

from typing import Callable

import torch

from transformer_lab.bench.harness import BenchResult, speed_row, time_rounds
from transformer_lab.models.presets import preset
from transformer_lab.models.torch_peer import TorchTransformerPeer
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.masks import padding_mask
from transformer_lab.tokenizers.special import PAD_ID
from transformer_lab.training.losses import label_smoothed_nll


def _train_step(model: torch.nn.Module, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        res = label_smoothed_nll(model(src, tgt_in), tgt_out, 0.1, PAD_ID)
        optimizer.zero_grad(set_to_none=True)
        (res.loss / res.n_tokens).backward()
        optimizer.step()

    return step


def bench_model(preset_name: str = "base", batch: int = 32, length: int = 24, vocab_size: int | None = None,
                steps: int = 5, rounds: int = 3, threads: int | None = None) -> BenchResult:
    for name, value in (("steps", steps), ("rounds", rounds), ("batch", batch), ("length", length)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    overrides = {} if vocab_size is None else dict(src_vocab_size=vocab_size, tgt_vocab_size=vocab_size)
    cfg = preset(preset_name, **overrides)
    if length + 1 > cfg.max_len:
        raise ValueError(f"length: {length} exceeds the preset's max_len={cfg.max_len}")
    ours = Transformer(cfg)
    peer = TorchTransformerPeer(ours)  # same weights, PyTorch's layers
    v = cfg.tgt_vocab_size
    src = torch.randint(4, v, (batch, length))
    tgt = torch.randint(4, v, (batch, length + 1))
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]

    ours.train(), peer.train()
    adam = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    train_t = time_rounds({"ours": _train_step(ours, src, tgt_in, tgt_out, torch.optim.Adam(ours.parameters(), **adam)),
                           "peer": _train_step(peer, src, tgt_in, tgt_out, torch.optim.Adam(peer.parameters(), **adam))},
                          steps, rounds)

    ours.eval(), peer.eval()
    x = ours.src_embed(src).detach()
    mask = padding_mask(src, PAD_ID)
    pos = torch.arange(length)
    key_padding = src == PAD_ID  # nn.Transformer's polarity: True = ignore

    def infer_ours() -> None:
        with torch.no_grad():
            ours.encoder(x, mask, pos)

    def infer_peer() -> None:
        with torch.no_grad():
            peer.transformer.encoder(x, src_key_padding_mask=key_padding)

    infer_t = time_rounds({"ours": infer_ours, "peer": infer_peer}, steps * 2, rounds)
    train = speed_row(tgt_out.numel(), train_t)
    infer = {**speed_row(src.numel(), infer_t), "unit": "source tokens/s (eval encoder forward, no grad)",
             "peer_name": "torch.nn.TransformerEncoder"}
    result = {"benchmark": "model", "preset": preset_name, "batch": batch, "length": length,
              "threads": torch.get_num_threads(), "unit": "target tokens/s (train step: forward, loss, backward, Adam)",
              **train, "peer_name": "torch.nn.Transformer", "inference": infer, "torch": torch.__version__}
    header = f"preset {preset_name}, batch {batch} x length {length}, {result['threads']} threads, torch {torch.__version__}"
    return BenchResult(result, [("train tgt tok/s (peer nn.Transformer)", train),
                                ("encoder infer tok/s (peer TransformerEncoder)", infer)], header)
