import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import colour_areas, colour_of, hand_set_run
from photos import digit_photo
from PIL import Image
from torch import nn

from vizkit.attribution import grad_cam, integrated_gradients, saliency
from vizkit.checkpoint import open_checkpoint
from vizkit.data import load_test_split
from vizkit.explain import main
from vizkit.normalize import Normalized

REPO = Path(__file__).resolve().parents[1]
NOTE = "normalised with mean 0.1307, std 0.3081 (from the checkpoint)"


def conv1_tiles_of_one_size(path: Path) -> bool:
    """The first layer's maps of known_weights, read back from the PNG: channel c is c, so its tile is viridis at
    c/9, all of one size. Channel 9, at the top of the scale, is the colour of the lines between the tiles."""
    areas = colour_areas(path, [colour_of("viridis", c / 9) for c in range(9)])
    return min(areas) > 2000 and max(areas) - min(areas) < 0.01 * min(areas)


def test_explain_a_test_image(known_run, data_dir, tmp_path, capsys, saved_figures):
    """known_weights answers 3 at 91.0% whatever the input: no pixel moves its answer, so saliency, integrated
    gradients and Grad-CAM are zero everywhere, and conv1's channel c is c."""
    out = tmp_path / "e.png"
    assert main(["--run", str(known_run), "--index", "7", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    (fig,) = saved_figures
    title = f"test-7, label 9: why 3? ({known_run / 'best.pth'}; {NOTE})"
    assert "".join(fig._suptitle.get_text().split()) == "".join(title.split())  # wrapped to the figure's width
    seen, bars, *maps, first = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [
        "what the model saw (28x28)",
        "3 (91.0%)",
        "gradient saliency",
        "integrated gradients",
        "Grad-CAM (no positive evidence for class 3 in relu2)",
        "conv1: feature maps of the first 10 channels (one colour scale)",
    ]
    test = load_test_split("mnist", data_dir)
    assert np.array_equal(seen.images[0].get_array(), (test.images[7, 0].float() / 255).numpy())
    assert [round(bar.get_height(), 6) for bar in bars.patches] == [0.01] * 3 + [0.91] + [0.01] * 6
    for ax in maps:  # the input in grey, and over it the map
        assert ax.images[0].get_array().shape == (28, 28) and not np.asarray(ax.images[1].get_array()).any()
    assert conv1_tiles_of_one_size(out)


def test_bring_your_own_digit(known_run, data_dir, tmp_path):
    photo = tmp_path / "photo.jpg"
    digit_photo(load_test_split("mnist", data_dir).images[0, 0].numpy(), np.random.default_rng(2)).save(photo)
    cmd = [sys.executable, "-m", "vizkit.explain", "--run", str(known_run), "--image", str(photo)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = Path(result.stdout.strip())
    assert out == known_run / "explain" / "photo.png"
    with Image.open(out) as img:  # six panels of 2.6 inches at 100 dpi, your photo first, 6.2 inches tall
        assert img.size == (1560, 620)
    assert conv1_tiles_of_one_size(out)


@pytest.mark.slow
def test_attributions_say_something(mnist_run, data_dir):
    model, ckpt = open_checkpoint(mnist_run / "best.pth")
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
def test_bad_layer_is_one_line(small_run, argv, message, capsys):
    assert main(["--run", str(small_run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_optimized_inputs(data_dir, tmp_path, saved_figures):
    """conv1's kernels all +1 (even channels) or all -1 (odd ones), no bias: a white image excites an even channel
    most, a black one an odd channel. The figure shows those inputs, a numbered tile per channel."""
    from vizkit.features import main as features

    def signs(model: nn.Module) -> None:
        model.conv1.weight.copy_(torch.tensor([1.0, -1.0] * 5).view(10, 1, 1, 1).expand(10, 1, 5, 5))
        model.conv1.bias.zero_()

    run = hand_set_run(tmp_path / "signs", data_dir, signs)
    out = tmp_path / "opt.png"
    assert features(["--run", str(run), "--layer", "conv1", "--optimize", "--out", str(out)]) == 0
    (fig,) = saved_figures
    title = "conv1: for each channel, the input that excites it most (gradient ascent from noise)"
    assert "".join(fig._suptitle.get_text().split()) == "".join(title.split()) and out.is_file()
    tiles = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in tiles] == [str(c) for c in range(10)]
    shown = [np.asarray(ax.images[0].get_array()) for ax in tiles]
    assert all(x.min() > 0.9 for x in shown[::2]) and all(x.max() < 0.1 for x in shown[1::2])


@pytest.mark.slow  # test_optimized_inputs has the known answer, quickly
def test_optimization_excites_its_channel(small_run):
    from vizkit.attribution import optimize_inputs
    from vizkit.hooks import capture

    model, ckpt = open_checkpoint(small_run / "best.pth")
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
    from vizkit.models import get_model
    from vizkit.normalize import Normalized

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
