"""The report: every saved result of a folder on one self-contained page (``index.html``, figures
inlined) and in ``REPORT.md``, rendered from the result files without re-running anything. A result
file that cannot be read is named in the report and skipped, never a crash."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from transformer_lab.experiments.base import Experiment
from transformer_lab.experiments.runner import RESULT, Result, read_result

COLOURS = {"confirmed": "#1b7f3b", "refuted": "#b3261e", "partly": "#b26a00", "inconclusive": "#5f6368"}


@dataclass
class Report:
    results: list[Result]
    skipped: list[str] = field(default_factory=list)  # "path: why"
    pending: list[Experiment] = field(default_factory=list)  # questions that need a feature not built yet
    html_path: Path | None = None
    markdown_path: Path | None = None


def collect(folder: Path) -> tuple[list[Result], list[str]]:
    results, skipped = [], []
    for path in sorted(folder.glob(f"*/{RESULT}")):
        try:
            results.append(read_result(path))
        except (ValueError, OSError) as e:
            skipped.append(str(e))
    return results, skipped


def deciding_text(result: Result) -> str:
    return "; ".join(f"{k} = {v}" for k, v in result.verdict.get("deciding", {}).items())


def render(folder: str | Path, experiments: list[Experiment] | None = None) -> Report:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such results folder (run `transformer-lab explain --all --out {folder}`)")
    results, skipped = collect(folder)
    order = {e.id: i for i, e in enumerate(experiments or [])}
    results.sort(key=lambda r: order.get(r.id, len(order)))
    pending = [e for e in experiments or [] if e.needs]
    report = Report(results, skipped, pending)
    report.markdown_path = folder / "REPORT.md"
    report.markdown_path.write_text(_markdown(report), encoding="utf-8")
    report.html_path = folder / "index.html"
    report.html_path.write_text(_html(report, folder), encoding="utf-8")
    return report


def _markdown(r: Report) -> str:
    lines = ["# The canon, measured", "", "| question | the canon's claim | verdict | deciding numbers |",
             "| --- | --- | --- | --- |"]
    for res in r.results:
        lines.append(f"| `{res.id}`: {res.question} | {res.claim} | **{res.outcome}** | {deciding_text(res)} |")
    for exp in r.pending:
        lines.append(f"| `{exp.id}`: {exp.question} | {exp.claim} | needs {exp.needs} | |")
    for res in r.results:
        lines += ["", f"## `{res.id}`: {res.question}", "", f"> {res.question_zh}", "",
                  f"**Claim.** {res.claim}", "", f"**Rule (fixed before the run).** {res.rule}", "",
                  f"**Verdict: {res.outcome}.** {res.verdict['because']}", "",
                  f"Budget `{res.budget}`, {res.wall_s:.0f} s; reproduce: `{res.command}`", ""]
        lines += [f"![{name}]({res.id}/{name})" for name in res.figures]
    if r.skipped:
        lines += ["", "## Results that could not be read", ""] + [f"- {s}" for s in r.skipped]
    return "\n".join(lines) + "\n"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _html(r: Report, folder: Path) -> str:
    e = html.escape
    rows = "".join(
        f'<tr><td><a href="#{e(res.id)}">{e(res.id)}</a></td><td>{e(res.question)}</td><td>{e(res.claim)}</td>'
        f'<td><b style="color:{COLOURS[res.outcome]}">{e(res.outcome)}</b></td><td>{e(deciding_text(res))}</td></tr>'
        for res in r.results)
    rows += "".join(f"<tr><td>{e(x.id)}</td><td>{e(x.question)}</td><td>{e(x.claim)}</td>"
                    f"<td><i>needs {e(x.needs or '')}</i></td><td></td></tr>" for x in r.pending)
    sections = []
    for res in r.results:
        figs = "".join(_img(folder / res.id / name) for name in res.figures if (folder / res.id / name).is_file())
        sections.append(
            f'<section id="{e(res.id)}"><h2>{e(res.id)}: {e(res.question)}</h2>'
            f'<p class="zh">{e(res.question_zh)}</p>'
            f"<p><b>Claim.</b> {e(res.claim)}</p><p><b>Rule, fixed before the run.</b> {e(res.rule)}</p>"
            f'<p><b style="color:{COLOURS[res.outcome]}">Verdict: {e(res.outcome)}.</b> {e(res.verdict["because"])}</p>'
            f'<div class="figs">{figs}</div>'
            f"<p class=\"meta\">budget {e(res.budget)}, {res.wall_s:.0f} s, torch {e((res.versions or {}).get('torch', '?'))}, "
            f"{e(str((res.machine or {}).get('cpu_count', '?')))} CPUs; reproduce: <code>{e(res.command)}</code></p></section>")
    skipped = "".join(f"<li>{e(s)}</li>" for s in r.skipped)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>The canon, measured</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#202124}}
table{{border-collapse:collapse;width:100%;font-size:14px}}td,th{{border-bottom:1px solid #ddd;padding:6px;vertical-align:top;text-align:left}}
section{{margin-top:2.5em;border-top:2px solid #eee}}.zh{{color:#5f6368}}.meta{{color:#5f6368;font-size:13px}}
.figs img{{max-width:100%;margin:4px 0}}</style></head><body>
<h1>The canon, measured</h1><p>Each question of the Transformer interview canon, the answer it gives (a claim), a rule fixed
before the run, and the verdict the measurement gives. Rendered from the result files in this folder.</p>
<table><tr><th>id</th><th>question</th><th>the canon's claim</th><th>verdict</th><th>deciding numbers</th></tr>{rows}</table>
{''.join(sections)}
{f'<h2>Results that could not be read</h2><ul>{skipped}</ul>' if skipped else ''}
</body></html>
"""
