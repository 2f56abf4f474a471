"""The experiments engine end to end (``transformer-lab explain`` and ``report``): every experiment
runs at the smoke budget and writes its result and figures; --all is resumable; the report renders
from the saved results and names a damaged one instead of crashing; bad input is a clear error."""

import json

import pytest

from transformer_lab.cli.main import main
from transformer_lab.experiments.base import OUTCOMES
from transformer_lab.experiments.registry import EXPERIMENTS
from conftest import shared_data_dir

RUNNABLE = [e.id for e in EXPERIMENTS if not e.needs]


@pytest.fixture(scope="module")
def smoke_all(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain")
    with pytest.MonkeyPatch.context() as mp:  # the experiments on real data read it from here
        mp.setenv("TRANSFORMER_LAB_DATA", str(shared_data_dir()))
        assert main(["explain", "--all", "--budget", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("exp_id", RUNNABLE)
def test_every_experiment_writes_its_result_and_figures(smoke_all, exp_id):
    result = json.loads((smoke_all / exp_id / "result.json").read_text())
    assert result["verdict"]["outcome"] in OUTCOMES and result["verdict"]["because"]
    assert result["rule"] and result["claim"] and result["question_zh"] and result["budget"] == "smoke"
    assert {"torch", "python"} <= set(result["versions"]) and result["machine"]["cpu_count"]
    assert result["command"].startswith(f"transformer-lab explain {exp_id} --budget smoke")
    assert result["figures"]
    for name in result["figures"]:
        assert (smoke_all / exp_id / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_is_resumable(smoke_all, capsys):
    before = {i: (smoke_all / i / "result.json").stat().st_mtime_ns for i in RUNNABLE}
    assert main(["explain", "--all", "--budget", "smoke", "--out", str(smoke_all), "--no-progress"]) == 0
    assert {i: (smoke_all / i / "result.json").stat().st_mtime_ns for i in RUNNABLE} == before  # kept
    assert "smoke budget: a few steps of tiny models" in capsys.readouterr().out  # its verdicts are no answers
    assert main(["explain", "sinusoids", "--budget", "smoke", "--seed", "1", "--out", str(smoke_all), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["seed"] == 1  # other settings: measured again


def test_report_renders_every_result_and_names_a_damaged_one(smoke_all, tmp_path, capsys):
    import shutil

    folder = tmp_path / "report"
    shutil.copytree(smoke_all, folder)
    (folder / "head-dim" / "result.json").write_text("{broken")
    assert main(["report", str(folder)]) == 0
    page = (folder / "index.html").read_text()
    markdown = (folder / "REPORT.md").read_text()
    for exp_id in RUNNABLE:
        if exp_id != "head-dim":
            assert f'id="{exp_id}"' in page and f"`{exp_id}`" in markdown
    assert "data:image/png;base64," in page  # self-contained
    assert "head-dim/result.json: not valid JSON" in page and "could not be read" in markdown
    from transformer_lab.experiments.base import pending
    from transformer_lab.experiments.registry import EXPERIMENTS
    from transformer_lab.experiments.report import render

    waiting = pending("x-future", "？", "A question of a later issue?", "a claim", "a feature of issue 99")
    assert [e.id for e in render(folder, EXPERIMENTS + [waiting]).pending] == ["x-future"]  # listed as waiting


def test_list_shows_every_question_and_its_status(smoke_all, capsys):
    assert main(["explain", "--list", "--out", str(smoke_all)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 36
    assert any(line.startswith("scaling") and "measured (smoke)" in line for line in lines)
    assert any(line.startswith("peft") and "measured (smoke)" in line for line in lines)
    assert any(line.startswith("int8") and "measured (smoke)" in line for line in lines)
    assert any(line.startswith("positions") and "measured (smoke)" in line for line in lines)
    assert any(line.startswith("long-sequences") and "measured (smoke)" in line for line in lines)


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["explain", "no-such-question", "--out", str(tmp_path)]) == 2
    assert "unknown id 'no-such-question'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explain", "scaling", "--budget", "huge"])
    assert "invalid choice" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["explain", "sinusoids", "--budget", "smoke", "--out", str(blocker)]) == 2
    assert "cannot write the results here" in capsys.readouterr().err
    from transformer_lab.cli import explain as explain_cli
    from transformer_lab.experiments.base import pending

    waiting = pending("x-future", "？", "A question of a later issue?", "a claim", "a feature of issue 99")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(explain_cli, "get", lambda _: waiting)
        assert main(["explain", "x-future", "--out", str(tmp_path)]) == 2
    assert "needs a feature of issue 99" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such results folder" in capsys.readouterr().err


def test_a_result_goes_stale_with_its_own_code_not_another_questions(tmp_path, monkeypatch):
    import sys
    import types

    from transformer_lab.experiments import runner
    from transformer_lab.experiments.base import Experiment

    questions = tmp_path / "experiments" / "questions"
    questions.mkdir(parents=True)
    files = {name: questions / name for name in ("mine.py", "other.py", "_shared.py", "_unused.py")}
    files["library"] = tmp_path / "nn.py"
    for f in files.values():
        f.write_text("v = 1\n")
    files["mine.py"].write_text("from transformer_lab.experiments.questions._shared import helper\n")
    monkeypatch.setattr(runner, "SOURCE", tmp_path)
    monkeypatch.setattr(runner, "QUESTIONS", questions)
    module = types.ModuleType("mine_module")
    module.__file__ = str(files["mine.py"])
    monkeypatch.setitem(sys.modules, "mine_module", module)
    mine = type("Mine", (Experiment,), {"__module__": "mine_module"})()
    before = runner.code_version(mine)
    for name in ("other.py", "_unused.py"):
        files[name].write_text("v = 2\n")
        assert runner.code_version(mine) == before, name  # another question's module, a helper it does not use
    for name in ("_shared.py", "library", "mine.py"):  # (mine.py last: its import of _shared goes)
        files[name].write_text(f"changed {name}\n")
        assert runner.code_version(mine) != before, name  # its own code, shared helpers, the library: stale
        before = runner.code_version(mine)


def test_a_stop_signal_during_training_stops_the_experiment_and_writes_no_result(tmp_path, monkeypatch):
    """The Trainer ends its run cleanly on SIGTERM/Ctrl-C; the experiment must not go on to the next run
    and write a verdict from half-trained models (seen: `explain --all` ignored a SIGTERM)."""
    import signal

    from transformer_lab.training.loop import Trainer, TrainResult

    real_fit = Trainer.fit

    def fit_then_signal(self):
        return TrainResult(real_fit(self).state, "signal", int(signal.SIGTERM))

    monkeypatch.setattr(Trainer, "fit", fit_then_signal)
    code = main(["explain", "--all", "--budget", "smoke", "--out", str(tmp_path), "--no-progress"])
    assert code == 128 + signal.SIGTERM
    assert not list(tmp_path.rglob("result.json"))  # the first training experiment stopped everything


def test_a_stop_signal_in_an_experiments_training_says_nothing_is_saved(monkeypatch, caplog):
    """A real SIGTERM in an experiment's training run ends the experiment (``Interrupted``), and the log
    says so: it said "the current step finishes and is saved", a training command's words, while an
    experiment's runs live in a temporary folder and its result is not written."""
    import logging
    import os
    import signal

    from transformer_lab.experiments.training import train_dates
    from transformer_lab.runtime.signals import Interrupted
    from transformer_lab.training.loop import Trainer

    real_backward = Trainer.backward

    def backward(self, batches, weights=None):
        if self.state.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_backward(self, batches, weights)

    monkeypatch.setattr(Trainer, "backward", backward)
    with caplog.at_level(logging.WARNING), pytest.raises(Interrupted):
        train_dates(seed=0, steps=4, n_test=8)
    assert "writes no result" in caplog.text and "is saved" not in caplog.text
