"""vizkit's tab in TensorBoard: draw a digit, pick a test image or drop a photo, and watch a run's model respond.

TensorBoard imports this module at start-up (the `tensorboard_plugins` entry point), so it imports no torch:
live.py does, on the tab's first request for a model. Each run's model is opened once, and again only when
its checkpoint changes (a run still training gets a new best.pth each epoch). A run that cannot be opened
(no checkpoint, code the trust rule refuses, weights that do not fit) answers with a one-line reason.
Everything is served by TensorBoard's own server, from where it binds; the page fetches nothing else.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from tensorboard.plugins import base_plugin
from werkzeug import Request, Response

from vizkit import rundir
from vizkit.rundir import find_runs

log = logging.getLogger(__name__)

PLUGIN_NAME = "vizkit"
STATIC = Path(__file__).parent / "static"
MAX_BODY = 25 * 1024 * 1024  # a phone photo, base64-encoded, with room to spare


HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}  # TensorBoard's own rule for plugins


def _json(value: Any, status: int = 200) -> Response:
    try:  # JSON has no NaN or inf (json.dumps would write them, and the page could not read the answer)
        text = json.dumps(value, allow_nan=False)
    except ValueError:
        reason = "the answer holds a value that is not a number (NaN or inf); the model's weights may have diverged"
        text = json.dumps({"ok": False, "reason": reason})
    return Response(text, status=status, content_type="application/json", headers=HEADERS)


class VizkitPlugin(base_plugin.TBPlugin):
    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self.logdir = Path(context.logdir).expanduser() if context.logdir else None
        self._models: dict[Path, tuple[float, Any]] = {}  # checkpoint -> (its mtime, live.Loaded or a reason)
        self._lock = threading.Lock()

    def is_active(self) -> bool:
        """Shown when the log directory holds a run with a checkpoint (a folder walk, no torch)."""
        if self.logdir is None or not self.logdir.is_dir():
            return False
        return any(rundir.checkpoint_in(path) is not None for path in find_runs(self.logdir).values())

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="vizkit")

    def get_plugin_apps(self) -> dict[str, Any]:
        return {
            "/index.js": self._index_js,
            "/runs": self._runs,
            "/model": self._model,
            "/update": self._update,
            "/card": self._card,
            "/examples": self._examples,
        }

    @Request.application
    def _index_js(self, request: Request) -> Response:
        return Response((STATIC / "index.js").read_bytes(), content_type="text/javascript", headers=HEADERS)

    @Request.application
    def _runs(self, request: Request) -> Response:
        runs = find_runs(self.logdir) if self.logdir and self.logdir.is_dir() else {}
        listed = [{"run": name, "checkpoint": rundir.checkpoint_in(path) is not None} for name, path in runs.items()]
        return _json({"logdir": str(self.logdir or ""), "runs": listed})

    def _run_dir(self, run: str) -> Path | None:
        """The folder of a run named as /runs names it, or None: only a name the walk of the log directory gave
        is a run (never a path out of it, `../x` or `/etc`; a run that is a symbolic link, by its link's name)."""
        if not self.logdir or not run or not self.logdir.is_dir():
            return None
        return find_runs(self.logdir).get(run)

    def _open(self, run: str, epoch: Any = None) -> Any:
        """The run's live.Loaded (its best weights, or those of `epoch` where it keeps them), or a one-line reason
        (str) why it cannot be shown."""
        folder = self._run_dir(run)
        if folder is None:
            return f"no run named '{run}' under {self.logdir}"
        checkpoint = rundir.checkpoint_in(folder)
        if checkpoint is None:
            return f"{run} has no best.pth or last.pth yet: it shows here after its first epoch"
        if epoch is not None:
            kept = rundir.epochs_in(folder)
            if type(epoch) is not int or epoch not in kept:  # not 3.0 or True: epoch-3.0.pth is no file
                return f"{run} has no weights of epoch {epoch}; it keeps " + (
                    f"epochs {', '.join(map(str, kept))}" if kept else "none (trained with keep_epochs false)"
                )
            checkpoint = rundir.epoch_file(folder, epoch)
        mtime = checkpoint.stat().st_mtime
        with self._lock:
            cached = self._models.get(checkpoint)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            loaded = self._load(checkpoint, self.logdir)
            if not isinstance(loaded, str):  # a refusal is tried again next time (the file may be fixed)
                self._models[checkpoint] = (mtime, loaded)
            return loaded

    @staticmethod
    def _load(checkpoint: Path, logdir: Path | None) -> Any:
        try:
            from vizkit.tensorboard_plugin import live  # torch, on the first model asked for

            return live.open_run(checkpoint, logdir)
        except SystemExit as exc:
            return str(exc) or "the model could not be opened"
        except Exception as exc:  # one line in the tab, never a traceback in TensorBoard
            from vizkit.errors import VizkitError, first_line

            if not isinstance(exc, VizkitError):
                log.warning("vizkit: %s could not be opened: %s", checkpoint, first_line(exc))
            return first_line(exc)

    @Request.application
    def _model(self, request: Request) -> Response:
        loaded = self._open(request.args.get("run", ""))
        if isinstance(loaded, str):
            return _json({"ok": False, "reason": loaded})
        from vizkit.tensorboard_plugin import live

        return _json(live.describe(loaded))

    def _body(self, request: Request) -> dict[str, Any] | Response:
        """A POST's JSON object, or the response that says why there is none."""
        if request.method != "POST":
            return _json({"ok": False, "reason": "POST a JSON body"}, 405)
        try:  # read at most MAX_BODY + 1 bytes, whatever the request claims (a chunked upload claims nothing)
            raw = request.stream.read(MAX_BODY + 1)
        except Exception:  # a broken upload
            return _json({"ok": False, "reason": "the request did not arrive whole; try again"}, 400)
        if len(raw) > MAX_BODY:
            return _json({"ok": False, "reason": f"the image is over {MAX_BODY // 2**20} MB; shrink it first"}, 413)
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
            return _json({"ok": False, "reason": "the request was not JSON"}, 400)
        if not isinstance(body, dict):
            return _json({"ok": False, "reason": "the request was not a JSON object"}, 400)
        return body

    def _answer(self, request: Request, what: str) -> Response:
        """An update of the page (live.update) or of a channel's card (channel.card, channel.examples) for the
        run and epoch the body names; one line where it cannot be given."""
        body = self._body(request)
        if isinstance(body, Response):
            return body
        loaded = self._open(str(body.get("run", "")), body.get("epoch"))
        if isinstance(loaded, str):
            return _json({"ok": False, "reason": loaded})
        from vizkit.errors import VizkitError, first_line
        from vizkit.tensorboard_plugin import channel, live

        compute = {"update": live.update, "card": channel.card, "examples": channel.examples}[what]
        try:
            return _json(compute(loaded, body))
        except VizkitError as exc:
            return _json({"ok": False, "reason": first_line(exc)})
        except Exception as exc:  # the person's model raised on this input: say so in the tab
            log.warning("vizkit: a %s of %s failed: %s", what, loaded.checkpoint, first_line(exc))
            return _json({"ok": False, "reason": f"the model raised {type(exc).__name__}: {first_line(exc)}"})

    @Request.application
    def _update(self, request: Request) -> Response:
        return self._answer(request, "update")

    @Request.application
    def _card(self, request: Request) -> Response:
        return self._answer(request, "card")

    @Request.application
    def _examples(self, request: Request) -> Response:
        return self._answer(request, "examples")
