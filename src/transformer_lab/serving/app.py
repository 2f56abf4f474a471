"""`transformer-lab serve`: one model behind HTTP, with request batching.

    GET  /health      {"status": "ok", "model": "translation" | "gpt" | "bert", "quantized": ..., batching figures}
    POST /translate   {"texts": [...], "beam": 4}                  -> {"translations": [...], "truncated": [i, ...]}
    POST /embed       {"texts": [...]}                             -> {"embeddings": [[...], ...], "truncated": [i, ...]}
    POST /classify    {"texts": [...]} (a BERT with a classifier)  -> {"labels": [...], "probabilities": [[...], ...],
                                                                       "truncated": [i, ...]}
    POST /generate    {"prompt": "...", "max_new_tokens": 64, "temperature": 1.0, "top_k": null,
                       "top_p": 1.0, "greedy": false, "seed": null} -> {"text": "...", "tokens": n}

The model runs in one worker thread, so requests never race on it. /translate, /embed and /classify requests
that arrive together are batched: the worker takes every waiting request (up to ``max_batch``
texts, after waiting ``max_wait_ms`` for more) and runs them as one model call, each caller getting
its own rows back. /generate runs one request at a time (each carries its own sampling settings).

Input is bounded: at most ``max_texts`` texts of at most ``max_chars`` characters each, a body of at
most ``max_body`` bytes, ``max_new_tokens`` up to the server's ``max_new_tokens`` (past the model's context the
window slides, as `transformer-lab generate` does). A request outside the bounds,
malformed JSON or a wrong field is a 4xx with a message (413 for an oversized body, 422 for a
malformed one, 400 for input the model refuses, 404 for an endpoint another kind of model serves);
the server keeps serving the others.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at run time,
# and the request models are local to ``build_app``.
import asyncio
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from transformer_lab.generation.sampling import SamplingConfig
from transformer_lab.models.bert import Bert
from transformer_lab.models.gpt import GPT
from transformer_lab.models.hf import sentence_max_seq_length
from transformer_lab.models.transformer import Transformer
from transformer_lab.runtime import compile_for_inference
from transformer_lab.tasks import classify as classify_task
from transformer_lab.tasks import embed as embed_task
from transformer_lab.tasks import lm
from transformer_lab.tasks.quantize import load_source
from transformer_lab.tasks.translation import translate_detailed


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str
    max_batch: int = 32  # texts per model call
    max_wait_ms: float = 5.0  # how long the worker waits for more requests to join a batch
    max_texts: int = 64  # texts per request
    max_chars: int = 2000  # characters per text
    max_body: int = 1 << 20  # bytes per request body
    max_beam: int = 8
    beam: int | None = None  # /translate's beam when a request names none (None: 4, as `translate`, at most max_beam)
    max_new_tokens: int = 1024  # GPT: tokens per /generate request (past the context, the window slides)
    compile: bool = False  # BERT: torch.compile the encoder, compiled before the server listens

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_texts", "max_chars", "max_body", "max_beam", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.beam is not None and not 1 <= self.beam <= self.max_beam:
            raise ValueError(f"beam: expected 1..max_beam ({self.max_beam}), got {self.beam}")

    @property
    def default_beam(self) -> int:
        return self.beam if self.beam is not None else min(4, self.max_beam)


@dataclass
class _Job:
    texts: list[str]
    key: Any  # requests batch together only with the same key (translation: the beam size)
    future: Future = field(default_factory=Future)


class Worker:
    """One thread owns the model; ``submit`` queues texts and returns a future of their results."""

    def __init__(self, run_batch: Callable[[list[str], Any], list[Any]], max_batch: int, max_wait_ms: float):
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.queue: list[_Job] = []
        self.cond = threading.Condition()
        self.batches = self.requests = self.largest = 0
        self.thread = threading.Thread(target=self._loop, name="model-worker", daemon=True)
        self.thread.start()

    def submit(self, texts: list[str], key: Any = None) -> Future:
        job = _Job(texts, key)
        with self.cond:
            self.queue.append(job)
            self.cond.notify()
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` alone on the model thread (a request that is not batched)."""
        return self.submit([], ("call", fn))

    def _take(self) -> list[_Job]:
        with self.cond:
            while not self.queue:
                self.cond.wait()
            self.cond.wait_for(lambda: sum(len(j.texts) for j in self.queue) >= self.max_batch, timeout=self.max_wait)
            first = self.queue[0]
            if isinstance(first.key, tuple) and first.key[0] == "call":
                return [self.queue.pop(0)]
            jobs, n = [], 0
            for job in list(self.queue):
                if job.key == first.key and (not jobs or n + len(job.texts) <= self.max_batch):
                    jobs.append(job)
                    n += len(job.texts)
                    self.queue.remove(job)
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            try:
                if isinstance(jobs[0].key, tuple) and jobs[0].key[0] == "call":  # (/generate: one request alone)
                    result = jobs[0].key[1]()
                    self.batches, self.requests, self.largest = self.batches + 1, self.requests + 1, max(self.largest, 1)
                    jobs[0].future.set_result(result)  # (counted first: a /health right after sees it)
                    continue
                texts = [t for j in jobs for t in j.texts]
                out = self.run_batch(texts, jobs[0].key)
                self.batches, self.requests = self.batches + 1, self.requests + len(jobs)
                self.largest = max(self.largest, len(jobs))
                start = 0
                for j in jobs:
                    j.future.set_result(out[start:start + len(j.texts)])
                    start += len(j.texts)
            except Exception as e:  # the callers get the error; the worker keeps serving
                if len(jobs) > 1:  # one request's input may have failed the shared call: each alone, so only it fails
                    for j in jobs:
                        self._alone(j)
                    continue
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)

    def _alone(self, job: _Job) -> None:
        try:
            job.future.set_result(self.run_batch(job.texts, job.key))
            self.batches, self.requests = self.batches + 1, self.requests + 1
        except Exception as e:
            job.future.set_exception(e)


