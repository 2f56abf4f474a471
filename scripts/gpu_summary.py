"""The figures of a gpu_check.sh run, a few lines each, so they reach the caller in the command's output
(a device call returns its last 12,000 characters, and at most 8 files).

    python scripts/gpu_summary.py WORK     # WORK: gpu_check.sh's working folder

Per step: the bench commands' JSON (ours, peer, ratio and the other scalar fields), and for each training
run its steady rate from metrics.csv: steps and tokens per second between the first and the last log row
(the first window holds start-up and compilation), the last loss, and summary.json's validation.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def scalars(obj, prefix: str = "", depth: int = 0) -> list[str]:
    """name=value for the numbers and short strings of a JSON object, nested names joined with '.'."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and depth < 3:
            out += scalars(v, name + ".", depth + 1)
        elif isinstance(v, float):
            out.append(f"{name}={v:.4g}")
        elif isinstance(v, (int, bool)) or (isinstance(v, str) and len(v) < 40):
            out.append(f"{name}={v}")
    return out


def bench(path: Path) -> str | None:
    text = path.read_text().strip()
    if not text:  # (a training step prints nothing: its figures are its run folder's)
        return None
    try:
        return f"{path.stem}: " + " ".join(scalars(json.loads(text)))
    except json.JSONDecodeError:
        return f"{path.stem}: " + text[-600:].replace("\n", " | ")


def run(folder: Path) -> str:
    rows = list(csv.DictReader(open(folder / "metrics.csv"))) if (folder / "metrics.csv").exists() else []
    validated = any(r.get("val_loss") not in (None, "") for r in rows[:-1])
    rows = [r for r in rows if r.get("loss") not in (None, "")]
    line = f"{folder.name}: {len(rows)} log rows" + (" (the rates include validation passes)" if validated else "")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        steps, secs = int(b["step"]) - int(a["step"]), float(b["elapsed_s"]) - float(a["elapsed_s"])
        tok = sum(float(r["tokens_per_s"]) for r in rows[1:]) / (len(rows) - 1)
        line += (f", steady (steps {a['step']}-{b['step']}): {steps / max(secs, 1e-9):.1f} steps/s, "
                 f"{tok:,.0f} tokens/s; total {b['elapsed_s']} s to step {b['step']}; last loss {float(b['loss']):.4f}")
    summary = folder / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        line += "; summary: " + " ".join(x for x in scalars(s) if "val" in x or x.startswith(("steps", "train_seconds")))
    return line


def main(work: str) -> None:
    root = Path(work)
    for name in ("device.txt", "status.txt"):
        if (root / name).exists():
            print(f"--- {name}\n{(root / name).read_text().strip()}")
    print("--- figures")
    for line in filter(None, map(bench, sorted(root.glob("*.json")))):
        print(line)
    for folder in sorted(p for p in root.glob("run_*") if p.is_dir()):
        print(run(folder))


if __name__ == "__main__":
    main(sys.argv[1])
