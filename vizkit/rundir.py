"""A run directory, defined once: every file name in it, making and reopening one, the lock that lets one process
write it at a time, the commit point of its event logs, finding runs under a log directory as TensorBoard finds
them, and reading its metrics.json and config.toml. No torch: TensorBoard's tab imports it.

    runs/<date>-<time>-<model>/
      config.toml        the resolved settings (vizkit.train; a hand-written loop's Run has none)
      last.pth best.pth  the last finished epoch (with the state --resume needs) and the best one
      events.out.tfevents.*   the run's own event log; train/ and val/ hold the Loss and Accuracy curves
      model.onnx curves.png confusion_matrix.png top_losses.png   the final stage
      examples/          each conv step's strongest and weakest test images per channel (--log full)
      epochs/            each epoch's weights, epoch-<N>.pth (unless keep_epochs = false)
      metrics.json       written last: the run is finished
      source/            a copy of a person's model file, for the record (never imported from here)

Exact after a kill: event logs only grow, so `log_sizes` (taken after a flush, kept in last.pth) says how much of
each was written when an epoch was whole, and `reopen` cuts every log back to it: what a killed process logged
after the last finished epoch goes, in every sub-run, by the same rule.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from vizkit.errors import VizkitError, first_line
from vizkit.files import atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)

CONFIG = "config.toml"
LAST = "last.pth"
BEST = "best.pth"
CHECKPOINTS = (BEST, LAST)  # the inspection commands' order: the best epoch first
METRICS = "metrics.json"  # written last: its presence is what "finished" means
ONNX = "model.onnx"
CURVES = "curves.png"
FIGURES = ("confusion_matrix", "top_losses")  # the final stage's figures, <name>.png
REPORT = "report.html"
EXAMPLES = "examples"  # each conv step's dataset examples: <step>.png, <step>.json (--log full)
EPOCHS = "epochs"  # each epoch's weights, epoch-<N>.pth (keep_epochs)
SOURCE = "source"  # a person's model file, copied for the record
SPLITS = ("train", "val")  # sub-runs whose curves share a chart with the same tag (writer.py)
EVENTS = "events.out.tfevents."  # TensorBoard's name for an event file
PROJECTOR = "projector_config.pbtxt"  # the embedding projector's index: appended to, like an event log
LOCK = ".lock"


def figure_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.png"


def examples_file(run_dir: Path, step: str, suffix: str = ".png") -> Path:
    return run_dir / EXAMPLES / f"{step}{suffix}"


def epoch_file(run_dir: Path, epoch: int) -> Path:
    return run_dir / EPOCHS / f"epoch-{epoch}.pth"


def epochs_in(run_dir: Path) -> list[int]:
    """The epochs whose weights the run keeps, in order."""
    names = (p.name for p in (run_dir / EPOCHS).glob("epoch-*.pth")) if (run_dir / EPOCHS).is_dir() else ()
    return sorted(int(n[6:-4]) for n in names if n[6:-4].isdigit())


def run_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to: its folder, or the run above epochs/ for an epoch's weights."""
    folder = Path(checkpoint).parent
    return folder.parent if folder.name == EPOCHS else folder


# --- making one, and holding it --------------------------------------------------------------------------


def create(run_dir: str | Path | None, name: str, root: str | Path = "runs") -> Path:
    """runs/<date>-<time>-<name> (never an existing one, even for two runs started in the same second), or the
    directory given, which must be new or empty. The caller holds its lock from here on."""
    if run_dir:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise VizkitError(f"run directory {path} already exists and is not empty; choose a new run directory")
        candidates = [path]
    else:
        base = Path(root) / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"
        candidates = [base] + [base.with_name(f"{base.name}-{n}") for n in range(2, 1000)]
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir(exist_ok=bool(run_dir))  # mkdir is the check: whoever creates it first owns it
            except FileExistsError:
                continue
        except OSError as exc:
            raise VizkitError(f"cannot write the run directory {path}: {exc.strerror or exc}; choose another") from None
        if not os.access(path, os.W_OK):
            raise VizkitError(f"cannot write the run directory {path}: permission denied; choose another")
        lock(path)
        return path
    raise VizkitError(f"no free run directory name under {root}/ for {name}; give one")


def reopen(run_dir: Path, log_sizes: dict[str, int] | None) -> None:
    """Take an existing run back to the moment `log_sizes` were taken (last.pth's, or {} before any epoch):
    every event log cut to its size then, logs begun since removed, and the temporaries of a killed writer gone.
    None (a last.pth written before vizkit kept sizes) leaves the logs as they are."""
    lock(run_dir)
    for folder in (run_dir, run_dir / EPOCHS, run_dir / EXAMPLES):
        for tmp in remove_stale_temporaries(folder) if folder.is_dir() else []:
            log.info("removed %s, left by a killed writer", tmp.name)
    for path in _append_only(run_dir) if log_sizes is not None else []:
        size = log_sizes.get(path.relative_to(run_dir).as_posix())
        if size is None:
            path.unlink()
        elif path.stat().st_size > size:
            os.truncate(path, size)


