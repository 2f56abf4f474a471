"""Our GPT against Hugging Face ``GPT2LMHeadModel`` with the same weights: a random GPT-2-shaped model
(124 M) built by ``transformers`` and converted; greedy generation tokens/s with and without the KV
cache (ours: ``generation.sampling.generate``; peer: ``GPT2LMHeadModel.generate``), batch 1 and 8, and
with static caches on both sides (compiled with ``--compile``: the headline row then);
and training tokens/s (forward, loss, backward, AdamW step). Both sides produce the same tokens
(checked and reported).

``--device cuda --precision bf16 --compile`` (for a GPU): both models on the device, training under
bf16 autocast with a fused AdamW, both compiled (the peer too: the issue compares with
``transformers`` compiled); each timed call ends with a CUDA synchronize. The training row reports
MFU: model FLOPs per token (6·N + 12·L·T·d, PaLM's appendix B count, forward and backward) times
tokens/s over the device's peak (``--peak-tflops``, or a known GPU's dense bf16 peak by name)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from transformer_lab.bench.harness import BenchResult, speed_row, time_rounds
from transformer_lab.generation.sampling import SamplingConfig, generate
from transformer_lab.models.hf import gpt_from_hf
from transformer_lab.runtime import choose_device

# dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets, SXM parts): what MFU divides by
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """``given``, or the bf16 peak of a known GPU by its name; None on a CPU (no MFU)."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _peer_compile_config(transformers, device: torch.device):
    """transformers' compile settings for its static-cache generate: its defaults (reduce-overhead: CUDA
    graphs) on a GPU; on a CPU the same default mode, which transformers applies there only when told to."""
    config = transformers.CompileConfig()
    if device.type != "cuda":
        config._compile_all_devices = True  # (transformers' switch for compiling off GPUs; no public one)
    return config


def train_flops_per_token(n_params: int, n_layers: int, length: int, d_model: int) -> float:
    """Forward and backward FLOPs per token: 6 per parameter (the matmuls) plus attention's
    12·L·T·d (scores and weighted sum, forward and backward)."""
    return 6.0 * n_params + 12.0 * n_layers * length * d_model


