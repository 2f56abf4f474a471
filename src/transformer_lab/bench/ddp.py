"""One training command in 1 process and in N processes under torchrun (DDP), one after the other:
training tokens/s of each and their ratio (N processes against 1).

    transformer-lab bench ddp --nproc 2 -- --preset multi30k-de-en

The arguments after ``--`` are ``train``'s (the bench sets ``--out``, ``--max-steps``, ``--log-every``,
``--no-progress``). The rate is the median of the logged windows after the first (which holds start-up,
data preparation and first-step costs); in N processes it counts every process's tokens (the run logs
the global batch). The 1-process run uses torch's default threads, each of the N processes
``cpu_count // N`` (torchrun's default would be 1).
"""

from __future__ import annotations

import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from transformer_lab.bench.harness import BenchResult
from transformer_lab.runtime.distributed import ENV

OWN = ("--out", "--max-steps", "--log-every", "--no-progress", "--resume", "--overwrite")
TORCHRUN_ENV = (*ENV, "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")  # an outer launch's


def free_port() -> int:
    """A TCP port free on this machine now (torchrun's rendezvous for a local launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def window_rates(metrics: Path) -> list[float]:
    """tokens/s of each logged training window (metrics.csv's ``tokens_per_s``), in order."""
    with open(metrics, newline="") as f:
        return [float(r["tokens_per_s"]) for r in csv.DictReader(f) if r.get("tokens_per_s")]


def _train(args: Sequence[str], out: Path, nproc: int, steps: int, log_every: int) -> float:
    cmd = [sys.executable]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    cmd += ["-m", "transformer_lab", "train", *args, "--out", str(out), "--max-steps", str(steps),
            "--log-every", str(log_every), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... exited {done.returncode}:\n{done.stderr[-2000:]}")
    rates = window_rates(out / "metrics.csv")[1:]
    if not rates:
        raise ValueError(f"steps: {steps} steps at --log-every {log_every} leave no window after the first; "
                         "give more steps")
    return statistics.median(rates)


def bench_ddp(train_args: Sequence[str], nproc: int = 2, steps: int = 40, log_every: int = 5,
              on_run: Callable[[str], None] | None = None) -> BenchResult:
    if nproc < 2:
        raise ValueError(f"nproc: expected >= 2 processes to compare with one, got {nproc}")
    if steps <= log_every:  # (the first window holds start-up: at least one more is measured)
        raise ValueError(f"steps: {steps} steps at --log-every {log_every} leave no window after the first; "
                         f"give more than {log_every} steps")
    clash = [a for a in train_args if a.split("=")[0] in OWN]
    if clash:
        raise ValueError(f"train arguments: {clash} are the bench's to set; leave them out")
    note = on_run or (lambda _: None)
    with tempfile.TemporaryDirectory() as tmp:
        note("1 process")
        one = _train(train_args, Path(tmp) / "one", 1, steps, log_every)
        note(f"{nproc} processes")
        many = _train(train_args, Path(tmp) / "many", nproc, steps, log_every)
    row = {"ours": round(many, 1), "peer": round(one, 1), "ratio": round(many / one, 3)}
    result = {"benchmark": "ddp", "processes": nproc, "steps": steps, "unit": "training tokens/s (all processes)",
              "cpu_count": os.cpu_count(), "train_args": list(train_args), **row}
    return BenchResult(result, [(f"{nproc} processes (ours) vs 1 (peer)", row)],
                       header=f"bench ddp: train {' '.join(train_args)}; {steps} steps, tokens/s after the first window")
