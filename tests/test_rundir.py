"""The run directory: its lock, its commit point for event logs, and what a killed writer leaves."""

import os
import subprocess
import sys
import textwrap

import pytest

from vizkit import rundir
from vizkit.errors import VizkitError


def test_a_second_process_cannot_write_a_locked_run(tmp_path):
    run = rundir.create(tmp_path / "run", "net")
    holder = textwrap.dedent(f"""
        from pathlib import Path
        from vizkit import rundir
        rundir.lock(Path({str(run)!r}))
    """)
    try:  # while this process holds it, another one is refused in one line naming this pid
        proc = subprocess.run([sys.executable, "-c", holder], capture_output=True, text=True)
        assert proc.returncode == 1 and f"being written by another process (pid {os.getpid()})" in proc.stderr
        rundir.lock(run)  # a second hold in the same process nests
        rundir.release(run)
    finally:
        rundir.release(run)
    # released (as a killed process's lock is, by the system): the other process takes it
    assert subprocess.run([sys.executable, "-c", holder], capture_output=True).returncode == 0


def test_lock_error_is_one_line(tmp_path):
    run = rundir.create(tmp_path / "run", "net")
    code = f"from pathlib import Path\nfrom vizkit import rundir\nrundir.lock(Path({str(run)!r}))"
    script = tmp_path / "second.py"
    script.write_text(
        "import sys\nfrom vizkit.errors import VizkitError\ntry:\n"
        + textwrap.indent(code, "    ")
        + "\nexcept VizkitError as e:\n    print(e)\n    sys.exit(2)\n"
    )
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    finally:
        rundir.release(run)
    assert proc.returncode == 2 and len(proc.stdout.strip().splitlines()) == 1


def test_reopen_cuts_every_log_back_to_the_commit_point(tmp_path):
    run = rundir.create(tmp_path / "run", "net")
    try:
        (run / "train").mkdir()
        logs = {"events.out.tfevents.1.host.1": b"epoch1", "train/events.out.tfevents.1.host.1": b"ab"}
        for name, data in logs.items():
            (run / name).write_bytes(data)
        sizes = rundir.log_sizes(run)
        assert sizes == {"events.out.tfevents.1.host.1": 6, "train/events.out.tfevents.1.host.1": 2}
        # what a killed process wrote after the commit point: more of each log, a new log, the projector's index
        for name in logs:
            with open(run / name, "ab") as f:
                f.write(b"+epoch2")
        (run / "val").mkdir()
        (run / "val" / "events.out.tfevents.2.host.2").write_bytes(b"new")
        (run / rundir.PROJECTOR).write_text("embeddings {}\n")
        (run / ".last.pth.tmp-999999999").write_bytes(b"half")  # no such process
        rundir.reopen(run, sizes)
        assert {p: (run / p).read_bytes() for p in rundir.log_sizes(run)} == logs
        assert not (run / rundir.PROJECTOR).exists() and not (run / ".last.pth.tmp-999999999").exists()
        assert not list((run / "val").iterdir())
        rundir.reopen(run, None)  # a last.pth from before the commit point was kept: the logs stay as they are
        assert rundir.log_sizes(run) == sizes
    finally:
        rundir.release(run)
        rundir.release(run)
        rundir.release(run)


def test_create_refuses_a_folder_with_files_and_names_new_ones(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(VizkitError, match="already exists and is not empty"):
        rundir.create(tmp_path / "full", "net")
    first = rundir.create(None, "net", root=tmp_path / "runs")
    second = rundir.create(None, "net", root=tmp_path / "runs")  # the same second: a suffix, never the same folder
    assert first != second and first.parent == second.parent == tmp_path / "runs"
    for run in (first, second):
        rundir.release(run)


def test_discard_removes_the_run_and_its_lock(tmp_path):
    run = rundir.create(tmp_path / "run", "net")
    (run / rundir.CONFIG).write_text("epochs = 1\n")
    rundir.discard(run)
    assert not run.exists()
    assert rundir.create(tmp_path / "run", "net") == tmp_path / "run"  # the name can be used again
    rundir.release(run)


def test_find_checkpoint_prefers_best_then_last(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(VizkitError, match="holds no best.pth or last.pth"):
        rundir.find_checkpoint(str(run))
    (run / rundir.LAST).write_bytes(b"")
    assert rundir.find_checkpoint(str(run)) == run / rundir.LAST
    (run / rundir.BEST).write_bytes(b"")
    assert rundir.find_checkpoint(str(run)) == run / rundir.BEST
    assert rundir.find_checkpoint(None, "x.pth") == rundir.Path("x.pth")


def test_read_metrics_says_what_is_wrong_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(VizkitError, match="did not finish"):
        rundir.read_metrics(run)
    (run / rundir.METRICS).write_text("[1, 2]")
    with pytest.raises(VizkitError, match="not what vizkit writes"):
        rundir.read_metrics(run)
    rundir.write_metrics(run, {"history": [{"epoch": 1}]})
    assert rundir.read_metrics(run) == {"history": [{"epoch": 1}]} and rundir.is_finished(run)
