"""`transformer-lab serve`: a model behind HTTP (FastAPI + uvicorn) with request batching.

    transformer-lab serve --checkpoint runs/m30k-int8 --port 8000
    curl -s localhost:8000/translate -H 'content-type: application/json' -d '{"texts": ["Ein Hund läuft."]}'

Endpoints by model (JSON bodies; interactive documentation at /docs):

    GET  /health      all models: {"status": "ok", "model": ..., batching figures}
    POST /translate   translation: {"texts": [...], "beam": 4} -> {"translations": [...]}
                      (no beam: --beam's, 4 as `transformer-lab translate`; 1: greedy, the lowest latency)
    POST /embed       BERT: {"texts": [...]} -> {"embeddings": [[...], ...]}
    POST /classify    a BERT classifier (`finetune classify`'s run, OUT/model or OUT/quantized):
                      {"texts": [...]} -> {"labels": [...], "probabilities": [[...], ...]}
    POST /generate    GPT: {"prompt": "...", "max_new_tokens": 64, "temperature": 1.0, "top_k": null,
                      "top_p": 1.0, "greedy": false, "seed": null} -> {"text": "...", "tokens": n}
                      (max_new_tokens up to --max-new-tokens; top_k 0 or null: off)
"""

from __future__ import annotations

import argparse

from transformer_lab.cli.args import add_threads, positive_float, positive_int
from transformer_lab.serving.app import ServeConfig, serve


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (/translate, /embed, /classify, /generate, /health)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="our run or checkpoint folder (quantized too), or an HF BERT / "
                                                       "GPT-2 folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port, default=8000, help="1-65535")
    p.add_argument("--max-batch", type=positive_int, default=32, help="texts per model call")
    p.add_argument("--max-wait-ms", type=positive_float, default=5.0, help="wait for more requests to join a batch")
    add_threads(p)
    p.add_argument("--max-texts", type=positive_int, default=64, help="texts per request")
    p.add_argument("--max-chars", type=positive_int, default=2000, help="characters per text")
    p.add_argument("--beam", type=positive_int, default=None,
                   help="translation: the beam of a request that names none (default 4, as `translate`, at most "
                        "--max-beam; 1: greedy)")
    p.add_argument("--max-beam", type=positive_int, default=8, help="translation: the largest beam a request may ask for")
    p.add_argument("--max-new-tokens", type=positive_int, default=1024,
                   help="GPT: the most tokens one /generate request may ask for (past the context the window slides)")
    p.add_argument("--compile", action="store_true", help="BERT: torch.compile the encoder before listening (25-30 s; "
                                                          "then up to 1.3x for a per-token INT8 model, about 1x for fp32)")
    p.set_defaults(func=serve_cmd)


def serve_cmd(args: argparse.Namespace) -> int:
    serve(ServeConfig(args.checkpoint, args.max_batch, args.max_wait_ms, args.max_texts, args.max_chars,
                      max_beam=args.max_beam, beam=args.beam, max_new_tokens=args.max_new_tokens, compile=args.compile),
          args.host, args.port)
    return 0
