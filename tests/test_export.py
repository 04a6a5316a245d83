import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vizkit.checkpoint import open_checkpoint, save_checkpoint
from vizkit.errors import VizkitError
from vizkit.export import check_onnx, export_onnx
from vizkit.models import get_model

FIELDS = dict(model="net", config={}, classes=list("0123456789"), mean=[0.1307], std=[0.3081], input_shape=[1, 28, 28])


def test_checkpoint_reloads_to_identical_outputs(tmp_path):
    model = get_model("net").eval()
    save_checkpoint(tmp_path / "m.pth", model, **FIELDS)
    reloaded, ckpt = open_checkpoint(tmp_path / "m.pth")
    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(model(x), reloaded(x))
    assert ckpt["mean"] == [0.1307] and ckpt["classes"][3] == "3"


def test_onnx_is_valid_and_matches_torch_at_any_batch(tmp_path):
    model = get_model("vizkit").eval()
    path = export_onnx(model, [0.1307], [0.3081], [1, 28, 28], tmp_path / "m.onnx")
    onnx.checker.check_model(str(path))
    assert not (tmp_path / "m.onnx.data").exists()
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    for n in (1, 17):
        assert check_onnx(path, model, [0.1307], [0.3081], torch.rand(n, 1, 28, 28)) < 1e-4
    # the normalisation is inside: raw pixels in [0, 1] in, the model's logits on normalised pixels out
    x = torch.rand(3, 1, 28, 28)
    (got,) = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = model((x - 0.1307) / 0.3081).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_a_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(VizkitError, match="refused by safe loading") as refused:
        open_checkpoint(tmp_path / "evil.pth")
    assert "system" in str(refused.value)  # the message names what the file would have run


def test_truncated_and_foreign_files(tmp_path):
    model = get_model("net")
    save_checkpoint(tmp_path / "m.pth", model, **FIELDS)
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(VizkitError, match="not a readable checkpoint"):
        open_checkpoint(tmp_path / "cut.pth")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(VizkitError, match="bare state dict.*--model PATH.py:NAME"):
        open_checkpoint(tmp_path / "bare.pth")
    with pytest.raises(VizkitError, match="does not exist"):
        open_checkpoint(tmp_path / "missing.pth")


def test_checkpoint_of_another_model(tmp_path):
    save_checkpoint(tmp_path / "m.pth", get_model("net"), **{**FIELDS, "model": "cnn"})
    with pytest.raises(VizkitError, match="does not match model 'cnn'"):
        open_checkpoint(tmp_path / "m.pth")
