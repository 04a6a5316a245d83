"""Which input pixels a prediction depends on: gradient saliency, integrated gradients and Grad-CAM.

Captum's and pytorch-grad-cam's methods in a few lines each, on vizkit's own graph.capture(). Each takes
`net`, a module from pixels in [0, 1] to logits (normalize.Normalized around a model), and a (1, C, H, W) input,
and returns an (H, W) map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vizkit.graph import capture
from vizkit.hooks import modes_kept


def saliency(net: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """|d logit[target] / d pixel|, the largest over colour channels (Simonyan et al. 2014). Eval mode, so
    BatchNorm uses its running statistics and moves none of them; each module's mode is restored after."""
    x = x.clone().requires_grad_(True)
    with modes_kept(net):
        (grad,) = torch.autograd.grad(net(x)[0, target], x)
    return grad.abs().amax(1)[0]


def integrated_gradients(net: nn.Module, x: torch.Tensor, target: int, steps: int = 32) -> torch.Tensor:
    """(x - baseline) times the mean gradient along the straight path from a black image (Sundararajan 2017).

    Signed: positive pixels push towards `target`. The sum over pixels approximates logit(x) - logit(black).
    """
    baseline = torch.zeros_like(x)
    # midpoint rule; on x's device. Eval mode: in train mode the path images would normalise each other
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5).div(steps).view(-1, 1, 1, 1)
    path = (baseline + alphas * (x - baseline)).requires_grad_(True)
    with modes_kept(net):
        (grads,) = torch.autograd.grad(net(path)[:, target].sum(), path)
    return ((x - baseline) * grads.mean(0, keepdim=True)).sum(1)[0]


def grad_cam(net: nn.Module, model: nn.Module, layer: str, x: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): the layer's channels weighted by their mean gradient, ReLU, scaled to
    [0, 1] and resized to the input; zero everywhere where nothing in the layer speaks for `target` (see
    no_evidence). `model` is the module inside `net` whose forward graph has the step `layer`."""
    with capture(model, [layer], x.shape[1:], detach=False) as acts:
        score = net(x)[0, target]
        activation = acts[layer]
        (grad,) = torch.autograd.grad(score, activation)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach()
    return cam / cam.max().clamp_min(1e-12)


def optimize_inputs(
    net: nn.Module, model: nn.Module, layer: str, input_shape: list[int], steps: int = 160, seed: int = 0
) -> torch.Tensor:
    """For each channel of `layer`, the input that excites it most (Lucent's idea for small grey inputs).

    Gradient ascent from faint noise on a sigmoid-parametrised image, with a little jitter (random shifts of
    up to 2 px) and decay towards black, so what grows is the pattern, not noise. Returns (channels, C, H, W).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad(), capture(model, [layer], input_shape) as out:
        net(torch.zeros(1, *input_shape))
    channels = out[layer].shape[1]
    param = (torch.randn(channels, *input_shape, generator=gen) * 0.1 - 2.0).requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=0.1)
    index = torch.arange(channels)
    with capture(model, [layer], input_shape, detach=False) as acts:
        for _ in range(steps):
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
            x = torch.roll(torch.sigmoid(param), shifts=shift, dims=(2, 3))
            net(x)
            a = acts[layer]
            excite = a[index, index].flatten(1).mean(1)  # image i drives channel i
            loss = -excite.sum() + 0.05 * x.pow(2).mean(dim=(1, 2, 3)).sum()
            # the gradient of the image only: backward() would leave .grad on the model's parameters
            (param.grad,) = torch.autograd.grad(loss, [param])
            optimizer.step()
    return torch.sigmoid(param).detach()


def no_evidence(cam: torch.Tensor, layer: str, target: str) -> str | None:
    """What to say instead of an empty Grad-CAM panel: no channel of `layer` has positive evidence for `target`
    (every weighted sum is at most zero, so the ReLU leaves nothing)."""
    return f"no positive evidence for class {target} in {layer}" if float(cam.max()) <= 0 else None
