"""`transformer-lab generate`: continue a prompt with a GPT (our checkpoint or a Hugging Face GPT-2
folder). One sample is printed as it is generated; several (or --json) show a progress bar. Ctrl-C or
SIGTERM stops generation and prints what was generated so far (exit 130 / 143)."""

from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm.auto import tqdm

from transformer_lab.cli.args import (add_device, add_split_special_tokens, non_negative_int, positive_float, positive_int, seed,
                                      texts_or_stdin)
from transformer_lab.generation.sampling import SamplingConfig
from transformer_lab.runs import exit_code
from transformer_lab.runtime import choose_device
from transformer_lab.tasks import lm


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="sample text from a GPT checkpoint", description=__doc__)
    g.add_argument("--checkpoint", required=True, help="our run or checkpoint folder, or a Hugging Face GPT-2 folder")
    g.add_argument("--prompt", default=None, help="text to continue (default: read prompts from stdin, one per line)")
    g.add_argument("--max-new-tokens", type=positive_int, default=200)
    g.add_argument("--greedy", action="store_true", help="argmax at every step (ignores temperature/top-k/top-p)")
    g.add_argument("--temperature", type=positive_float, default=1.0)
    g.add_argument("--top-k", type=non_negative_int, default=None,
                   help="sample among the k most likely tokens (0 or unset: all)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--num-samples", type=positive_int, default=1, help="samples per prompt (batched)")
    g.add_argument("--seed", type=seed, default=None, help="sampling seed (default: random)")
    g.add_argument("--no-cache", action="store_true", help="recompute the whole prefix each step (for comparison)")
    g.add_argument("--static-cache", action="store_true",
                   help="K/V in buffers allocated once (prompt + new tokens, up to the context), every step the "
                        "same shapes")
    g.add_argument("--compile", action="store_true",
                   help="the decoding step under torch.compile, with the static cache (CUDA graphs on a GPU); "
                        "the first steps compile (tens of seconds)")
    add_split_special_tokens(g)
    g.add_argument("--json", action="store_true", help='print {"samples": [{"prompt", "text", "tokens"}, ...]}')
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device(g)
    g.set_defaults(func=generate_cmd)


def generate_cmd(args: argparse.Namespace) -> int:
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, use_cache=not args.no_cache,
                         static_cache=args.static_cache, compile=args.compile)  # validated first
    device = choose_device(args.device)
    model, tok = lm.load_lm(args.checkpoint, device, args.split_special_tokens)
    prompts = [args.prompt] if args.prompt is not None else texts_or_stdin([], "continue", given="--prompt")
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed if args.seed is not None else torch.seed())
    stream = not args.json and len(prompts) * args.num_samples == 1  # one sample: print it as it comes
    bar = tqdm(total=cfg.max_new_tokens, unit="tok", desc="generate", leave=False, file=sys.stderr,
               disable=True if (stream or args.no_progress) else None)  # None: only on a terminal
    pending = [prompts[0]]  # the prompt, printed with the first text: once it has passed the checks

    def show(text: str) -> None:
        print(*pending, text, sep="", end="", flush=True)
        pending.clear()

    res = lm.sample(model, tok, prompts, cfg, generator, args.num_samples, on_text=show if stream else None,
                    on_step=lambda: bar.update(1))
    bar.close()
    if stream:
        show("")
        print("\n---")
    elif args.json:
        samples = [{"prompt": p, "text": t, "tokens": n} for p, t, n in zip(res.prompts, res.texts, res.tokens)]
        print(json.dumps({"samples": samples, **({"stopped_by_signal": res.signum} if res.signum else {})},
                         ensure_ascii=False))
    else:
        for p, t in zip(res.prompts, res.texts):
            print(p + t)
            print("---")
    return exit_code(res.signum)
