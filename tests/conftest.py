import contextlib
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def padded_batch(b: int, max_len: int, vocab: int, pad_id: int = 0, min_len: int = 1) -> torch.Tensor:
    """Random ids in [pad_id+1, vocab) with right padding; lengths from min_len to max_len, the
    longest row always full so the tensor is exactly (b, max_len)."""
    lengths = torch.randint(min_len, max_len + 1, (b,))
    lengths[0] = max_len
    x = torch.randint(pad_id + 1, vocab, (b, max_len))
    x[torch.arange(max_len)[None, :] >= lengths[:, None]] = pad_id
    return x


def shared_data_dir():
    """Real data for tests: $TRANSFORMER_LAB_DATA, else ../shared/data beside the repository.
    Missing data fails under CI (CI=true) and skips elsewhere, with the reason."""
    import os
    from pathlib import Path

    root = os.environ.get("TRANSFORMER_LAB_DATA") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    path = Path(root)
    if not (path / "multi30k").is_dir():
        message = f"real data not found at {path} (set TRANSFORMER_LAB_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data():
    return shared_data_dir()


def read_lines(path) -> list[str]:
    """Lines of a plain or .gz text file, without their newline."""
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def require(module: str):
    """Import a test oracle from the dev extras. Missing, it fails under CI (CI=true: the oracle must
    run there, a skip would hide it) and skips elsewhere, with the reason."""
    import importlib
    import os

    try:
        return importlib.import_module(module)
    except ImportError as e:
        message = f"test oracle {module!r} is not installed ({e}); pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def sigterm_at(trainer, step: int, monkeypatch, times: int = 1) -> None:
    """SIGTERM (``times`` of them) sent to this process during the backward pass of ``trainer``'s step
    ``step`` + 1 (its state's step counts the finished ones)."""
    import os
    import signal

    real_backward = trainer.backward

    def backward(batches, weights=None):
        if trainer.state.step == step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGTERM)
        return real_backward(batches, weights)

    monkeypatch.setattr(trainer, "backward", backward)


@contextlib.contextmanager
def started(cfg):
    """``serve``'s app for ``cfg`` (a ``ServeConfig``) on a free localhost port, uvicorn in a thread; yields
    its URL and stops it after."""
    import socket
    import threading
    import time

    import uvicorn

    from transformer_lab.serving.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def call(url: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    """POST ``body`` as JSON (or ``raw`` bytes; GET with neither) to ``url + path``: (status, JSON answer)."""
    import json
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
