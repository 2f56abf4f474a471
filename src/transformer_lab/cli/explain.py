"""`transformer-lab explain` and `transformer-lab report`: the canon's questions answered by measured
experiments (``transformer_lab.experiments``), and the page that shows the answers."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from transformer_lab.cli.args import seed
from transformer_lab.experiments.base import BUDGETS
from transformer_lab.experiments.registry import EXPERIMENTS, get
from transformer_lab.experiments.report import render
from transformer_lab.experiments.runner import RESULT, read_result, run_all, run_experiment

log = logging.getLogger("transformer_lab")
DEFAULT_OUT = "runs/explain"


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("explain", help="answer a question of the Transformer canon with a measured experiment",
                       description="Run the experiment of a canon question (ID), or all of them (--all): the "
                                   "measurement, the verdict its decision rule gives (confirmed / refuted / partly / "
                                   "inconclusive) and its figures, in OUT/ID/. --list shows every question.")
    e.add_argument("id", nargs="?", metavar="ID", help="a question id (see --list)")
    e.add_argument("--list", action="store_true", help="every question: id, question, status")
    e.add_argument("--all", action="store_true", help="run every experiment (finished ones with the same settings and "
                                                      "code are kept: resumable)")
    e.add_argument("--budget", default="quick", choices=BUDGETS,
                   help="smoke: seconds; quick: <= 3 minutes each on 2 CPU cores; full: <= 30 minutes or a GPU")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--seed", type=seed, default=0, help="the experiments' seed")
    e.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    e.add_argument("--json", action="store_true", help="print the result as one JSON object")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=explain_cmd)

    r = sub.add_parser("report", help="render the saved experiment results as one page",
                       description="Write DIR/index.html (one self-contained page) and DIR/REPORT.md from the results "
                                   "in DIR, without re-running anything.")
    r.add_argument("folder", metavar="DIR")
    r.set_defaults(func=report_cmd)


def explain_cmd(args: argparse.Namespace) -> int:
    if args.list:
        return _list(Path(args.out))
    if args.all and args.id:
        raise ValueError(f"ID {args.id!r} and --all: give one question id, or --all for every one")
    if args.all:
        results = run_all(EXPERIMENTS, args.out, args.budget, args.seed, args.device, not args.no_progress)
        for res in results:
            print(f"{res.id:18} {res.outcome:13} {res.verdict['because']}")
        runnable = sum(1 for x in EXPERIMENTS if not x.needs)
        print(f"{len(results)} of {runnable} experiments measured in {args.out}; `transformer-lab report {args.out}` "
              "renders them")
        _smoke_note(args.budget)
        return 0 if len(results) == runnable else 2
    if not args.id:
        raise ValueError("ID: give a question id, --all or --list")
    res = run_experiment(get(args.id), args.out, args.budget, args.seed, args.device, not args.no_progress)
    if args.json:
        print(json.dumps(asdict(res)))
    else:
        print(f"{res.id}: {res.outcome.upper()} (claim: {res.claim})")
        print(f"  {res.verdict['because']}")
        print(f"  {Path(args.out) / res.id / RESULT}, figures: {', '.join(res.figures)}; {res.wall_s:.0f} s")
        _smoke_note(args.budget)
    return 0


def _smoke_note(budget: str) -> None:
    if budget == "smoke":  # its rules run on a few steps of tiny models: a verdict there is no answer
        print("smoke budget: a few steps of tiny models, to check that the experiments run; the verdicts are not "
              "measurements (--budget quick or full answers the questions)")


def _list(out: Path) -> int:
    for exp in EXPERIMENTS:
        if exp.needs:
            status = f"needs {exp.needs}"
        elif (out / exp.id / RESULT).is_file():
            try:
                res = read_result(out / exp.id / RESULT)
                status = f"measured ({res.budget}): {res.outcome}"
            except ValueError:
                status = "result unreadable"
        else:
            status = "not yet run"
        print(f"{exp.id:18} {exp.question:50} {status}")
    return 0


def report_cmd(args: argparse.Namespace) -> int:
    report = render(args.folder, EXPERIMENTS)
    for s in report.skipped:
        log.warning("skipped: %s", s)
    print(f"{len(report.results)} results -> {report.html_path} and {report.markdown_path}"
          + (f" ({len(report.skipped)} unreadable, named in the report)" if report.skipped else ""))
    return 0
