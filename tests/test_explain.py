import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from photos import digit_photo
from PIL import Image
from torch import nn

from vizkit.attribution import grad_cam, integrated_gradients, saliency
from vizkit.checkpoint import load_checkpoint
from vizkit.data import load_test_split
from vizkit.explain import main
from vizkit.export import Normalized

REPO = Path(__file__).resolve().parents[1]


def not_blank(path: Path) -> bool:
    with Image.open(path) as img:
        lo, hi = img.convert("L").getextrema()
        return img.size[0] > 600 and hi - lo > 100


def test_explain_a_test_image(mnist_run, tmp_path, capsys):
    assert main(["--run", str(mnist_run), "--index", "7", "--out", str(tmp_path / "e.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "e.png")
    assert not_blank(tmp_path / "e.png")


def test_bring_your_own_digit(mnist_run, data_dir, tmp_path):
    photo = tmp_path / "photo.jpg"
    digit_photo(load_test_split("mnist", data_dir).images[0, 0].numpy(), np.random.default_rng(2)).save(photo)
    cmd = [sys.executable, "-m", "vizkit.explain", "--run", str(mnist_run), "--image", str(photo)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = Path(result.stdout.strip())
    assert out == mnist_run / "explain" / "photo.png" and not_blank(out)


def test_attributions_say_something(mnist_run, data_dir):
    model, ckpt = load_checkpoint(mnist_run / "best.pth")
    net = Normalized(model, ckpt["mean"], ckpt["std"]).eval()
    x = load_test_split("mnist", data_dir).images[:1].float() / 255  # a 7
    target = int(net(x).argmax())
    ink = x[0, 0] > 0.5
    sal = saliency(net, x, target)
    assert sal.shape == (28, 28) and sal[ink].mean() > sal[~ink].mean()  # the ink matters more than the paper
    ig = integrated_gradients(net, x, target, steps=64)
    with torch.no_grad():
        gap = (net(x)[0, target] - net(torch.zeros_like(x))[0, target]).item()
    assert ig.sum().item() == pytest.approx(gap, rel=0.1)  # completeness, up to the path integral's error
    cam = grad_cam(net, model, "conv3", x, target)
    assert cam.shape == (28, 28) and cam.max() == pytest.approx(1.0) and cam.min() >= 0
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layer", "conv9"], "no layer named 'conv9'"),
        (["--layer", "fc1"], "Grad-CAM needs a step with channels of maps and 'fc1' gives 128"),
    ],
)
def test_bad_layer_is_one_line(mnist_run, argv, message, capsys):
    assert main(["--run", str(mnist_run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_optimized_inputs(small_run, tmp_path):
    from vizkit.features import main as features

    out = tmp_path / "opt.png"
    assert features(["--run", str(small_run), "--layer", "conv2", "--optimize", "--out", str(out)]) == 0
    assert not_blank(out)


def test_optimization_excites_its_channel(small_run):
    from vizkit.attribution import optimize_inputs
    from vizkit.hooks import capture

    model, ckpt = load_checkpoint(small_run / "best.pth")
    net = Normalized(model, ckpt["mean"], ckpt["std"]).eval()
    inputs = optimize_inputs(net, model, "conv1", ckpt["input_shape"], steps=60)
    noise = torch.rand_like(inputs)
    with torch.no_grad(), capture(model, ["conv1"]) as acts:
        net(inputs)
        made = acts["conv1"][range(16), range(16)].mean((1, 2))
        net(noise)
        random = acts["conv1"][range(16), range(16)].mean((1, 2))
    assert (made > random).float().mean() >= 0.9


def test_attribution_leaves_a_training_model_exactly_as_found():
    """In train mode, BatchNorm would use batch statistics (IG's path images normalising each other) and move
    its running statistics; every method runs in eval mode and restores each module's own flag."""
    from vizkit.export import Normalized
    from vizkit.models import get_model

    torch.manual_seed(0)
    model = get_model("vizkit").train()
    model.bn2.eval()  # frozen on purpose
    net = Normalized(model, [0.1307], [0.3081])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 1, 28, 28)
    maps = [saliency(net, x, 3), integrated_gradients(net, x, 3, 8), grad_cam(net, model, "conv3", x, 3)]
    model.eval()
    want = [saliency(net, x, 3), integrated_gradients(net, x, 3, 8), grad_cam(net, model, "conv3", x, 3)]
    assert all(torch.allclose(a, b) for a, b in zip(maps, want, strict=True))
    model.train()
    model.bn2.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == [m is not model.bn2 for m in model.modules()]
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_known_answer_on_a_tiny_model():
    """One 1x1 conv channel that copies the image, then logit 0 = +sum and logit 1 = -sum of it: the gradient
    per channel is +-1/(HW), so Grad-CAM for class 0 is relu(x) / max, and for class 1 it is zero."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = conv, head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x).mean(dim=(2, 3)))

    model = Tiny()
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 1:3, 2:5] = torch.tensor([[1.0, 2.0, 4.0], [0.5, 3.0, 1.0]])
    assert torch.allclose(grad_cam(model, model, "conv", x, 0), x[0, 0] / 4.0)
    assert torch.equal(grad_cam(model, model, "conv", x, 1), torch.zeros(6, 6))
