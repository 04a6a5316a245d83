"""The signing key and signatures of what a person trained, as Jupyter signs notebooks (nbformat.sign).

A checkpoint says which code rebuilds its model (checkpoint.py), and anyone who shares a run can edit that.
So what the person trains is signed: an HMAC-SHA256 of the checkpoint's code record (model spec, model_args,
the source file's and its packages' paths and sha256, the input shape and classes the model is built for) with
a key kept in the person's own vizkit data folder, made on first use with mode 600 (`VIZKIT_HOME`, else the
platform's user data folder). Recorded code is imported only where the signature verifies; `python -m
vizkit.trust` (trust.py) signs a run from anyone else once its user has read the code. No torch: plain hashing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from vizkit.errors import VizkitError

KEY_FILE = "trust.key"
KEY_BYTES = 32
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
    """The signing key: read, or made on first use (32 random bytes in a file only its owner may read)."""
    path = home() / KEY_FILE
    try:
        if not path.exists() and not path.is_symlink():
            _make_key(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # a key planted as a link is not read
        with os.fdopen(fd) as file:
            _owned(os.fstat(file.fileno()), path)
            text = file.read().strip()
    except OSError as exc:
        raise VizkitError(f"cannot read or make the signing key {path}: {exc.strerror or exc}; set VIZKIT_HOME to a "
                          "folder of yours") from None  # fmt: skip
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != KEY_BYTES:  # an empty or short key would let anyone sign
        raise VizkitError(f"{path} is not a vizkit key ({KEY_BYTES} bytes in hex); delete it to make a new one (runs "
                          "you signed with it will need python -m vizkit.trust again)")  # fmt: skip
    return value


def _make_key(path: Path) -> None:
    """Write the key whole to a temporary file, then link it into place: no reader ever sees half a key, and of
    two processes making it at once one key wins."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(KEY_BYTES) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:  # another vizkit process made it meanwhile: theirs is the key
            pass
        except OSError:  # a filesystem without hard links: a rename, whole all the same
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _owned(status: os.stat_result, path: Path) -> None:
    """On POSIX, a key someone else could have written is no key: the person's own, readable by them alone."""
    if os.name == "posix" and (status.st_uid != os.getuid() or status.st_mode & 0o077):
        raise VizkitError(f"{path} may be read or written by others (mode {oct(status.st_mode & 0o777)}); "
                          "make it yours alone (chmod 600) or delete it to make a new one")  # fmt: skip


SIGNED = ("model", "model_args", "model_source", "input_shape", "classes")  # what decides which code runs, with what


def _plain(value: Any) -> bool:
    """JSON's own types only, so that one text means one value (no tuples, no non-string keys, no NaN)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _record(fields: dict[str, Any]) -> bytes | None:
    """What is signed, as canonical JSON; None where a field is not plain JSON (nothing such can be signed)."""
    record = {k: fields.get(k) for k in SIGNED}
    try:
        if not _plain(record):
            return None
        return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, RecursionError):  # a value that contains itself, or nests too deep
        return None


def sign(fields: dict[str, Any]) -> str:
    record = _record(fields)
    if record is None:
        raise VizkitError("the model's record is not plain JSON (model_args of strings, numbers, lists and tables); "
                          "it cannot be signed")  # fmt: skip
    return SCHEME + hmac.new(key(), record, hashlib.sha256).hexdigest()


def signed(fields: dict[str, Any]) -> bool:
    """Whether the checkpoint's code record carries this person's signature (compared in constant time)."""
    signature, record = fields.get("signature"), _record(fields)
    if not isinstance(signature, str) or not signature.isascii() or record is None:
        return False
    return hmac.compare_digest(signature, SCHEME + hmac.new(key(), record, hashlib.sha256).hexdigest())