def build_app(cfg: ServeConfig) -> Any:
    """The FastAPI application serving ``cfg.checkpoint`` (FastAPI is imported here: only `serve` needs it)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    # A field a request misspells is a 422 naming it, not ignored; whole numbers are JSON integers ("beam":
    # true or 4.5 is a 422, not 1 or 4), as are yes/no values booleans.
    strict = ConfigDict(extra="forbid")

    class Texts(BaseModel):
        model_config = strict
        texts: list[str] = Field(min_length=1)
        beam: int | None = Field(default=None, ge=1, strict=True)  # None: the server's (cfg.beam)

    class GenerateRequest(BaseModel):
        model_config = strict
        prompt: str
        max_new_tokens: int = Field(default=64, ge=1, strict=True)
        temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
        top_k: int | None = Field(default=None, ge=0, strict=True)  # (0 or null: off, as the CLI's --top-k)
        top_p: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
        greedy: bool = Field(default=False, strict=True)
        seed: int | None = Field(default=None, ge=0, le=2**32 - 1, strict=True)

    source = load_source(cfg.checkpoint)
    model = source.model.eval()
    kind = "translation" if isinstance(model, Transformer) else "gpt" if isinstance(model, GPT) else "bert"
    max_len = sentence_max_seq_length(source.folder, model.config.max_len) if isinstance(model, Bert) else None
    if cfg.compile:
        if kind != "bert":
            raise ValueError(f"compile: offered for BERT models (/embed) only; a {kind} model decodes step by step, and "
                             "a compiled decoder step measured slower than eager (0.88x)")
        model = compile_for_inference(model)
        for warm in (["warm-up"], ["warm-up", "a second, longer warm-up text"]):  # batch 1 is specialised apart
            embed_task.embed(model, source.tokenizer, warm, max_len)

    classify_len = classify_task.cut_length(source.folder, model) if kind == "bert" and model.config.n_labels else None

    def run_batch(texts: list[str], key: Any) -> list[Any]:
        with torch.no_grad():
            cut: list[int] = []
            if kind == "translation":
                res = translate_detailed(model, source.tokenizer, source.target_tokenizer, texts, beam=key,
                                         batch_size=cfg.max_batch)
                rows, cut = res.texts, res.truncated
            elif key == "classify":
                rows = classify_task.predict(model, source.tokenizer, texts, classify_len, cfg.max_batch, cut).tolist()
            else:
                rows = embed_task.embed(model, source.tokenizer, texts, max_len, cfg.max_batch, cut).tolist()
            cut_set = set(cut)  # (each row, and whether its text was cut to the model's length)
            return [(row, i in cut_set) for i, row in enumerate(rows)]

    worker = Worker(run_batch, cfg.max_batch, cfg.max_wait_ms)
    app = FastAPI(title="transformer-lab", description=f"serving {cfg.checkpoint} ({kind})")
    app.state.worker = worker

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each field and what is wrong with it, without echoing the input back (FastAPI's own
        answer echoes it, and a NaN or Infinity in it cannot be written as JSON: a 500)."""
        return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                                        for e in exc.errors()]}, status_code=422)

    app.add_middleware(BoundedBody, limit=cfg.max_body)

    def check_texts(req: Texts) -> None:
        if len(req.texts) > cfg.max_texts:
            raise HTTPException(413, f"texts: {len(req.texts)} in one request, the limit is {cfg.max_texts}")
        long = [i for i, t in enumerate(req.texts) if len(t) > cfg.max_chars]
        if long:
            raise HTTPException(413, f"texts[{long[0]}]: {len(req.texts[long[0]])} characters, the limit is {cfg.max_chars}")

    def serves(wanted: str) -> None:
        if kind != wanted:
            other = {"translation": "/translate", "gpt": "/generate",
                     "bert": "/embed and /classify" if getattr(model.config, "n_labels", 0) else "/embed"}[kind]
            raise HTTPException(404, f"this server holds a {kind} model; it answers {other}, not this endpoint")

    def cut_rows(rows: list[tuple[Any, bool]]) -> list[int]:
        """The indices of the texts cut to the model's length (the CLI warns of them; a client is told here)."""
        return [i for i, (_, cut) in enumerate(rows) if cut]

    async def result(future: Future) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except ValueError as e:  # the model refused the input (ids out of range, too long ...)
            raise HTTPException(400, str(e)) from None

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": kind, "checkpoint": cfg.checkpoint,
                "quantized": getattr(model, "quant_config", None) is not None, "batches": worker.batches,
                "requests": worker.requests, "largest_batch_requests": worker.largest, "queued": len(worker.queue)}

    @app.post("/translate")
    async def translate_texts(req: Texts) -> dict:
        serves("translation")
        check_texts(req)
        beam = cfg.default_beam if req.beam is None else req.beam
        if beam > cfg.max_beam:
            raise HTTPException(422, f"beam: {beam}, the limit is {cfg.max_beam}")
        rows = await result(worker.submit(req.texts, beam))
        return {"translations": [text for text, _ in rows], "truncated": cut_rows(rows)}

    @app.post("/embed")
    async def embed_texts(req: Texts) -> dict:
        serves("bert")
        check_texts(req)
        rows = await result(worker.submit(req.texts))
        return {"embeddings": [row for row, _ in rows], "truncated": cut_rows(rows)}

    @app.post("/classify")
    async def classify_texts(req: Texts) -> dict:
        serves("bert")
        if not model.config.n_labels:
            raise HTTPException(404, "this BERT has no classification head; it answers /embed (a classifier: what "
                                     "`finetune classify` writes)")
        check_texts(req)
        rows = await result(worker.submit(req.texts, "classify"))
        probabilities = [row for row, _ in rows]
        return {"labels": [max(range(len(p)), key=p.__getitem__) for p in probabilities], "probabilities": probabilities,
                "truncated": cut_rows(rows)}

    @app.post("/generate")
    async def generate_text(req: GenerateRequest) -> dict:
        serves("gpt")
        if len(req.prompt) > cfg.max_chars:
            raise HTTPException(413, f"prompt: {len(req.prompt)} characters, the limit is {cfg.max_chars}")
        if req.max_new_tokens > cfg.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens: {req.max_new_tokens}, this server's limit is {cfg.max_new_tokens} "
                                     "(serve --max-new-tokens)")
        try:
            sampling = SamplingConfig(max_new_tokens=req.max_new_tokens, greedy=req.greedy, temperature=req.temperature,
                                      top_k=req.top_k, top_p=req.top_p)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

        def run() -> dict:
            g = torch.Generator().manual_seed(req.seed if req.seed is not None else torch.seed())
            s = lm.sample(model, source.tokenizer, [req.prompt], sampling, g)
            return {"text": s.texts[0], "tokens": s.tokens[0]}

        return await result(worker.call(run))

    return app


