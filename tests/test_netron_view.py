import datetime
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import CHROMIUM, chromium_page

from vizkit.netron_view import main, onnx_for

REPO = Path(__file__).resolve().parents[1]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def wait_for_url(proc: subprocess.Popen, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "http://" in line:
            return line.split(" at ", 1)[1].split()[0]
        if proc.poll() is not None:
            break
    raise AssertionError(f"no URL printed; stderr: {proc.stderr.read()}")


# a checkpoint is exported to ONNX first, in the served process (test_checkpoint_is_exported_to_a_temporary_file
# checks that export on its own, quickly)
CHECKPOINT = pytest.param("best.pth", marks=pytest.mark.slow, id="checkpoint")


@pytest.mark.parametrize("target", ["model.onnx", CHECKPOINT, "."], ids=["onnx", "checkpoint", "run-dir"])
def test_serves_the_model_and_stops_on_ctrl_c(small_run, target):
    cmd = [sys.executable, "-m", "vizkit.netron_view", str(small_run / target), "--no-browser"]
    # SIGINT as a terminal gives it: a shell runs background jobs with SIGINT ignored, and Python keeps that
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        url = wait_for_url(proc)
        assert url.startswith("http://127.0.0.1:")
        status, page = get(url + "/")
        assert status == 200 and b"<html" in page.lower()
        name = "best.onnx" if target == "best.pth" else "model.onnx"
        status, served = get(f"{url}/data/{name}")
        assert status == 200 and len(served) > 10_000
        if target == "model.onnx":
            assert served == (small_run / "model.onnx").read_bytes()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        proc.kill()


def test_port_already_taken(small_run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([str(small_run / "model.onnx"), "--port", str(port), "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"127.0.0.1:{port}" in err and "--port" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "content, name, message",
    [
        (None, "missing.onnx", "does not exist"),
        (b"junk", "x.onnx", "not an ONNX model"),
        (b"x", "x.txt", "not a model"),
    ],
)
def test_not_a_model(tmp_path, content, name, message, capsys):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert main([str(path), "--no-browser"]) == 2
    assert message in capsys.readouterr().err


def test_checkpoint_is_exported_to_a_temporary_file(known_run, tmp_path):
    """known_weights says 3 at 91.0% whatever the input: the exported file gives those logits for any batch,
    is the one file in the folder it was given, and the run is left holding its checkpoint alone."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    path = onnx_for(str(known_run / "best.pth"), workdir)
    assert path == workdir / "best.onnx" and list(workdir.iterdir()) == [path]
    assert [p.name for p in known_run.iterdir()] == ["best.pth"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["logits"]
    (logits,) = session.run(None, {"image": np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)})
    want = np.log([0.01, 0.01, 0.01, 0.91, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    assert logits.shape == (3, 10) and np.allclose(logits, want, atol=1e-6)


AGED = pytest.param(400, marks=pytest.mark.slow, id="netron-older-than-180-days")  # a second browser, same page


@pytest.mark.parametrize("days_ahead", [0, AGED], ids=["today", "netron-older-than-180-days"])
def test_netron_page_opens_on_the_graph_and_stays_offline(small_run, days_ahead):
    """Stock Netron asks ipinfo.io, shows a cookie prompt, reports to Google Analytics, and past 180 days
    loops on 'Please update'; vizkit's page does none of it, in a real browser."""
    cmd = [sys.executable, "-m", "vizkit.netron_view", str(small_run), "--no-browser"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = wait_for_url(proc)
        hosts = set()
        with chromium_page() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.on("request", lambda r: hosts.add(urllib.parse.urlsplit(r.url).netloc))
            if days_ahead:  # the browser's clock as it will be when the installed netron is this old
                page.clock.set_system_time(datetime.datetime.now() + datetime.timedelta(days=days_ahead))
            page.goto(url + "/")
            page.wait_for_selector("#canvas .node", timeout=30_000)
            nodes = page.locator("#canvas .node").count()
            text = page.inner_text("body")
            browser.close()
        assert nodes >= 10  # Sub, Div, Conv, Relu, MaxPool, ... of the default model
        assert "cookies" not in text and "newest version" not in text
        assert hosts == {urllib.parse.urlsplit(url).netloc}, hosts  # nothing left 127.0.0.1
    finally:
        proc.kill()


def test_netron_page_settings_and_headers(small_run):
    from vizkit.netron_view import serve

    httpd = serve(small_run / "model.onnx")
    try:
        host, port = httpd.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as response:
            page = response.read().decode()
            headers = response.headers
        assert '<meta name="version" content="0.0.0">' in page and '<meta name="date"' not in page
        assert "connect-src 'self'" in headers["Content-Security-Policy"]
        assert headers["Set-Cookie"].startswith("consent=")
        assert '<meta name="file" content="/data/model.onnx">' in page  # netron's own settings kept
    finally:
        httpd.shutdown()
        httpd.server_close()