def bench_gpt(n_layers: int = 12, batches: tuple[int, ...] = (1, 8), prompt_len: int = 16, new_tokens: int = 32,
              train_batch: int = 4, train_len: int = 128, rounds: int = 4, train_rounds: int = 6,
              device: str | None = "cpu", precision: str = "fp32", compile: bool = False,
              peak: float | None = None) -> BenchResult:
    import transformers

    dev = choose_device(device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision: expected fp32 or bf16, got {precision!r}")
    if precision == "bf16" and dev.type != "cuda":
        raise ValueError("precision: bf16 is a GPU feature here (this CPU's bf16 matmul is ~100x slower than fp32)")

    for name, value in (("n_layers", n_layers), ("prompt_len", prompt_len), ("new_tokens", new_tokens),
                        ("train_batch", train_batch), ("train_len", train_len), ("rounds", rounds),
                        ("train_rounds", train_rounds), ("batches", min(batches, default=0))):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=n_layers)  # GPT-2 small's shape: 768 wide, 12 heads, 50,257 tokens
    peer = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ours = gpt_from_hf(peer).eval()
    ours, peer = ours.to(dev), peer.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows, out = [], {}
    for b in batches:
        prompt = torch.randint(0, hf_cfg.vocab_size, (b, prompt_len), device=dev)
        for cache in (True, False):
            cfg = SamplingConfig(max_new_tokens=new_tokens, greedy=True, stop_at_eos=False, use_cache=cache)
            got: dict[str, list] = {}

            def run_ours(cfg=cfg, prompt=prompt, got=got):
                got["ours"] = generate(ours, prompt.tolist(), cfg).tokens
                sync()

            def run_peer(cache=cache, prompt=prompt, got=got):
                with torch.no_grad():
                    res = peer.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                        min_new_tokens=new_tokens, do_sample=False, use_cache=cache, pad_token_id=0)
                got["peer"] = res[:, prompt_len:].tolist()  # (a host copy: synchronizes)

            key = f"generate_b{b}_{'cache' if cache else 'nocache'}"
            out[key] = {**speed_row(b * new_tokens, time_rounds({"ours": run_ours, "peer": run_peer}, 1, rounds)),
                        "same_tokens": got["ours"] == got["peer"]}
            rows.append((f"generate batch {b} {'cached' if cache else 'no cache'} tok/s", out[key]))
        # Static caches on both sides (ours: generation/static_decoding.py; the peer's StaticCache), each
        # compiled exactly when --compile is given: ours its one-token step, transformers its forward (its
        # own auto-compile, CUDA graphs on a GPU; on a CPU it compiles only when asked to, "all devices").
        cfg = SamplingConfig(max_new_tokens=new_tokens, greedy=True, stop_at_eos=False, static_cache=True,
                             compile=compile)
        peer_kw = {"compile_config": _peer_compile_config(transformers, dev)} if compile else {"disable_compile": True}
        got = {}

        def run_ours_static(cfg=cfg, prompt=prompt, got=got):
            got["ours"] = generate(ours, prompt.tolist(), cfg).tokens
            sync()

        def run_peer_static(prompt=prompt, got=got):
            with torch.no_grad():
                res = peer.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                    min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                                    cache_implementation="static", **peer_kw)
            got["peer"] = res[:, prompt_len:].tolist()

        key = f"generate_b{b}_static"
        out[key] = {**speed_row(b * new_tokens, time_rounds({"ours": run_ours_static, "peer": run_peer_static}, 1,
                                                              rounds)), "same_tokens": got["ours"] == got["peer"]}
        rows.append((f"generate batch {b} static cache{' compiled' if compile else ''} tok/s", out[key]))
    for b in batches:
        c, nc = out[f"generate_b{b}_cache"], out[f"generate_b{b}_nocache"]
        out[f"cache_speedup_b{b}"] = {"ours": round(c["ours"] / nc["ours"], 2), "peer": round(c["peer"] / nc["peer"], 2)}

    x = torch.randint(0, hf_cfg.vocab_size, (train_batch, train_len + 1), device=dev)
    ours.train(), peer.train()
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5, **fused)
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=1e-5, **fused)
    run_ours = torch.compile(ours) if compile else ours
    run_peer = torch.compile(peer) if compile else peer
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def step(model, opt, logits_of):
        with autocast():
            loss = F.cross_entropy(logits_of(model(x[:, :-1])).float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    train = speed_row(train_batch * train_len, time_rounds({
        "ours": lambda: step(run_ours, opt_ours, lambda out: out),
        "peer": lambda: step(run_peer, opt_peer, lambda out: out.logits)}, 1, train_rounds))
    n_params = sum(p.numel() for p in ours.parameters())
    peak_t = peak_tflops(dev, peak)
    if peak_t:
        flops = train_flops_per_token(n_params, n_layers, train_len, hf_cfg.n_embd)
        train.update(mfu_ours=round(flops * train["ours"] / (peak_t * 1e12), 4),
                     mfu_peer=round(flops * train["peer"] / (peak_t * 1e12), 4), peak_tflops=peak_t)
    head = out[f"generate_b{batches[0]}_{'static' if compile else 'cache'}"]  # compiled: the static-cache row
    result = {"benchmark": "gpt", "model": f"random GPT-2 shape, {n_layers} layers, "
              f"{sum(p.numel() for p in ours.parameters()) / 1e6:.0f} M parameters",
              "unit": "new tokens/s (greedy); training: tokens/s",
              "ours": head["ours"], "peer": head["peer"], "ratio": head["ratio"],
              "prompt_len": prompt_len, "new_tokens": new_tokens, **out, "train": train,
              "peer_name": f"transformers.GPT2LMHeadModel {transformers.__version__}",
              "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(dev),
              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "precision": precision, "compile": compile, "parameters": n_params}
    notes = [f"KV cache speed-up, batch {b}: ours {out[f'cache_speedup_b{b}']['ours']:.2f}x, "
             f"peer {out[f'cache_speedup_b{b}']['peer']:.2f}x" for b in batches]
    notes += [f"same tokens as the peer in every row: {all(out[k]['same_tokens'] for k in out if k.startswith('generate'))}"]
    return BenchResult(result, rows + [(f"train {train_batch}x{train_len} tok/s", train)], notes=notes)
