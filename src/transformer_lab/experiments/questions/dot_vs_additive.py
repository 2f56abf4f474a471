"""`dot-vs-additive`: why dot-product attention, not additive?

The paper (§3.2.1): the two are "similar in theoretical complexity, [but] dot-product attention is
much faster and more space-efficient in practice, since it can be implemented using highly optimized
matrix multiplication code"; "while for small values of d_k the two mechanisms perform similarly,
additive attention outperforms dot product attention without scaling for larger values of d_k".

Additive (Bahdanau) attention scores a query-key pair with vᵀ tanh(q + k): every pair gets its own
d_k-vector, a (T_q, T_k, d_k) tensor per head where the dot product needs one number per pair
(T_q, T_k) and a matrix multiply. Measured two ways:

- cost: one attention call (forward + backward) on random q, k, v, across d_k and length: wall time
  (the fastest of ``repeats`` runs) and the peak memory the call allocates beyond its inputs
  (CPU: the allocator's events in ``torch.profiler``'s memory profile, summed in time order; CUDA:
  the allocator's peak). Three implementations: dot product written out (``reference_attention``,
  the fair comparison: both written out with the same softmax and masking), dot product on PyTorch's
  fused kernel (``fast_attention``, what the model uses), and additive (``additive_attention``);
- quality: the date task's model with each score at small and large d_k (d_model = 128 with 8 heads,
  d_k = 16, or 1 head, d_k = 128): held-out NLL. The dot product here is the paper's scaled one; the
  paper's "additive beats dot at large d_k" is about the unscaled one, which the model does not offer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread, outcome_of
from transformer_lab.experiments.training import sweep, values
from transformer_lab.nn.attention import additive_attention, fast_attention, reference_attention

DOT, FUSED, ADDITIVE = "dot product (written out)", "dot product (fused SDPA)", "additive"
IMPLS: dict[str, Callable] = {
    DOT: lambda q, k, v, w: reference_attention(q, k, v),
    FUSED: lambda q, k, v, w: fast_attention(q, k, v),
    ADDITIVE: lambda q, k, v, w: additive_attention(q, k, v, w),
}
D_MODEL = 128  # the date model's width: d_k = D_MODEL / heads


def inputs(batch: int, heads: int, length: int, d_k: int, device: torch.device, seed: int):
    """Random q, k, v (B, H, T, d_k) and the additive score vector (H, d_k), all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, d_k, generator=gen).to(device).requires_grad_() for _ in range(3))
    w = (torch.randn(heads, d_k, generator=gen) / d_k**0.5).to(device).requires_grad_()
    return q, k, v, w


def step(impl: Callable, args) -> None:
    """One forward and backward pass of an attention call."""
    impl(*args).output.sum().backward()


