"""python -m vizkit.trust RUN: trust a run's model code, after reading it, as `jupyter trust` trusts a notebook.

    python -m vizkit.trust runs/X            # shows the file, the class or function and its arguments; asks
    python -m vizkit.trust runs/X --yes      # for scripts

What opening a run checks, and the key it signs with, are in signing.py and checkpoint.py; this command makes
the checks that opening makes, lists every file that would run, asks, and signs both checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vizkit import rundir
from vizkit.checkpoint import read_checkpoint, recorded_code, resign, unchanged_code
from vizkit.cli import run_cli
from vizkit.errors import VizkitError
from vizkit.models import is_user_model, split_spec
from vizkit.signing import KEY_FILE, home

# --- the command -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vizkit.trust", description=__doc__.split("\n")[0])
    p.add_argument("run", metavar="RUN", help="a run directory (its best.pth and last.pth), or one .pth file")
    p.add_argument("--yes", action="store_true", help="trust without asking (for scripts)")
    return p


def checkpoints(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    found = [target / n for n in rundir.CHECKPOINTS if (target / n).is_file()]
    found += [rundir.epoch_file(target, n) for n in rundir.epochs_in(target)]  # features --epoch N opens these
    if not found:
        raise VizkitError(f"{target} is not a run directory with best.pth or last.pth, nor a .pth file")
    return found


def describe(ckpt: dict[str, Any], path: Path) -> str:
    """What trusting means, in the person's words: which files run, what is called, with what. The checks that
    opening the run makes, but the signature's, come first: what they refuse is not offered for trust."""
    spec = ckpt["model"]
    if not spec or not is_user_model(spec):
        raise VizkitError(f"{path} names no code of a file to trust (model {spec!r}); zoo models need no trust")
    files = recorded_code(ckpt, path)
    unchanged_code(ckpt, path)
    args = ", ".join(f"{k}={v!r}" for k, v in (ckpt.get("model_args") or {}).items())
    lines = [f"{path} imports {spec!r}:"]
    lines += [f"  runs {str(f)!r} ({sum(1 for _ in f.open(encoding='utf-8', errors='replace'))} lines, "
              f"unchanged since training)" for f in files]  # fmt: skip
    lines.append(f"  calls {split_spec(spec)[1]}({args}) for {'x'.join(map(str, ckpt['input_shape']))} inputs and "
                 f"{len(ckpt['classes'])} classes")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        paths = checkpoints(Path(args.run))
        found = [(p, read_checkpoint(p)) for p in paths]  # weights_only: reading runs no code
        for path, ckpt in found:
            print(describe(ckpt, path))
        if not args.yes:
            if not sys.stdin.isatty():
                raise VizkitError("no terminal to ask on; read the file above, then run again with --yes")
            try:
                answer = input("Read those files. Trust this code, and run it when vizkit opens this run? [y/N] ")
            except EOFError:  # Ctrl-D: no answer is no
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("not trusted; nothing changed")
                return 1
        for path, ckpt in found:
            resign(path, ckpt)
        print(f"trusted: {', '.join(map(str, paths))} (signed with {home() / KEY_FILE})")
        return 0

    return run_cli(body, "vizkit.trust")


if __name__ == "__main__":
    sys.exit(main())
