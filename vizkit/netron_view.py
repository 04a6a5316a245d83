"""python -m vizkit.netron_view: the structure of a trained model in Netron, served on localhost, offline.

python -m vizkit.netron_view runs/X/model.onnx
python -m vizkit.netron_view runs/X              # the run's model.onnx
python -m vizkit.netron_view runs/X/best.pth     # exported to ONNX first: Netron draws no graph for a state dict
python -m vizkit.netron_view cnn.pth --model my_cnn.py:CNN   # your own state dict, with your model's code
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import signal
import sys
import tempfile
import threading
import time
import webbrowser
import zipfile
from pathlib import Path

from vizkit import rundir
from vizkit.cli import add_own_model_args, run_cli
from vizkit.errors import VizkitError, first_line


def onnx_for(target: str, workdir: Path, args: argparse.Namespace | None = None) -> Path:
    """The ONNX file to serve for a .onnx file, a .pth checkpoint (exported into workdir) or a run directory.

    `args` carries --model/--mean/--std/--dataset for a checkpoint (see inputs.add_own_model_args)."""
    path = Path(target)
    if path.is_dir():
        if (path / rundir.ONNX).is_file():
            path = path / rundir.ONNX
        elif (path / rundir.BEST).is_file():
            path = path / rundir.BEST
        else:
            raise VizkitError(f"{path} holds no model.onnx or best.pth; give a run directory written by vizkit.train")
    if not path.is_file():
        raise VizkitError(f"{path} does not exist; give a .onnx file, a .pth checkpoint or a run directory")
    suffix = path.suffix.lower()
    # torch.save writes a zip archive, whatever the name: .pth, .pt, tutorial 004's .pk, .ckpt, ...
    if suffix in (".pth", ".pt", ".pk", ".pkl", ".ckpt") or (suffix != ".onnx" and zipfile.is_zipfile(path)):
        from vizkit.export import export_onnx
        from vizkit.inputs import open_model

        model, ckpt = open_model(
            path, args or argparse.Namespace(model=None, mean=None, std=None, dataset=None, model_args=[])
        )
        try:
            return export_onnx(model, ckpt["mean"], ckpt["std"], ckpt["input_shape"], workdir / f"{path.stem}.onnx")
        except Exception as exc:  # torch.export does not take every model (data-dependent control flow, ...)
            raise VizkitError(
                f"{path}: the model could not be exported to ONNX for Netron: {first_line(exc)}"
            ) from None
    if suffix != ".onnx":
        raise VizkitError(f"{path} is not a model vizkit can show; give a .onnx file, a .pth checkpoint or a run")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf raises its own DecodeError, among others
        raise VizkitError(f"{path} is not an ONNX model (it does not parse); export one with vizkit.train") from None
    if not model.graph.node:  # an empty file parses as an empty model: Netron would wait on it for ever
        raise VizkitError(f"{path} is an ONNX file with no graph in it (empty?); export one with vizkit.train")
    return path


# Netron's page, as netron serves it, asks https://ipinfo.io whether to show a cookie prompt, then reports
# to Google Analytics, and once its build date is 180 days old it loops on "Please update to the newest
# version". Its own settings turn each off: telemetry runs only for a "packaged" version (not 0.0.0), the
# prompt and the ipinfo call are skipped when a `consent` cookie exists, and the age comes from the page's
# `date` meta. The Content-Security-Policy then lets the browser itself refuse anything not from this server.
OFFLINE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-src 'none'; form-action 'none'"
)


def offline_page(html: str) -> str:
    """Netron's index.html with its own settings made offline: version 0.0.0 (no telemetry), and no build
    date, which the page then takes as "now" (so its age is 0 days whatever the clock says)."""
    html = re.sub(r'<meta name="version" content="[^"]*">', '<meta name="version" content="0.0.0">', html)
    return re.sub(r'<meta name="date" content="[^"]*">\n?', "", html)


def offline_handler(path: Path) -> type:
    """Netron's own request handler for `path`, with the page's settings and response headers made offline."""
    from netron import server as netron_server

    class Handler(netron_server._HTTPRequestHandler):
        content = netron_server._ContentProvider(None, str(path), str(path), str(path))

        def _write(self, status_code: int, content_type: str | None, content: bytes | None) -> None:
            if content and content_type == "text/html":
                content = offline_page(content.decode("utf-8")).encode("utf-8")
            super()._write(status_code, content_type, content)

        def end_headers(self) -> None:
            self.send_header("Content-Security-Policy", OFFLINE_CSP)
            # the consent Netron's page looks for, so it neither prompts nor asks ipinfo.io
            self.send_header("Set-Cookie", f"consent={int(time.time() * 1000)}; Path=/; SameSite=Strict")
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

    return Handler


def serve(path: Path, host: str = "127.0.0.1", port: int = 0) -> http.server.ThreadingHTTPServer:
    """Serve Netron's page for `path`, offline (see OFFLINE_CSP), in a daemon thread; stop with .shutdown()."""
    try:
        httpd = http.server.ThreadingHTTPServer((host, port), offline_handler(path))
    except OSError as exc:
        raise VizkitError(
            f"cannot serve on {host}:{port} ({exc.strerror or exc}); choose another --port, or leave it out"
        ) from None
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return httpd


def can_open_browser() -> bool:
    # On a Linux box without a display, webbrowser would start a text browser in this terminal.
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vizkit.netron_view", description=__doc__.split("\n")[0])
    p.add_argument("target", metavar="MODEL", help="a .onnx file, a .pth checkpoint, or a run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 shares it on the network "
                   "(default: 127.0.0.1, this machine only)")  # fmt: skip
    p.add_argument("--port", type=int, default=0, help="port (default: 0, a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    add_own_model_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if not 0 <= args.port <= 65535:
            raise VizkitError(f"--port {args.port} is not a port; give 1 to 65535, or leave it out for a free one")
        with tempfile.TemporaryDirectory(prefix="vizkit-netron-") as workdir:
            path = onnx_for(args.target, Path(workdir), args)
            httpd = serve(path, args.host, args.port)
            host, port = httpd.server_address[:2]
            url = f"http://{host}:{port}"
            print(f"Netron is serving {path} at {url} (the file itself: {url}/data/{path.name}); Ctrl-C stops it")
            sys.stdout.flush()
            if not args.no_browser and can_open_browser():
                webbrowser.open(url)
            # SIGTERM stops it the same way Ctrl-C does.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                while True:
                    time.sleep(0.2)
            except KeyboardInterrupt:
                pass
            finally:
                httpd.shutdown()
                httpd.server_close()
            print("stopped")
        return 0

    return run_cli(body, "vizkit.netron_view")


if __name__ == "__main__":
    sys.exit(main())
