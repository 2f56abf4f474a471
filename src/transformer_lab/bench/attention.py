"""Long-sequence attention: time and peak memory against the sequence length n, for full attention
(PyTorch's fused SDPA, and the dense-masked explicit softmax), chunked exact attention, our sliding
window (w each side) and block-sparse patterns, ``transformers``' LongformerSelfAttention at the same n
and window (``attention_window`` = 2w), and PyTorch's FlexAttention (compiled) with the window as a
block mask (``flex-window``: forward only; torch 2.13 has no FlexAttention backward on CPU, so it
cannot train here).

Every measurement runs alone in a fresh process (``spawn``): one batch of random q, k, v (B, H, n, Dh)
is made, the pattern runs once untimed (FlexAttention compiles there; ``setup_s`` is that call with the
inputs' making), the process's peak resident memory is reset (Linux ``/proc/self/clear_refs``), the
pattern runs ``--rounds`` times (forward, no gradient; the median time counts), and the peak minus the
memory before the calls is the figure: measured, not computed. The Longformer rows time a whole
self-attention layer (its Q/K/V projections included) against ours doing the same (``window+proj``: the
Q/K/V projections as one GEMM, as our MultiHeadAttention computes them, then the window pattern). A
configuration whose dense scores would not fit (``--max-dense-gib``) is not run and says so.

Headline (``--json``: ours, peer, ratio): the window pattern against full fused SDPA at the largest n.
"""

from __future__ import annotations

import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable

import torch

from transformer_lab.bench.harness import BenchResult
from transformer_lab.nn import sparse

IMPLS = ("sdpa", "dense", "chunked", "window", "block", "window+proj", "longformer", "flex-window")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status: no {field}")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak resident set) to the current resident set
        return True
    except OSError:
        return False


