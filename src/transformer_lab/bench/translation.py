"""The translation pipeline against its peers, on Multi30k de-en.

* ``bench_translation``: target tokens/s of training steps on the same token-bucket batches (same
  sizes, weights, loss and Adam), ours vs torch.nn.Transformer;
* ``bench_decode``: sentences/s translating validation sentences, greedy and beam, with the KV cache
  (ours) against without it (the same model re-running the decoder over the whole prefix each step);
  with ``--static-cache`` / ``--compile``, the static cache (compiled) against the growing one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from transformer_lab.bench.harness import BenchResult, speed_row, time_rounds
from transformer_lab.models.torch_peer import TorchTransformerPeer
from transformer_lab.runtime import choose_device
from transformer_lab.tasks import translation as tr
from transformer_lab.tokenizers.special import PAD_ID
from transformer_lab.training.losses import label_smoothed_cross_entropy


def multi30k_data(cache_dir: str | Path | None) -> tr.TranslationData:
    files = (tr.named_files("multi30k", "de", "en", "train"), tr.named_files("multi30k", "de", "en", "valid"))
    return tr.prepare_data(*files, cache_dir=Path(cache_dir) if cache_dir else None)


def bench_translation(model: str = "multi30k", steps: int = 6, rounds: int = 3, max_tokens: int = 4000,
                      cache_dir: str | Path | None = None) -> BenchResult:
    data = multi30k_data(cache_dir)
    torch.manual_seed(0)
    ours = tr.build_model(data, model, max_len=100)
    peer = TorchTransformerPeer(ours)
    buckets = tr.batches(data, max_tokens, seed=0)
    batches = [buckets.make(ix) for ix in buckets.epoch(0)[:steps]]
    n_tokens = sum(b.n_tokens for b in batches)

    def runner(m: torch.nn.Module):
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

        def run() -> None:
            for b in batches:
                res = label_smoothed_cross_entropy(m.logits(b.src, b.tgt_in), b.tgt_out, 0.1, PAD_ID)
                opt.zero_grad(set_to_none=True)
                (res.loss / res.n_tokens).backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                opt.step()

        return run

    row = speed_row(n_tokens, time_rounds({"ours": runner(ours), "peer": runner(peer)}, 1, rounds))
    result = {"benchmark": "translation", "unit": "target tokens/s (train steps on Multi30k de-en token buckets)",
              "model": model, "batches_per_round": len(batches), "max_tokens": max_tokens, **row,
              "peer_name": "torch.nn.Transformer", "threads": torch.get_num_threads()}
    return BenchResult(result, [("train tgt tok/s (same batches)", row)])


def bench_decode(checkpoint: str | Path | None = None, sentences: int = 100, beams: tuple[int, ...] = (1, 4),
                 cache_dir: str | Path | None = None, static_cache: bool = False, compile: bool = False,
                 device: str = "cpu", batch_size: int = 64) -> BenchResult:
    """Without ``static_cache``/``compile``: ours decodes with the KV cache, the peer without one. With
    them: ours with the static cache (compiled with ``compile``), the peer with the growing cache it
    replaces; a first untimed pass compiles. Each side first decodes 8 sentences untimed (the first calls
    in a process cost seconds once, which was the headline's figure for the first beam)."""
    if sentences < 1 or not beams or min(beams) < 1:
        raise ValueError(f"sentences, beams: expected >= 1, got {sentences}, {list(beams)}")
    dev = choose_device(device)  # (a named error for a device this machine lacks)
    data = multi30k_data(cache_dir)
    if checkpoint:
        model, tok_src, tok_tgt = tr.load_translator(checkpoint, dev)
    else:
        torch.manual_seed(0)
        model, tok_src, tok_tgt = tr.build_model(data, "multi30k", max_len=100), data.tokenizer_src, data.tokenizer_tgt
    model.to(dev).eval()
    texts = data.valid_src[:sentences]
    static = static_cache or compile
    ours_kw = dict(static_cache=True, compile=compile) if static else {}
    peer_kw = {} if static else dict(use_cache=False)
    rows = {}
    for beam in beams:
        if compile:  # compiling is not decoding: a first pass of the same sizes compiles the step
            tr.translate(model, tok_src, tok_tgt, texts, beam=beam, batch_size=batch_size, **ours_kw)
        for kw in (peer_kw,) if compile else (ours_kw, peer_kw):  # a process's first calls (allocator, thread
            tr.translate(model, tok_src, tok_tgt, texts[:8], beam=beam, batch_size=batch_size, **kw)  # pool: 1.5-5 s
            # once) are not decoding; the compiled side's pass above warmed it (8 sentences: another graph, and
            # Dynamo stops compiling after 8)
        times, outputs = {}, {}
        for name, kw in (("ours", ours_kw), ("peer", peer_kw)):
            t0 = time.perf_counter()
            outputs[name] = tr.translate(model, tok_src, tok_tgt, texts, beam=beam, batch_size=batch_size, **kw)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name] = time.perf_counter() - t0
        rows[f"beam{beam}"] = {**speed_row(len(texts), times, 2), "identical_output": outputs["ours"] == outputs["peer"]}
    first = next(iter(rows.values()))
    ours_name = ("static KV cache" + (", compiled" if compile else "")) if static else "KV cache"
    peer_name = "growing KV cache" if static else "same model without KV cache"
    result = {"benchmark": "decode", "unit": "sentences/s (Multi30k val, de-en)", "sentences": len(texts),
              "trained": bool(checkpoint), "device": str(dev), "batch_size": batch_size,
              "ours": first["ours"], "peer": first["peer"],
              "ratio": first["ratio"], "ours_name": ours_name, "peer_name": peer_name, "by_beam": rows}
    header = (f"{len(texts)} sentences in batches of {batch_size}, {'trained' if checkpoint else 'untrained'} model, "
              f"{dev}; "
              f"ours: {ours_name}, peer: {peer_name}")
    notes = [f"{k}: same output as the peer: {r['identical_output']}" for k, r in rows.items()]
    return BenchResult(result, [(f"{k} sentences/s", r) for k, r in rows.items()], header, notes)
