"""Our encoder-decoder against torch.nn.Transformer, same sizes and weights, run in turn in one process.

* training: forward + label-smoothed loss + backward + Adam step, target tokens per second;
* inference: eval-mode encoder forward (no grad) against nn.TransformerEncoder, source tokens/s.

``--device cuda --precision bf16 [--compile]`` (for a GPU): both models on the device, training under bf16
autocast with fused Adam, both compiled with ``--compile``; each timed call ends with a CUDA synchronize;
the training row reports MFU (model FLOPs utilisation: 6 per parameter per token, plus attention's scores
and weighted sums, against the device's dense bf16 peak or ``--peak-tflops``).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from transformer_lab.bench.gpt import peak_tflops
from transformer_lab.bench.harness import BenchResult, speed_row, time_rounds
from transformer_lab.models.presets import preset
from transformer_lab.models.torch_peer import TorchTransformerPeer
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.masks import padding_mask
from transformer_lab.runtime import choose_device
from transformer_lab.tokenizers.special import PAD_ID
from transformer_lab.training.losses import label_smoothed_nll


def seq2seq_train_flops(n_params: int, n_encoder_layers: int, n_decoder_layers: int, length: int, d_model: int) -> float:
    """Forward and backward FLOPs per target token of an encoder-decoder whose source is as long as its
    target (``length``): 6 per parameter (every matmul weight meets one source or one target token per
    target token; a tied table counts once, as the output layer) plus 12·T·d per attention layer (scores and
    weighted sum, forward and backward): the encoder's self-attention, the decoder's self- and cross-attention."""
    return 6.0 * n_params + 12.0 * (n_encoder_layers + 2 * n_decoder_layers) * length * d_model


def _train_step(model: torch.nn.Module, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                optimizer: torch.optim.Optimizer, autocast: Callable, sync: Callable) -> Callable[[], None]:
    def step() -> None:
        with autocast():
            res = label_smoothed_nll(torch.log_softmax(model(src, tgt_in, log_probs=False).float(), -1), tgt_out,
                                     0.1, PAD_ID)
        optimizer.zero_grad(set_to_none=True)
        (res.loss / res.count).backward()
        optimizer.step()
        sync()

    return step


def bench_model(preset_name: str = "base", batch: int = 32, length: int = 24, vocab_size: int | None = None,
                steps: int = 5, rounds: int = 3, threads: int | None = None, device: str | None = "cpu",
                precision: str = "fp32", compile: bool = False, peak: float | None = None) -> BenchResult:
    for name, value in (("steps", steps), ("rounds", rounds), ("batch", batch), ("length", length)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        torch.set_num_threads(threads)
    dev = choose_device(device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision: expected fp32 or bf16, got {precision!r}")
    if precision == "bf16" and dev.type != "cuda":
        raise ValueError("precision: bf16 is a GPU feature here (this CPU's bf16 matmul is ~100x slower than fp32)")
    torch.manual_seed(0)
    overrides = {} if vocab_size is None else dict(src_vocab_size=vocab_size, tgt_vocab_size=vocab_size)
    cfg = preset(preset_name, **overrides)
    if length + 1 > cfg.max_len:
        raise ValueError(f"length: {length} exceeds the preset's max_len={cfg.max_len}")
    ours = Transformer(cfg)
    peer = TorchTransformerPeer(ours)  # same weights, PyTorch's layers
    ours, peer = ours.to(dev), peer.to(dev)
    v = cfg.tgt_vocab_size
    src = torch.randint(4, v, (batch, length), device=dev)
    tgt = torch.randint(4, v, (batch, length + 1), device=dev)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    run_ours, run_peer = (torch.compile(ours), torch.compile(peer)) if compile else (ours, peer)

    ours.train(), peer.train()
    adam = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-9, **({"fused": True} if dev.type == "cuda" else {}))
    train_t = time_rounds(
        {"ours": _train_step(run_ours, src, tgt_in, tgt_out, torch.optim.Adam(ours.parameters(), **adam), autocast, sync),
         "peer": _train_step(run_peer, src, tgt_in, tgt_out, torch.optim.Adam(peer.parameters(), **adam), autocast, sync)},
        steps, rounds)

    ours.eval(), peer.eval()
    x = ours.src_embed(src).detach()
    mask = padding_mask(src, PAD_ID)
    pos = torch.arange(length, device=dev)
    key_padding = src == PAD_ID  # nn.Transformer's polarity: True = ignore
    enc_ours = torch.compile(ours.encoder) if compile else ours.encoder
    enc_peer = torch.compile(peer.transformer.encoder) if compile else peer.transformer.encoder

    def infer_ours() -> None:
        with torch.no_grad(), autocast():
            enc_ours(x, mask, pos)
        sync()

    def infer_peer() -> None:
        with torch.no_grad(), autocast():
            enc_peer(x, src_key_padding_mask=key_padding)
        sync()

    infer_t = time_rounds({"ours": infer_ours, "peer": infer_peer}, steps * 2, rounds)
    train = speed_row(tgt_out.numel(), train_t)
    peak_t = peak_tflops(dev, peak)
    if peak_t:
        flops = seq2seq_train_flops(sum(p.numel() for p in ours.parameters()), cfg.n_encoder_layers,
                                    cfg.n_decoder_layers, length, cfg.d_model)
        train.update(mfu_ours=round(flops * train["ours"] / (peak_t * 1e12), 4),
                     mfu_peer=round(flops * train["peer"] / (peak_t * 1e12), 4), peak_tflops=peak_t)
    infer = {**speed_row(src.numel(), infer_t), "unit": "source tokens/s (eval encoder forward, no grad)",
             "peer_name": "torch.nn.TransformerEncoder"}
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    result = {"benchmark": "model", "preset": preset_name, "batch": batch, "length": length,
              "threads": torch.get_num_threads(), "unit": "target tokens/s (train step: forward, loss, backward, Adam)",
              **train, "peer_name": "torch.nn.Transformer", "inference": infer, "torch": torch.__version__,
              "device": str(dev), "device_name": device_name, "precision": precision, "compile": compile}
    header = (f"preset {preset_name}, batch {batch} x length {length}, {device_name}, {precision}"
              f"{', compiled' if compile else ''}, {result['threads']} threads, torch {torch.__version__}")
    notes = [f"MFU (against {peak_t} TFLOP/s): ours {train['mfu_ours']:.1%}, peer {train['mfu_peer']:.1%}"] if peak_t else []
    return BenchResult(result, [("train tgt tok/s (peer nn.Transformer)", train),
                                ("encoder infer tok/s (peer TransformerEncoder)", infer)], header, notes)
