"""`transformer-lab generate`: continue a prompt with a GPT (our checkpoint or a Hugging Face
GPT-2 folder). `transformer-lab evaluate --checkpoint DIR --text FILE` (language models) is here too."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="sample text from a GPT checkpoint",
                       description="Continue --prompt (or each stdin line when no --prompt) with a GPT: greedy, or "
                                   "sampling with temperature, top-k and top-p, using the KV cache.")
    g.add_argument("--checkpoint", required=True, help="our run or checkpoint folder, or a Hugging Face GPT-2 folder")
    g.add_argument("--prompt", default=None, help="text to continue (default: read prompts from stdin, one per line)")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--greedy", action="store_true", help="argmax at every step (ignores temperature/top-k/top-p)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--num-samples", type=int, default=1, help="samples per prompt (batched)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    g.add_argument("--no-cache", action="store_true", help="recompute the whole prefix each step (for comparison)")
    g.add_argument("--json", action="store_true", help='print {"samples": [{"prompt", "text", "tokens"}, ...]}')
    g.add_argument("--device", default=None)
    g.set_defaults(func=generate_cmd)


def generate_cmd(args: argparse.Namespace) -> int:
    from transformer_lab.generation.sampling import SamplingConfig, generate
    from transformer_lab.tasks.lm import load_lm
    from transformer_lab.tokenizers.io import decode_lines

    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, use_cache=not args.no_cache)  # validated first
    if args.num_samples < 1:
        raise ValueError(f"--num-samples: expected >= 1, got {args.num_samples}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_lm(args.checkpoint, device)
    prompts = [args.prompt] if args.prompt is not None else list(decode_lines(sys.stdin.buffer, "stdin"))
    ids = [encode_prompt(tok, p, model.config.eos_id) for p in prompts]
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed if args.seed is not None else torch.seed())
    rows = [i for i in ids for _ in range(args.num_samples)]
    out = generate(model, rows, cfg, generator).tokens
    samples = [{"prompt": prompts[k // args.num_samples], "text": tok.decode(t), "tokens": len(t)}
               for k, t in enumerate(out)]
    if args.json:
        print(json.dumps({"samples": samples}, ensure_ascii=False))
    else:
        for s in samples:
            print(s["prompt"] + s["text"])
            print("---")
    return 0


def encode_prompt(tok, text: str, eos_id: int | None) -> list[int]:
    """Prompt ids; an empty prompt (or one of special tokens only, which encode to nothing) starts
    from the end-of-text token when the model has one, as GPT-2's unconditional samples do."""
    ids = tok.encode(text)
    if not ids:
        if eos_id is None:
            raise ValueError("--prompt: the prompt encodes to no tokens, and this model has no end-of-text "
                             "token to start from; give some text")
        ids = [eos_id]
    return ids


def evaluate_lm_cmd(args: argparse.Namespace) -> int:
    from transformer_lab.tasks.lm import evaluate_lm, load_lm, read_text

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_lm(args.checkpoint, device)
    ids = torch.tensor(tok.encode(read_text(args.text)), dtype=torch.long)
    context = args.context or model.config.max_len
    if not 1 <= context <= model.config.max_len:
        raise ValueError(f"--context: expected 1..{model.config.max_len} (the model's max_len), got {context}")
    res = {**evaluate_lm(model, ids, context, args.batch_size), "context": context}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"loss {res['loss']:.4f} nats/token  perplexity {res['perplexity']:.2f}  ({res['tokens']:,} tokens, context {context})")
    return 0
