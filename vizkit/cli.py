"""What every `python -m vizkit.X` entry point shares: user errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from vizkit.errors import VizkitError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes, not the one there when vizkit first logged
    (a test's captured stream, long closed, or a redirected one)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def run_cli(body: Callable[[], int], prog: str) -> int:
    """Run a CLI body; a VizkitError becomes `prog: error: ...` on stderr and exit code 2, Ctrl-C exit code 130."""
    # vizkit's own messages only: the ONNX exporter's INFO chatter stays out of the terminal
    logger = logging.getLogger("vizkit")
    if not logger.handlers:
        handler = _StderrHandler()
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
    except BrokenPipeError:  # `... | head` stopped reading: what was asked for is printed; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's docs: so exit's flush is quiet
        return 0


def channel_values(text: str) -> list[float]:
    """`0.1307` or `0.5,0.5,0.5`: one token, so `--std 1 photo.png` leaves the photo to the positionals."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number or comma-separated numbers (0.5,0.5,0.5)") from None
    return values


def add_own_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --mean, --std, --dataset: for a person's own model and a bare state dict."""
    parser.add_argument(
        "--model",
        metavar="PATH.py:NAME",
        help="your model's code (a file or module and the class or function in it); needed for a bare state "
        "dict, and for a run whose model file is not on this machine as it was at training",
    )
    parser.add_argument(
        "--mean",
        type=channel_values,
        metavar="M[,M,M]",
        help="normalisation mean, one value or one per channel, comma-separated (default: the checkpoint's; for a "
        "bare state dict the dataset's, 0.1307 for MNIST; 0 with --std 1 for ToTensor() alone)",
    )
    parser.add_argument(
        "--std", type=channel_values, metavar="S[,S,S]", help="normalisation std, as --mean (default: as --mean)"
    )
    parser.add_argument(
        "--dataset", choices=("mnist", "fashion-mnist", "cifar10"), help="for a bare state dict (default: mnist)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="model_args.KEY=VALUE",
        dest="model_args",
        help="a keyword argument of --model's NAME(...), as in vizkit.train (repeatable)",
    )
