"""Writing files so that an interruption at any moment leaves the previous good file, never half of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vizkit.errors import VizkitError

TEMPORARY = ".{name}.tmp-{pid}"  # beside the file it will replace; the pid tells whose it is


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(TEMPORARY.format(name=path.name, pid=os.getpid()))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_output(path: str | Path, write: Callable[[Path], object]) -> Path:
    """atomic_write for a file the person names (--out, --show): a path that is a folder, lies under a file or
    cannot be written is one line; whatever was there before stays as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, write)
    except OSError as exc:
        raise VizkitError(f"cannot write {path}: {exc.strerror or exc}; choose another output path") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that a killed writer (SIGKILL: no `finally` ran) left in `folder`: those whose
    process is gone. A live writer's file is left alone. Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
