"""metrics.csv: written whole or not at all, read back for a resumed run's history, and damage named."""

import csv
import errno

import pytest

from transformer_lab.training.records import read_metrics_csv, write_metrics_csv

HISTORY = [{"step": 1, "loss": 2.5, "lr": 0.001}, {"step": 2, "loss": 2.25, "lr": 0.002},
           {"step": 2, "val_loss": 2.0}, {"step": 3, "loss": 2.0, "lr": 0.003}]


def test_round_trip_up_to_a_step(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics_csv(HISTORY, path)
    rows = read_metrics_csv(path, 2)
    assert [{k: v for k, v in r.items() if v is not None} for r in rows] == HISTORY[:3]


def test_a_line_cut_short_is_left_out_with_a_warning(tmp_path, caplog):
    """A file cut off mid-line (a damaged disk, an editor) kept a row of empty fields in the history."""
    path = tmp_path / "metrics.csv"
    write_metrics_csv(HISTORY, path)
    text = path.read_text()
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 4])  # the last line, cut after 3 characters
    with caplog.at_level("WARNING"):
        rows = read_metrics_csv(path, 10)
    assert [r["step"] for r in rows] == [1, 2, 2] and "line 5 does not match the header" in caplog.text


def test_garbage_names_the_file(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"step,loss\n\xca\xfe\xba\xbe,1\n")
    with pytest.raises(ValueError, match="metrics.csv: not a metrics file.*move it away"):
        read_metrics_csv(path, 10)


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk said "[Errno 28] No space left on device" without the file, and left
    .metrics.csv.tmp-PID behind for good."""
    path = tmp_path / "metrics.csv"
    write_metrics_csv(HISTORY[:1], path)
    before = path.read_text()

    def full(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", full)
    with pytest.raises(OSError, match="metrics.csv: could not write the metrics \\(No space left"):
        write_metrics_csv(HISTORY, path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
