"""What every `python -m vizkit.X` entry point shares: user errors become one line and exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from vizkit.errors import VizkitError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def run_cli(body: Callable[[], int], prog: str) -> int:
    """Run a CLI body; a VizkitError becomes `prog: error: ...` on stderr and exit code 2, Ctrl-C exit code 130."""
    # vizkit's own messages only: the ONNX exporter's INFO chatter stays out of the terminal
    logger = logging.getLogger("vizkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        return body()
    except VizkitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