class BoundedBody:
    """ASGI middleware: a request body over ``limit`` bytes is a 413, whether its Content-Length says so
    (answered before any byte is read) or a chunked upload grows past it (counted as it arrives: the
    body is never read whole; a chunked 200 MB upload was read and parsed before the count of texts
    refused it)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        from fastapi import HTTPException
        from fastapi.responses import JSONResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": f"request body of {int(declared)} bytes exceeds the limit of {self.limit}"},
                                    status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # (raised inside the route's body read: FastAPI answers it)
                    raise HTTPException(413, f"request body of more than {self.limit} bytes (the limit)")
            return message

        await self.app(scope, counted, send)


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise OSError(f"serve needs FastAPI and uvicorn ({e}); pip install 'transformer-lab[deploy]'") from None

    check_free(host, port)  # before the model loads: a busy port is a one-line error, not uvicorn's exit 3
    uvicorn.run(build_app(cfg), host=host, port=port, log_level="info")


def check_free(host: str, port: int) -> None:
    """OSError naming the address when nothing can listen on it (in use, or not this machine's)."""
    if not 0 <= port < 65536:
        raise ValueError(f"port: expected 0..65535 (0: any free one), got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as uvicorn binds)
        try:
            probe.bind(address)
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror} (another server there? choose --port)") from None