def _make(impl: str, n: int, heads: int, d_head: int, window: int, block: int, chunk: int, causal: bool,
          threads: int) -> Callable[[], Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d = heads * d_head
    if impl in ("window+proj", "longformer"):
        x = torch.randn(1, n, d)
        if impl == "longformer":
            from transformers import LongformerConfig
            from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

            cfg = LongformerConfig(hidden_size=d, num_attention_heads=heads, attention_window=[2 * window],
                                   attention_probs_dropout_prob=0.0)
            layer = LongformerSelfAttention(cfg, layer_id=0).eval()
            mask = torch.zeros(1, n)
            return lambda: layer(x, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
                                 is_global_attn=False)
        proj = torch.nn.Linear(d, 3 * d)
        pattern = sparse.Pattern("window", window=window)

        def ours() -> Any:
            q, k, v = proj(x).view(1, n, 3, heads, d_head).permute(2, 0, 3, 1, 4)
            return sparse.attend(q, k, v, pattern, backend="sdpa").transpose(1, 2).reshape(1, n, d)
        return ours
    q, k, v = (torch.randn(1, heads, n, d_head) for _ in range(3))
    patterns = {"sdpa": sparse.Pattern("full", causal=causal), "chunked": sparse.Pattern("chunked", causal=causal, chunk=chunk),
                "window": sparse.Pattern("window", causal=causal, window=window),
                "block": sparse.Pattern("block", causal=causal, block=block, global_blocks=1, random_blocks=1),
                "dense": sparse.Pattern("full", causal=causal)}
    if impl == "flex-window":  # the library's FlexAttention path: the window as a block mask, compiled
        return lambda: sparse.attend(q, k, v, patterns["window"], backend="flex")
    if impl == "sdpa":
        return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl == "dense":
        return lambda: sparse.reference(q, k, v, patterns["dense"])
    return lambda: sparse.attend(q, k, v, patterns[impl], backend="sdpa")  # ours; flex is the flex-window row


def measure(impl: str, n: int, heads: int = 8, d_head: int = 64, window: int = 256, block: int = 64,
            chunk: int = 1024, causal: bool = False, rounds: int = 3, threads: int = 2) -> dict[str, Any]:
    """One configuration in this process: median seconds of ``rounds`` calls, and peak MiB above the
    memory before the first call (inputs and weights excluded)."""
    t0 = time.perf_counter()
    fn = _make(impl, n, heads, d_head, window, block, chunk, causal, threads)
    with torch.no_grad():
        fn()  # untimed: a compiled kernel compiles here, and thread pools start
        setup = time.perf_counter() - t0
        exact = _reset_peak()
        before = _rss_kib("VmRSS")
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        peak = _rss_kib("VmHWM") if exact else before
    return {"impl": impl, "n": n, "seconds": statistics.median(times), "peak_mib": max(0, peak - before) / 1024,
            "peak_exact": exact, "setup_s": round(setup, 2)}


def measure_alone(**kw: Any) -> dict[str, Any]:
    """``measure`` in a fresh process, so no earlier allocation sets its peak. Forked from a fork server that
    has imported this module (and PyTorch) but run nothing: a child starts in milliseconds where a spawned
    one imports PyTorch again (measured: 10 small measurements in 1.7 s against 17.4 s, the same peak at
    n = 4,096: 9.0 against 8.8 MiB)."""
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # (takes effect when the server starts: the first call)
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(measure, **kw).result()


def bench_attention(lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384), impls: tuple[str, ...] = IMPLS,
                    heads: int = 8, d_head: int = 64, window: int = 256, block: int = 64, chunk: int = 1024,
                    causal: bool = False, rounds: int = 3, threads: int | None = None, max_dense_gib: float = 6.0,
                    on_run: Callable[[str], None] | None = None) -> BenchResult:
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise ValueError(f"impls: unknown {unknown}; expected some of {IMPLS}")
    if not lengths or min(lengths) < 2:
        raise ValueError(f"lengths: expected sequence lengths >= 2, got {lengths}")
    if "longformer" in impls and causal:
        raise ValueError("longformer: transformers' Longformer attention is bidirectional; drop it or --causal")
    threads = threads or torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    for n in lengths:
        for impl in impls:
            dense_gib = heads * n * n * 4 / 2**30  # one float32 (H, n, n) score tensor
            if impl == "dense" and dense_gib > max_dense_gib:
                rows.append({"impl": impl, "n": n, "skipped": f"scores alone need {dense_gib:.1f} GiB > --max-dense-gib"})
                continue
            if impl == "longformer" and n % (2 * window):
                rows.append({"impl": impl, "n": n, "skipped": f"Longformer needs n a multiple of 2w = {2 * window}"})
                continue
            if on_run:
                on_run(f"{impl} n={n}")
            rows.append(measure_alone(impl=impl, n=n, heads=heads, d_head=d_head, window=window, block=block,
                                          chunk=chunk, causal=causal, rounds=rounds, threads=threads))
    done = {(r["impl"], r["n"]): r for r in rows if "seconds" in r}
    top = max(lengths)
    result: dict[str, Any] = {"benchmark": "attention", "heads": heads, "d_head": d_head, "window": window,
                              "block": block, "chunk": chunk, "causal": causal, "threads": threads,
                              "torch": torch.__version__, "unit": "seconds per forward call", "rows": rows}
    table = []
    if ("window", top) in done and ("sdpa", top) in done:
        w, f = done[("window", top)], done[("sdpa", top)]
        result.update(ours=w["seconds"], peer=f["seconds"], ratio=round(f["seconds"] / w["seconds"], 3),
                      peer_name=f"full SDPA at n={top}",
                      memory_ratio=round(f["peak_mib"] / w["peak_mib"], 2) if w["peak_mib"] else None)
        table.append((f"window w={window} vs full SDPA, n={top} (s)", {"ours": w["seconds"], "peer": f["seconds"],
                                                                      "ratio": result["ratio"]}))
    if ("window+proj", top) in done and ("longformer", top) in done:
        o, lf = done[("window+proj", top)], done[("longformer", top)]
        result["vs_longformer"] = round(lf["seconds"] / o["seconds"], 3)
        table.append((f"layer vs Longformer, n={top} (s)", {"ours": o["seconds"], "peer": lf["seconds"],
                                                          "ratio": result["vs_longformer"]}))
    notes = ["", "| impl | " + " | ".join(f"n={n}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for impl in impls:
        cells = []
        for n in lengths:
            r = next(r for r in rows if r["impl"] == impl and r["n"] == n)
            cells.append("not run" if "skipped" in r else f"{r['seconds']:.3g} s, {r['peak_mib']:,.0f} MiB")
        notes.append(f"| {impl} | " + " | ".join(cells) + " |")
    return BenchResult(result, table, header=f"bench attention: H={heads}, Dh={d_head}, w={window}, block={block}, "
                                             f"{'causal' if causal else 'bidirectional'}, {threads} threads",
                       notes=notes)


def crossing(rows: list[dict[str, Any]], a: str, b: str) -> int | None:
    """The smallest measured n at which ``a`` is faster than ``b`` (None: never)."""
    ns = sorted({r["n"] for r in rows if "seconds" in r})
    at = {(r["impl"], r["n"]): r["seconds"] for r in rows if "seconds" in r}
    return next((n for n in ns if (a, n) in at and (b, n) in at and at[(a, n)] < at[(b, n)]), None)


def log2_slope(rows: list[dict[str, Any]], impl: str, key: str = "peak_mib") -> float | None:
    """Growth exponent of ``key`` with n between the two largest measured lengths (2: quadratic)."""
    pts = sorted((r["n"], r[key]) for r in rows if r["impl"] == impl and "seconds" in r and r[key] > 0)
    if len(pts) < 2:
        return None
    (n1, y1), (n2, y2) = pts[-2], pts[-1]
    return math.log(y2 / y1) / math.log(n2 / n1)

