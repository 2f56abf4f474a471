"""Running experiments and keeping their results.

``run_experiment`` measures one question and writes ``OUT/ID/result.json`` (settings, measurements,
the decision rule, the verdict, versions, machine, wall time) and the figures beside it. A result is
keyed by its settings and the version of the code it runs: the library, the experiments' engine and
shared helpers, and its own module (not the other questions' modules). ``run_all`` keeps a finished
result whose key matches (resumable), and re-runs one whose settings or code changed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from transformer_lab import __version__
from transformer_lab.config import read_json_object
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.runtime import choose_device

log = logging.getLogger(__name__)
RESULT = "result.json"
SOURCE = Path(__file__).resolve().parents[1]  # the transformer_lab package


QUESTIONS = SOURCE / "experiments" / "questions"
# An experiment trains many small models: the loop's and the tasks' lines for each run ("recipe: ...",
# "stopped by max_steps ...", the warm-up warning of a short run) are not the experiment's to print.
TRAINING_LOGS = {"transformer_lab.training": logging.ERROR, "transformer_lab.tasks": logging.WARNING}


@contextmanager
def quiet(levels: dict[str, int]) -> Iterator[None]:
    """The named loggers at (at least) these levels while the block runs."""
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    before = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, level in before.items():
            lg.setLevel(level)


def code_version(exp: Experiment | None = None) -> str:
    """A hash of the source an experiment runs: the whole package except the question modules, plus
    ``exp``'s own module and the questions' shared helpers (``questions/_*.py``) it imports. Any change
    there makes its earlier results stale; editing another question does not."""
    own = Path(inspect.getfile(type(exp))).resolve() if exp is not None else None
    own_text = own.read_text() if own is not None else ""
    h = hashlib.sha256(__version__.encode())
    for path in sorted(SOURCE.rglob("*.py")):
        if path.parent == QUESTIONS and path != own and path.name != "__init__.py" and (
                not path.name.startswith("_") or (own is not None and f"questions.{path.stem} import" not in own_text)):
            continue  # another question, or a shared helper this one does not import
        if path == SOURCE / "experiments" / "registry.py":
            continue  # the list of questions, not how any is measured
        h.update(str(path.relative_to(SOURCE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def result_key(exp_id: str, settings: dict[str, Any], version: str) -> str:
    text = json.dumps({"id": exp_id, "settings": settings, "code": version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict[str, str]:
    import numpy

    return {"transformer_lab": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0]}


@dataclass
class Result:
    id: str
    budget: str
    key: str
    settings: dict[str, Any]
    measurements: dict[str, Any]
    verdict: dict[str, Any]
    figures: list[str]
    wall_s: float
    command: str
    question_zh: str = ""
    question: str = ""
    claim: str = ""
    rule: str = ""
    versions: dict[str, str] | None = None
    machine: dict[str, Any] | None = None

    @property
    def outcome(self) -> str:
        return self.verdict["outcome"]


def read_result(path: Path) -> Result:
    """A result.json; ValueError naming the file when it is not one."""
    data = read_json_object(path, "no result here")
    try:
        return Result(**data)
    except TypeError as e:
        raise ValueError(f"{path}: not an experiment result ({e})") from None


def run_experiment(exp: Experiment, out: str | Path, budget: str = "quick", seed: int = 0, device: str | None = None,
                   progress: bool = True, reuse: bool = False) -> Result:
    """Measure ``exp`` and write its result and figures into ``out/ID``. With ``reuse``, a result of the
    same settings and code already there is returned without running."""
    if exp.needs:
        raise ValueError(f"{exp.id}: needs {exp.needs}, which is not built yet")
    settings = {**exp.settings(budget), "seed": seed}
    dev = choose_device(device)
    key = result_key(exp.id, {**settings, "device": dev.type}, code_version(exp))
    folder = Path(out) / exp.id
    if reuse and (folder / RESULT).is_file():
        try:
            old = read_result(folder / RESULT)
            if old.key == key:
                log.info("%s: kept (same settings and code)", exp.id)
                return old
        except ValueError as e:
            log.warning("%s", e)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"{folder}: cannot write the results here ({e.strerror or e})") from None
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with quiet(TRAINING_LOGS):
        measurements = exp.run(settings, Context(seed=seed, device=dev, folder=folder, progress=progress))
    wall = time.perf_counter() - t0
    verdict: Verdict = exp.verdict(measurements)
    figures = [p.name for p in exp.figures(measurements, folder)]
    command = f"transformer-lab explain {exp.id} --budget {budget} --seed {seed}" + (
        f" --device {dev.type}" if dev.type != "cpu" else "")
    result = Result(exp.id, budget, key, settings, measurements, asdict(verdict), figures, round(wall, 2), command,
                    exp.question_zh, exp.question, exp.claim, exp.rule, versions(), machine())
    tmp = folder / f".{RESULT}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(asdict(result), indent=2, allow_nan=False) + "\n")
    tmp.replace(folder / RESULT)
    return result


def run_all(experiments: Iterable[Experiment], out: str | Path, budget: str = "quick", seed: int = 0,
            device: str | None = None, progress: bool = True) -> list[Result]:
    """Every runnable experiment, keeping the finished ones (resumable); one that fails is logged and
    the others go on."""
    results = []
    for exp in experiments:
        if exp.needs:
            continue
        try:
            results.append(run_experiment(exp, out, budget, seed, device, progress, reuse=True))
        except (ValueError, OSError, RuntimeError) as e:
            log.error("%s: failed (%s)", exp.id, e)
    return results