def log_sizes(run_dir: Path) -> dict[str, int]:
    """How much of each append-only file (event logs, the projector's index) is written: the commit point that
    last.pth keeps. Take it after the writer is flushed."""
    return {p.relative_to(run_dir).as_posix(): p.stat().st_size for p in _append_only(run_dir)}


def _append_only(run_dir: Path) -> list[Path]:
    folders = [run_dir] + [run_dir / s for s in SPLITS if (run_dir / s).is_dir()]
    found = [p for f in folders for p in sorted(f.iterdir()) if p.is_file() and p.name.startswith(EVENTS)]
    return found + ([run_dir / PROJECTOR] if (run_dir / PROJECTOR).is_file() else [])


def discard(run_dir: Path) -> None:
    """Remove a run that finished no epoch (Ctrl-C in the first one): nothing in it can be resumed."""
    release(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def hold(run_dir: Path) -> Path:
    """lock(), for a run the caller made or reopened (and holds already): the hold nests."""
    lock(run_dir)
    return run_dir


def copy_source(run_dir: Path, source: Path) -> None:
    """A person's model file, copied into the run for the record (never imported from there)."""
    (run_dir / SOURCE).mkdir(exist_ok=True)
    shutil.copy2(source, run_dir / SOURCE / source.name)


_held: dict[str, tuple[int, int]] = {}  # run directory -> (locked file descriptor, how many holders here)


def lock(run_dir: Path) -> None:
    """Make this process the run's one writer: a second process (a second --resume of it) gets one line. The
    lock is the operating system's, so a killed writer never leaves one behind. Taken again here, it nests."""
    key = os.path.realpath(run_dir)
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return
    fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _try_lock(fd)
    except OSError:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        except OSError:
            holder = "?"
        finally:
            os.close(fd)
        raise VizkitError(
            f"{run_dir} is being written by another process (pid {holder}); wait for it to finish or stop it"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[key] = (fd, 1)


def release(run_dir: Path) -> None:
    key = os.path.realpath(run_dir)
    if key not in _held:
        return
    fd, count = _held.pop(key)
    if count > 1:
        _held[key] = (fd, count - 1)
    else:
        os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 1 << 20, os.SEEK_SET)  # a byte past the pid, which the other process reads
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


# --- what is in one ---------------------------------------------------------------------------------------


def is_finished(run_dir: Path) -> bool:
    return (run_dir / METRICS).is_file()


def checkpoint_in(run_dir: Path) -> Path | None:
    """best.pth, else last.pth, else None."""
    return next((run_dir / c for c in CHECKPOINTS if (run_dir / c).is_file()), None)


def write_config(run_dir: Path, toml: str) -> None:
    atomic_write_text(run_dir / CONFIG, toml)


def config_file(run_dir: Path) -> Path:
    """config.toml, which a run of vizkit.train has (a hand-written loop's Run has none)."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise VizkitError(f"{run_dir} is not a run directory (no {CONFIG}); give one written by vizkit.train")
    return path


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2) + "\n")


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A finished run's metrics.json; one line when there is none or it is not what vizkit writes."""
    if not run_dir.is_dir():
        raise VizkitError(f"run directory {run_dir} does not exist")
    path = run_dir / METRICS
    if not path.is_file():
        raise VizkitError(f"{run_dir} has no {METRICS}: the run did not finish (resume it, or train again)")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise VizkitError(f"{path} is not valid JSON ({first_line(exc)})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), list):
        raise VizkitError(f"{path} is not what vizkit writes (an object with the run's numbers); train again")
    return metrics


# --- finding them -----------------------------------------------------------------------------------------


def find_runs(logdir: Path) -> dict[str, Path]:
    """Every run under `logdir` (a folder with an event file or a checkpoint), by its name as TensorBoard
    shows it, except the train/ and val/ sub-runs of a run. A run that is a symbolic link is listed by the
    link's name, as TensorBoard lists it; a link back to a folder already walked is not walked again."""
    runs: dict[str, Path] = {}
    seen: set[str] = set()
    for folder, dirs, files in os.walk(logdir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a cycle (a link to an ancestor), or a second way to the same folder
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        here = Path(folder)
        if any(f.startswith(EVENTS) for f in files) or any(c in files for c in CHECKPOINTS):
            if here != logdir and here.name in SPLITS and str(here.parent.relative_to(logdir)) in runs:
                continue
            runs[str(here.relative_to(logdir))] = here
    return runs


def find_checkpoint(run: str | None = None, checkpoint: str | None = None, runs_root: str | Path = "runs") -> Path:
    """The checkpoint to inspect: --checkpoint as given, a run directory's best.pth, or the newest run's."""
    if checkpoint:
        return Path(checkpoint)
    if run:
        run_dir = Path(run)
        if not run_dir.is_dir():
            raise VizkitError(f"run directory {run_dir} does not exist")
        found = checkpoint_in(run_dir)
        if found is None:
            raise VizkitError(f"{run_dir} holds no {BEST} or {LAST}; train first (python -m vizkit.train)")
        return found
    runs = list(Path(runs_root).glob(f"*/{BEST}")) if Path(runs_root).is_dir() else []
    if not runs:
        raise VizkitError(f"no trained run under {runs_root}/; train one (python -m vizkit.train) or give --checkpoint")
    return max(runs, key=lambda p: p.stat().st_mtime)