def seconds(impl: Callable, args, device: torch.device, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one warm-up (the minimum is the least disturbed
    by other work on the machine)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step(impl, args)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step(impl, args)
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_bytes(impl: Callable, args, device: torch.device) -> int:
    """The most memory the call holds at once beyond its inputs, from the allocator's records."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(impl, args)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(impl, args)
    # every allocation (+bytes) and free (-bytes) made during the call, in time order
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, n in events:
        held += n
        peak = max(peak, held)
    return peak


def cost_grid(s: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    rows = []
    bar = ctx.bar(len(s["d_k"]) * len(s["lengths"]), "dot-vs-additive: cost")
    for d_k in s["d_k"]:
        for length in s["lengths"]:
            row: dict[str, Any] = dict(d_k=d_k, length=length)
            for name, impl in IMPLS.items():
                args = inputs(s["batch"], s["heads"], length, d_k, ctx.device, ctx.seed)
                row[name] = dict(seconds=seconds(impl, args, ctx.device, s["repeats"]),
                                 peak_bytes=peak_bytes(impl, args, ctx.device))
            rows.append(row)
            bar.update(1)
    bar.close()
    return rows


def quality_variants(d_ks: list[int]) -> dict[str, dict[str, Any]]:
    return {f"{score}, d_k={d_k}": {"model": {"attention_score": score, "n_heads": D_MODEL // d_k}}
            for d_k in d_ks for score in ("dot", "additive")}


def compare(dot: list[float], add: list[float]) -> str:
    """'similar' (inside the spread and within 10% of each other), 'different' (beyond the spread), or
    'unresolved' (inside a spread wider than 10%: the runs cannot tell)."""
    d = differs(add, dot)
    if d:
        return "different"
    m_dot, m_add = mean_spread(dot)[0], mean_spread(add)[0]
    return "similar" if abs(m_add - m_dot) <= 0.1 * max(m_dot, m_add) else "unresolved"


class DotVsAdditive(Experiment):
    id = "dot-vs-additive"
    question_zh = "为什么使用点乘而不是加法？两者计算复杂度和效果上有什么区别？"
    question = "Dot-product vs additive attention"
    claim = "dot is faster on matrix hardware; similar quality"
    rule = ("Speed: one attention call (forward + backward), dot product written out vs additive, on the run's device "
            "across d_k and length: dot holds as faster if it takes less time in every measured (d_k, length) and at "
            "most half the additive time at the largest. Quality: the date model trained with each score at small and "
            "large d_k; at each d_k the held-out NLLs are 'similar' if their difference is inside the spread over seeds "
            "and within 10% of the larger, 'different' if beyond the spread, 'unresolved' otherwise. Parts: speed (holds "
            "as above, against if additive is faster at the largest, neither otherwise) and quality at each d_k (holds if similar, against if different, neither if "
            "unresolved). Confirmed if all hold; partly if some hold; refuted if none holds and one goes against; inconclusive if none "
            "holds and none goes against (experiments.stats.outcome_of).")
    budgets = {"smoke": dict(d_k=[8, 64], lengths=[8, 32], batch=1, heads=2, repeats=2,
                             quality_d_k=[16, 128], steps=5, seeds=1, n_test=20),
               "quick": dict(d_k=[16, 64, 256], lengths=[32, 128, 256], batch=1, heads=2, repeats=3,
                             quality_d_k=[16, 128], steps=250, seeds=2, n_test=200),
               "full": dict(d_k=[16, 64, 256], lengths=[32, 128, 256, 512], batch=1, heads=2, repeats=5,
                            quality_d_k=[16, 128], steps=2000, seeds=3, n_test=1000)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        cost = cost_grid(s, ctx)
        runs = sweep(ctx, quality_variants(s["quality_d_k"]), s["seeds"], s["steps"], f"{self.id}: quality",
                     n_test=s["n_test"])
        for rows in runs.values():
            for r in rows:
                del r["losses"]  # the held-out NLL decides; the curves would only bloat the result
        return {"device": ctx.device.type, "cost": cost, "quality_d_k": s["quality_d_k"], "steps": s["steps"], "runs": runs}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        cost = m["cost"]
        ratios = [r[ADDITIVE]["seconds"] / r[DOT]["seconds"] for r in cost]
        largest = max(cost, key=lambda r: (r["d_k"] * r["length"] ** 2, r["length"]))
        t_ratio = largest[ADDITIVE]["seconds"] / largest[DOT]["seconds"]
        m_ratio = largest[ADDITIVE]["peak_bytes"] / max(largest[DOT]["peak_bytes"], 1)
        faster = min(ratios) > 1 and t_ratio >= 2
        slower = t_ratio < 1  # additive is faster at the largest
        quality = {d: compare(values(m["runs"][f"dot, d_k={d}"], "val_nll"), values(m["runs"][f"additive, d_k={d}"], "val_nll"))
                   for d in m["quality_d_k"]}
        nll = {d: (mean_spread(values(m["runs"][f"dot, d_k={d}"], "val_nll")),
                   mean_spread(values(m["runs"][f"additive, d_k={d}"], "val_nll"))) for d in m["quality_d_k"]}
        because = (f"on {m['device']}, additive takes {min(ratios):.2g}-{max(ratios):.2g}x the written-out dot product's "
                   f"time ({t_ratio:.1f}x the time and {m_ratio:.1f}x the peak memory at d_k={largest['d_k']}, "
                   f"length {largest['length']}); held-out NLL dot vs additive: "
                   + "; ".join(f"d_k={d}: {fmt(*nll[d][0])} vs {fmt(*nll[d][1])} ({quality[d]})" for d in quality))
        outcome = outcome_of([int(faster) - int(slower), *({"similar": 1, "different": -1}.get(q, 0) for q in quality.values())])
        return Verdict(outcome, because, {"additive / dot time, min over grid": round(min(ratios), 2),
                                          "additive / dot time at the largest": round(t_ratio, 2),
                                          "additive / dot peak memory at the largest": round(m_ratio, 2),
                                          **{f"quality at d_k={d}": q for d, q in quality.items()}})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "dot_vs_additive.png"
        d_ks = sorted({r["d_k"] for r in m["cost"]})
        with figure(path, f"Dot-product vs additive attention: cost of one call (forward + backward, {m['device']}) "
                          "and quality on the date task", ncols=3, width=5.0) as (a1, a2, a3):
            styles = {DOT: "o-", FUSED: "^:", ADDITIVE: "s--"}
            for i, d_k in enumerate(d_ks):
                rows = [r for r in m["cost"] if r["d_k"] == d_k]
                lengths = [r["length"] for r in rows]
                for name, style in styles.items():
                    label = f"{name}, d_k={d_k}"
                    a1.loglog(lengths, [1e3 * r[name]["seconds"] for r in rows], style, color=f"C{i}", label=label)
                    a2.loglog(lengths, [r[name]["peak_bytes"] / 2**20 for r in rows], style, color=f"C{i}", label=label)
            lengths = sorted({r["length"] for r in m["cost"]})
            for ax, label in ((a1, "time per call, forward + backward (ms)"), (a2, "peak memory of the call (MiB)")):
                ax.set_xticks(lengths, [str(t) for t in lengths])
                ax.minorticks_off()
                ax.set_xlabel("sequence length (tokens, queries = keys)")
                ax.set_ylabel(label)
            a1.legend(fontsize=6)
            names = list(m["runs"])
            stats = [mean_spread(values(m["runs"][n], "val_nll")) for n in names]
            a3.bar(names, [x[0] for x in stats], yerr=[x[1] for x in stats], color=["C0", "C1"] * (len(names) // 2))
            a3.set_ylabel(f"held-out NLL after {m['steps']} steps (nats/token)")
            a3.tick_params(axis="x", labelsize=7, rotation=15)
        return [path]
