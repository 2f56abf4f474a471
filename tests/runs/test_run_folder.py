"""The run folder (``runs.folder``): one writer at a time, no silent replacement of an earlier run,
every command finding the checkpoint a user means (an interrupted save's ``.old`` copy included),
and the summary written whole."""

import json
import os
import subprocess
import sys
import time

import pytest

from transformer_lab.cli.main import main
from transformer_lab.runs import BEST, LAST, RunFolder, RunFolderInUse, find_checkpoint, load_model

SHORT_RUN = ["--max-steps", "3", "--n-test", "10", "--no-progress"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    assert main(["train", "--out", str(out), *SHORT_RUN]) == 0
    return out


def hold_lock(path):
    """Another process holding the run folder; returns it once the lock is taken."""
    code = ("import sys, time\nfrom transformer_lab.runs import RunFolder\n"
            f"RunFolder({str(path)!r}).lock()\nprint('locked', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_gets_an_error_naming_the_holder(tmp_path, capsys):
    """Issue 9, item 4: two `train` runs on one --out both exited 0 and the last writer won (or a
    save failed after training with "Directory not empty"). Now the second is refused at once, with
    the pid of the process that holds the folder; the lock dies with its process."""
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(RunFolderInUse, match=f"in use by process {holder.pid}"):
            RunFolder(tmp_path / "run").lock()
        assert main(["train", "--out", str(tmp_path / "run"), *SHORT_RUN]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err and "Traceback" not in err
        assert not (tmp_path / "run" / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(tmp_path / "run"):  # killed holder: no stale lock
        pass


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")
def test_a_reader_asking_who_writes_does_not_turn_a_starting_run_away(tmp_path):
    """``writer_of`` (``--resume`` asking who writes a folder without a checkpoint) holds a shared lock for
    an instant; a run taking the folder at that instant was told it was "in use". Here the reader's
    shared lock is held for 0.1 s from another descriptor: the writer waits it out."""
    import fcntl
    import threading

    (tmp_path / "r").mkdir()
    fd = os.open(tmp_path / "r" / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.1, os.close, (fd,)).start()
    with RunFolder(tmp_path / "r") as folder:
        assert folder._lock_fd is not None


def test_lock_is_reentrant_and_released(tmp_path):
    folder = RunFolder(tmp_path / "r")
    folder.lock()
    folder.lock()
    assert (tmp_path / "r" / ".lock").read_text().strip().isdigit()
    folder.unlock()
    assert not (tmp_path / "r").exists()  # created by the lock and left empty: removed
    with RunFolder(tmp_path / "r"):
        (tmp_path / "r" / "metrics.csv").write_text("step\n")
    assert (tmp_path / "r" / "metrics.csv").is_file()


def test_a_fresh_run_does_not_replace_an_earlier_one(finished_run, tmp_path, capsys):
    """Issue 9, item 4: a second `train` into a folder that holds a run needs --resume or --overwrite;
    --overwrite removes the earlier run's checkpoints, metrics and plots (only those)."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(finished_run, out)
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "last").rename(out / "checkpoints" / "best")  # an earlier run's best checkpoint
    assert main(["train", "--out", str(out), *SHORT_RUN]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--overwrite", *SHORT_RUN, "--max-steps", "2"]) == 0
    assert not (out / "checkpoints" / "best").exists()  # nothing of the earlier run is taken for this one's
    assert load_model(out / "checkpoints" / "last").meta["step"] == 2
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["train", "--out", str(out), "--overwrite", "--resume", str(out), *SHORT_RUN]) == 2
    assert "cannot both resume a run and start it over" in capsys.readouterr().err


def test_interrupted_save_leaves_old_which_every_command_finds(finished_run, tmp_path, capsys):
    """Issue 9, item 3: after a kill between the two renames of a save only checkpoints/last.old
    exists; the loader used it but `--resume RUN` and `translate --checkpoint RUN` refused it."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(finished_run, out)
    (out / "checkpoints" / "last").rename(out / "checkpoints" / "last.old")
    (out / "checkpoints" / f".last.tmp-{os.getppid()}").mkdir()  # a half-written one, of a process still alive
    assert find_checkpoint(out, prefer=(LAST,)) == out / "checkpoints" / "last.old"
    assert find_checkpoint(out) == out / "checkpoints" / "last.old"  # best missing: last
    assert main(["train", "--out", str(out), "--resume", str(out), *SHORT_RUN, "--max-steps", "4"]) == 0
    assert load_model(out / "checkpoints" / "last").meta["step"] == 4
    assert not (out / "checkpoints" / "last.old").exists()
    # under the run folder's lock nobody else writes there: every temporary folder is stale
    assert not (out / "checkpoints" / f".last.tmp-{os.getppid()}").exists()


def test_find_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint or run folder"):
        find_checkpoint(tmp_path / "nowhere")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="a run folder without a checkpoint.*stopped before its first save"):
        find_checkpoint(tmp_path / "run", prefer=(BEST, LAST))


def test_resuming_a_run_before_its_first_save_names_its_writer(tmp_path):
    """A run still before its first checkpoint (its lock and no checkpoints/ yet): --resume said "not a
    complete checkpoint, missing [...]"; it names the process writing it, or says the run stopped early."""
    folder = RunFolder(tmp_path / "run").lock()
    try:
        with pytest.raises(FileNotFoundError, match=f"process {os.getpid()} is writing it; wait for its first save"):
            find_checkpoint(tmp_path / "run", prefer=(LAST,))
    finally:
        folder.unlock()  # (and removes what it created: nothing was written)
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / ".lock").touch()  # a killed run's folder: the lock file, held by nobody
    with pytest.raises(FileNotFoundError, match="stopped before its first save"):
        find_checkpoint(tmp_path / "run", prefer=(LAST,))


def test_resume_of_a_missing_checkpoint_fails_before_any_work(tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", str(tmp_path / "nowhere"), *SHORT_RUN]) == 2
    assert "nowhere: no such checkpoint or run folder" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "r").exists()


def test_summary_is_whole_json(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_summary({"loss": 1.5})
    assert json.loads(folder.summary.read_text()) == {"loss": 1.5}
    with pytest.raises(ValueError):
        folder.write_summary({"loss": float("nan")})
    assert json.loads(folder.summary.read_text()) == {"loss": 1.5}


@pytest.mark.parametrize("damage", ["truncate state", "empty state", "list config", "bad meta"])
def test_damaged_run_files_are_one_line_errors(finished_run, tmp_path, capsys, damage):
    """Issue 9, item 7, through the command line: `--resume` of a damaged checkpoint is one line on
    stderr naming the file, exit 2, no traceback."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(finished_run, out)
    last = out / "checkpoints" / "last"
    target = {"truncate state": "train_state.pt", "empty state": "train_state.pt", "list config": "config.json",
              "bad meta": "meta.json"}[damage]
    data = (last / target).read_bytes()
    (last / target).write_bytes({"truncate state": data[: len(data) // 3], "empty state": b"", "list config": b"[]",
                                 "bad meta": b"{"}[damage])
    rc = main(["train", "--out", str(out), "--resume", str(out), *SHORT_RUN, "--max-steps", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and str(last / target) in err and "Traceback" not in err


def test_resuming_into_another_folder(finished_run, tmp_path, capsys):
    """--resume A --out B: B continues A (its metrics history too) when B is new, and is refused when B
    holds a run of its own (it would be replaced silently)."""
    out = tmp_path / "b"
    assert main(["train", "--out", str(out), "--resume", str(finished_run), *SHORT_RUN, "--max-steps", "5"]) == 0
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [3, 5]  # A's row (its last step), then B's
    assert main(["train", "--out", str(out), "--resume", str(finished_run), *SHORT_RUN, "--max-steps", "6"]) == 2
    assert "holds another run than the one to resume" in capsys.readouterr().err
    assert load_model(out / "checkpoints" / "last").meta["step"] == 5


def test_a_lock_file_removed_under_a_waiting_opener_is_not_a_second_lock(tmp_path, monkeypatch):
    """A process that opened .lock just before its holder removed it (a failed run cleaning up) must
    not count the removed file's lock as the folder's."""
    import transformer_lab.runs.folder as folder_mod

    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").write_text("")
    real_open = os.open
    opened = []

    def open_then_removed(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not opened:  # the first open races with the holder's cleanup
            opened.append(path)
            os.unlink(path)
        return fd

    monkeypatch.setattr(folder_mod.os, "open", open_then_removed)
    folder = RunFolder(run).lock()
    monkeypatch.undo()
    assert len(opened) == 1 and (run / ".lock").is_file()  # the lock now held is the folder's own file
    with pytest.raises(RunFolderInUse):
        RunFolder(run).lock()
    folder.unlock()


def test_overwrite_keeps_the_earlier_run_when_the_new_command_fails(finished_run, tmp_path, capsys):
    """--overwrite removed the earlier run as the folder opened, so a typo in --data left an empty
    folder; now the earlier run goes only once the new one's data and model are ready."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(finished_run, out)
    missing = tmp_path / "typo.txt"
    assert main(["train", "--preset", "lm", "--data", str(missing), "--out", str(out), "--overwrite",
                 "--no-progress"]) == 2
    assert "typo.txt" in capsys.readouterr().err
    assert load_model(out / "checkpoints" / "last").meta["step"] == 3  # the earlier run, whole
    assert (out / "metrics.csv").is_file()


def test_resume_without_out_continues_in_the_resumed_folder(finished_run, tmp_path, monkeypatch):
    """`--resume RUN` without --out wrote the continuation to the preset's default folder (runs/dates)
    and left RUN at its old step; now it continues RUN itself (a checkpoint folder's run too)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    shutil.copytree(finished_run, out)
    assert main(["train", "--resume", str(out), *SHORT_RUN, "--max-steps", "4"]) == 0
    assert load_model(out / "checkpoints" / "last").meta["step"] == 4
    assert main(["train", "--resume", str(out / "checkpoints" / "last"), *SHORT_RUN, "--max-steps", "5"]) == 0
    assert load_model(out / "checkpoints" / "last").meta["step"] == 5
    assert not (tmp_path / "runs").exists()


def test_resume_from_another_task_is_a_clear_error(finished_run, tmp_path, capsys):
    """A GPT run resumed from the dates task's run: an error naming both models, no traceback."""
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question\n" * 50)
    assert main(["train", "--preset", "lm", "--data", str(text), "--tokenizer", "char", "--context", "16",
                 "--out", str(tmp_path / "lm"), "--resume", str(finished_run), "--max-steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds a Transformer model, this run trains a GPT" in err and "Traceback" not in err


def test_a_run_with_only_a_best_checkpoint_gets_one_consistent_message(finished_run, tmp_path, capsys):
    """A run killed before its first save left checkpoints/best only: `--resume` said "no checkpoint
    (last)" and a fresh run said "resume it"; now the fresh run says it cannot be resumed."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(finished_run, out)
    (out / "checkpoints" / "last").rename(out / "checkpoints" / "best")
    assert main(["train", "--out", str(out), *SHORT_RUN]) == 2
    err = capsys.readouterr().err
    assert "cannot be resumed" in err and "--resume" not in err


def test_weights_are_as_readable_as_the_other_files(finished_run):
    """safetensors writes 0o600: a group that could read a run's config could not read its weights.
    Every file of a checkpoint now has the mode the umask gives."""
    last = finished_run / "checkpoints" / "last"
    modes = {p.name: p.stat().st_mode & 0o777 for p in last.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.json"], modes


def test_translate_reads_the_demos_checkpoint_as_the_task_does(finished_run, capsys):
    """A new user's first try after `make demo`: `translate --checkpoint runs/demo "1987-03-21"`. The
    command reads the dates vocabulary (characters in, words out) and gives the task's own greedy decoding
    (``dates.exact_match``, which decodes training-style batches) for the held-out dates; translate's
    length limit is longer, so where the task's output stopped at its limit it is a prefix."""
    from transformer_lab.data.batches import make_batch
    from transformer_lab.data.vocab import SymbolText
    from transformer_lab.tasks import dates
    from transformer_lab.tasks.translation import load_translator

    pairs = dates.DateTask(n_test=10, seed=0).pairs()[1][:6]
    model, vocab = dates.load(finished_run)
    _, task_outputs = dates.exact_match(model, pairs, vocab)
    sources = ["".join(src) for src, _ in pairs]
    assert main(["translate", "--checkpoint", str(finished_run), "--beam", "1", *sources]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(sources)
    limit = max(len(ref) for _, ref in pairs) + 1 + 10  # exact_match's: the longest target with </s>, plus 10
    for line, task in zip(lines, task_outputs):
        assert line.split() == task if len(task) < limit else line.split()[: len(task)] == task
    # the command's reading of a source is the training batches' encoding
    _, tok_src, tok_tgt = load_translator(finished_run)
    batch = make_batch(pairs, vocab)
    for i, s in enumerate(sources):
        assert tok_src.encode(s) + [vocab.eos_id] == [t for t in batch.src[i].tolist() if t != vocab.pad_id]
    assert isinstance(tok_tgt, SymbolText) and tok_tgt.decode(vocab.encode(["the", "of", "march"])) == "the of march"
    assert main(["translate", "--checkpoint", str(finished_run), "21 mar 1987"]) == 0  # beam 4, the default


def test_translate_names_the_characters_the_demo_cannot_read(finished_run, capsys):
    """The demo's sources use digits, "-/. " and the months' lower-case abbreviations; anything else is an
    error naming the characters, not an unknown token the model never saw."""
    assert main(["translate", "--checkpoint", str(finished_run), "21 March 1987"]) == 2
    err = capsys.readouterr().err
    assert "['M', 'h'] outside the vocabulary" in err and "Traceback" not in err


def test_out_naming_a_file_is_a_clear_error(tmp_path, capsys):
    """`train --out notes.txt` gave a raw "[Errno 17] File exists"."""
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(tmp_path / "notes.txt"), *SHORT_RUN]) == 2
    assert "a file, not a run folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_last_line_lists_what_the_run_wrote(finished_run):
    """The closing "wrote OUT/{...}" line was a fixed list: it named checkpoints/best after runs that
    never validated, and plots a stopped run had not drawn."""
    line = RunFolder(finished_run).written()
    assert line.startswith(f"{finished_run}/{{checkpoints/last") and "summary.json" in line
    assert "checkpoints/best" not in line and "model" not in line


def test_resuming_the_demo_with_another_held_out_split_is_refused(finished_run, tmp_path, capsys):
    """The dates task holds out --n-test dates drawn with --seed: resuming with another of either only
    warned, and the run then scored itself on dates it had trained on (74% -> 94% in 20 steps)."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(finished_run, out)
    for changed in (["--n-test", "20"], ["--n-test", "10", "--seed", "1"]):
        assert main(["train", "--resume", str(out), "--max-steps", "4", "--no-progress", *changed]) == 2
        err = capsys.readouterr().err
        assert "held-out items would change" in err and "Traceback" not in err
    assert main(["train", "--resume", str(out), *SHORT_RUN[2:], "--max-steps", "4"]) == 0


def test_a_resumed_run_keeps_its_own_recipe(tmp_path, caplog):
    """`train --resume RUN` with no other option took the task's recipe for every option left out: a run
    of 300 steps resumed towards the preset's 2,000, its rate and seed reset, each listed as a change.
    Now the unset options keep the run's own values (the time budget is the new command's)."""
    import logging

    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--max-steps", "4", "--log-every", "2", "--lr", "2", "--warmup", "10",
                 "--seed", "3", "--n-test", "10", "--position", "rotary", "--no-progress"]) == 0
    with caplog.at_level(logging.INFO):
        assert main(["train", "--resume", str(out), "--no-progress", "--time-budget", "0.1"]) == 0
    assert "recipe: 4 steps, noam x2, warm-up 10," in caplog.text
    assert "changed" not in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["n_test"] == 10 and summary["seed"] == 3
    caplog.clear()
    with caplog.at_level(logging.INFO):  # an option given still changes it, and says so
        assert main(["train", "--resume", str(out), "--no-progress", "--max-steps", "6", "--lr", "1"]) == 0
    assert "recipe: 6 steps, noam x1, warm-up 10," in caplog.text and "'lr': (2.0, 1.0)" in caplog.text


def test_an_output_that_cannot_be_written_is_named_before_the_work(finished_run, tmp_path, capsys):
    """`evaluate --out /missing/h.txt` decoded every sentence, then failed on the write with a bare
    "[Errno 2]" and never printed its scores; `--plot-attention` likewise. Now the flag and the path are
    named before any decoding; a folder where a file goes, too."""
    from transformer_lab.files import check_writable

    src, ref = tmp_path / "s.txt", tmp_path / "r.txt"
    src.write_text("1987-03-21\n")
    ref.write_text("the twenty first of march nineteen eighty seven\n")
    for args, message in ((["evaluate", "--src", str(src), "--ref", str(ref), "--out", str(tmp_path / "no" / "h.txt")],
                           "--out"), (["evaluate", "--src", str(src), "--ref", str(ref), "--out", str(tmp_path)],
                                      "a folder; give a file name"),
                          (["translate", "1987-03-21", "--plot-attention", str(tmp_path / "no" / "a.png")],
                           "--plot-attention")):
        assert main([args[0], "--checkpoint", str(finished_run), *args[1:]]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "Errno" not in err
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if not os.access(readonly, os.W_OK):  # (root writes anyway)
            with pytest.raises(OSError, match="cannot write there"):
                check_writable(readonly / "h.txt", "--out")
    finally:
        readonly.chmod(0o700)
    check_writable(tmp_path / "new" / "deeper", "--out", folder=True)  # (a folder output: its parents are made)


def test_a_beam_wider_than_the_vocabulary_is_refused(finished_run, capsys):
    """`translate --beam 1000000` grew to 23 GB until the kernel killed it; a step keeps at most as many
    hypotheses as the target vocabulary has entries (103 for the demo), so a wider beam is an error."""
    assert main(["translate", "--checkpoint", str(finished_run), "--beam", "1000000", "1987-03-21"]) == 2
    assert "more than the target vocabulary's 103 entries" in capsys.readouterr().err
    assert main(["translate", "--checkpoint", str(finished_run), "--beam", "103", "--no-cache", "1987-03-21"]) == 0


def test_a_language_models_resume_keeps_its_task_settings_and_names_what_it_needs(tmp_path, capsys, caplog):
    """`train --resume RUN` of a GPT run, with no --preset, tried the dates task ("holds a GPT model, this run
    trains a Transformer"): it now says to name the task and data. Named, the run keeps its own context and
    batch size (they went back to the preset's, with a warning). The dates task has no validation: its
    --eval-every and --patience were ignored, and are now refused."""
    import logging

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question\n" * 200)
    run = tmp_path / "lm"
    lm = ["--preset", "shakespeare-char", "--data", str(text), "--eval-every", "0", "--no-progress"]
    assert main(["train", *lm, "--out", str(run), "--max-steps", "2", "--context", "16", "--batch-size", "4"]) == 0
    assert main(["train", "--resume", str(run)]) == 2
    assert "a gpt run; resume it with the options that name its task and data" in capsys.readouterr().err
    with caplog.at_level(logging.INFO):
        assert main(["train", *lm, "--resume", str(run), "--max-steps", "3"]) == 0
    assert "context 16" in caplog.text and "batch_size" not in caplog.text and "'context'" not in caplog.text
    for flag in ("--eval-every", "--patience"):
        assert main(["train", "--out", str(tmp_path / "d"), flag, "5", "--no-progress"]) == 2
        assert "the dates task has no validation set" in capsys.readouterr().err
