import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("target", ["model.onnx", "best.pth", "."], ids=["onnx", "checkpoint", "run-dir"])
def test_serves_the_model_and_stops_on_ctrl_c(small_run, target):
    cmd = [sys.executable, "-m", "vizkit.netron_view", str(small_run / target), "--no-browser"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        assert proc.wait(timeout=20) == 0
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


def test_checkpoint_is_exported_to_a_temporary_file(small_run, tmp_path):
    path = onnx_for(str(small_run / "best.pth"), tmp_path)
    assert path.parent == tmp_path and path.suffix == ".onnx"
