"""Our GPT against Hugging Face ``GPT2LMHeadModel`` with the same weights: a random GPT-2-shaped model
(124 M) built by ``transformers`` and converted; greedy generation tokens/s with and without the KV
cache (ours: ``generation.sampling.generate``; peer: ``GPT2LMHeadModel.generate``), batch 1 and 8;
and training tokens/s (forward, loss, backward, AdamW step). Both sides produce the same tokens
(checked and reported)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transformer_lab.bench.harness import BenchResult, speed_row, time_rounds
from transformer_lab.generation.sampling import SamplingConfig, generate
from transformer_lab.models.hf import gpt_from_hf


def bench_gpt(n_layers: int = 12, batches: tuple[int, ...] = (1, 8), prompt_len: int = 16, new_tokens: int = 32,
              train_batch: int = 4, train_len: int = 128, rounds: int = 4, train_rounds: int = 6) -> BenchResult:
    import transformers

    for name, value in (("n_layers", n_layers), ("prompt_len", prompt_len), ("new_tokens", new_tokens),
                        ("train_batch", train_batch), ("train_len", train_len), ("rounds", rounds),
                        ("train_rounds", train_rounds), ("batches", min(batches, default=0))):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=n_layers)  # GPT-2 small's shape: 768 wide, 12 heads, 50,257 tokens
    peer = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ours = gpt_from_hf(peer).eval()
    rows, out = [], {}
    for b in batches:
        prompt = torch.randint(0, hf_cfg.vocab_size, (b, prompt_len))
        for cache in (True, False):
            cfg = SamplingConfig(max_new_tokens=new_tokens, greedy=True, stop_at_eos=False, use_cache=cache)
            got: dict[str, list] = {}

            def run_ours(cfg=cfg, prompt=prompt, got=got):
                got["ours"] = generate(ours, prompt.tolist(), cfg).tokens

            def run_peer(cache=cache, prompt=prompt, got=got):
                with torch.no_grad():
                    res = peer.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                        min_new_tokens=new_tokens, do_sample=False, use_cache=cache, pad_token_id=0)
                got["peer"] = res[:, prompt_len:].tolist()

            key = f"generate_b{b}_{'cache' if cache else 'nocache'}"
            out[key] = {**speed_row(b * new_tokens, time_rounds({"ours": run_ours, "peer": run_peer}, 1, rounds)),
                        "same_tokens": got["ours"] == got["peer"]}
            rows.append((f"generate batch {b} {'cached' if cache else 'no cache'} tok/s", out[key]))
    for b in batches:
        c, nc = out[f"generate_b{b}_cache"], out[f"generate_b{b}_nocache"]
        out[f"cache_speedup_b{b}"] = {"ours": round(c["ours"] / nc["ours"], 2), "peer": round(c["peer"] / nc["peer"], 2)}

    x = torch.randint(0, hf_cfg.vocab_size, (train_batch, train_len + 1))
    ours.train(), peer.train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=1e-5)

    def train_ours():
        loss = F.cross_entropy(ours(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def train_peer():
        loss = F.cross_entropy(peer(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
        opt_peer.zero_grad(set_to_none=True)
        loss.backward()
        opt_peer.step()

    train = speed_row(train_batch * train_len, time_rounds({"ours": train_ours, "peer": train_peer}, 1, train_rounds))
    head = out[f"generate_b{batches[0]}_cache"]
    result = {"benchmark": "gpt", "model": f"random GPT-2 shape, {n_layers} layers, "
              f"{sum(p.numel() for p in ours.parameters()) / 1e6:.0f} M parameters",
              "unit": "new tokens/s (greedy); training: tokens/s",
              "ours": head["ours"], "peer": head["peer"], "ratio": head["ratio"],
              "prompt_len": prompt_len, "new_tokens": new_tokens, **out, "train": train,
              "peer_name": f"transformers.GPT2LMHeadModel {transformers.__version__}",
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    notes = [f"KV cache speed-up, batch {b}: ours {out[f'cache_speedup_b{b}']['ours']:.2f}x, "
             f"peer {out[f'cache_speedup_b{b}']['peer']:.2f}x" for b in batches]
    notes += [f"same tokens as the peer in every row: {all(out[k]['same_tokens'] for k in out if k.startswith('generate'))}"]
    return BenchResult(result, rows + [(f"train {train_batch}x{train_len} tok/s", train)], notes=notes)
