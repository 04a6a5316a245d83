"""python -m vizkit.trust RUN: trust a run's model code, after reading it, as `jupyter trust` trusts a notebook.

    python -m vizkit.trust runs/X            # shows the file, the class or function and its arguments; asks
    python -m vizkit.trust runs/X --yes      # for scripts

A checkpoint says which code rebuilds its model (checkpoint.py), and anyone who shares a run can edit that.
So what the person trains is signed, as Jupyter signs notebooks (nbformat.sign): an HMAC-SHA256 of the
checkpoint's code record (model spec, model_args, source path and sha256) with a key kept in the person's own
vizkit data folder, made on first use with mode 600 (`VIZKIT_HOME`, else the platform's user data folder).
Recorded code is imported only where the signature verifies; a run from anyone else is untrusted until its
user says otherwise, here. No torch at import: the signing is plain hashing.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from vizkit.errors import VizkitError

KEY_FILE = "trust.key"
SCHEME = "hmac-sha256:"


def home() -> Path:
    """The person's vizkit data folder: $VIZKIT_HOME, else where the platform keeps a user's application data."""
    if os.environ.get("VIZKIT_HOME"):
        return Path(os.environ["VIZKIT_HOME"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "vizkit"


def key() -> bytes:
    """The signing key: read, or made on first use (32 random bytes, a file only its owner may read)."""
    path = home() / KEY_FILE
    try:
        try:
            return bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another vizkit process made it meanwhile
                return bytes.fromhex(path.read_text().strip())
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
            return bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise VizkitError(f"{path} is not a vizkit key (hex); delete it to make a new one (runs you signed with it "
                          "will need python -m vizkit.trust again)") from None  # fmt: skip
    except OSError as exc:
        raise VizkitError(f"cannot read or make the signing key {path}: {exc.strerror or exc}; set VIZKIT_HOME to a "
                          "folder of yours") from None  # fmt: skip


def _record(fields: dict[str, Any]) -> bytes:
    """What is signed: the fields that decide which code runs and what it is given."""
    record = {k: fields.get(k) for k in ("model", "model_args", "model_source")}
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=repr).encode()


def sign(fields: dict[str, Any]) -> str:
    return SCHEME + hmac.new(key(), _record(fields), hashlib.sha256).hexdigest()


def signed(fields: dict[str, Any]) -> bool:
    """Whether the checkpoint's code record carries this person's signature (compared in constant time)."""
    signature = fields.get("signature")
    return isinstance(signature, str) and hmac.compare_digest(signature, sign(fields))


# --- the command -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vizkit.trust", description=__doc__.split("\n")[0])
    p.add_argument("run", metavar="RUN", help="a run directory (its best.pth and last.pth), or one .pth file")
    p.add_argument("--yes", action="store_true", help="trust without asking (for scripts)")
    return p


def checkpoints(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    found = [target / n for n in ("best.pth", "last.pth") if (target / n).is_file()]
    if not found:
        raise VizkitError(f"{target} is not a run directory with best.pth or last.pth, nor a .pth file")
    return found


def describe(ckpt: dict[str, Any], path: Path) -> str:
    """What trusting means, in the person's words: which file is imported, what is called, with what."""
    from vizkit.models import is_user_model, sha256_file, split_spec

    spec, source = ckpt["model"], ckpt.get("model_source")
    if not spec or not is_user_model(spec) or not source:
        raise VizkitError(f"{path} names no code of a file to trust (model {spec!r}); zoo models need no trust")
    file = Path(source["path"])
    if not file.is_file():
        raise VizkitError(f"{path} imports {file}, which is not on this machine; pass --model PATH.py:NAME instead")
    if sha256_file(file) != source["sha256"]:
        raise VizkitError(f"{file} has changed since {path} was trained (sha256 differs); read it, then pass --model")
    args = ", ".join(f"{k}={v!r}" for k, v in (ckpt.get("model_args") or {}).items())
    name = split_spec(spec)[1]
    return f"{path}:\n  imports {file} (sha256 {source['sha256'][:12]}..., unchanged)\n  calls {name}({args})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from vizkit.checkpoint import read_checkpoint, resign

        paths = checkpoints(Path(args.run))
        found = [(p, read_checkpoint(p)) for p in paths]  # weights_only: reading runs no code
        for path, ckpt in found:
            print(describe(ckpt, path))
        if not args.yes:
            if not sys.stdin.isatty():
                raise VizkitError("no terminal to ask on; read the file above, then run again with --yes")
            answer = input("Trust this code, and run it when vizkit opens this run? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not trusted; nothing changed")
                return 1
        for path, ckpt in found:
            resign(path, ckpt)
        print(f"trusted: {', '.join(map(str, paths))} (signed with {home() / KEY_FILE})")
        return 0

    from vizkit.cli import run_cli

    return run_cli(body, "vizkit.trust")


if __name__ == "__main__":
    sys.exit(main())
