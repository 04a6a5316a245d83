"""Where a model is wrong and what its layers do: predictions, confusion, activation statistics, a layer summary.

Plain computations on any nn.Module; logger.py and report.py decide where the results go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vizkit.data import Split, batches
from vizkit.hooks import capture


@dataclass
class Predictions:
    """A model's view of a split: per image, the probabilities, the loss and (optionally) penultimate features."""

    probs: torch.Tensor  # (N, K)
    losses: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)
    features: torch.Tensor | None = None  # (N, F)

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def accuracy(self) -> float:
        return (self.preds == self.labels).sum().item() / len(self.labels)  # exact, not float32


def penultimate_layer(model: nn.Module) -> str | None:
    """The module just before the last Linear: what the classifier sees, for the embedding projector."""
    names = [name for name, _ in model.named_children()]
    linear = [i for i, (_, m) in enumerate(model.named_children()) if isinstance(m, nn.Linear)]
    return names[linear[-1] - 1] if linear and linear[-1] > 0 else None


@torch.no_grad()
def predict_split(
    model: nn.Module,
    split: Split,
    norm: tuple[tuple[float, ...], tuple[float, ...]],
    batch_size: int = 1000,
    features_of: str | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Predictions:
    """Probabilities and per-image losses for a split, in eval mode; with `features_of`, that layer's outputs."""
    names = [features_of] if features_of else []
    probs, losses, feats = [], [], []
    with capture(model, names) as out:  # eval mode, hooks removed afterwards
        for x, y in batches(split, batch_size, *norm, memory_format=memory_format):
            logits = model(x)
            probs.append(logits.softmax(1).cpu())
            losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
            if features_of:
                feats.append(out[features_of].flatten(1))
    return Predictions(torch.cat(probs), torch.cat(losses), split.labels.cpu(), torch.cat(feats) if feats else None)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    return torch.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Recall per class: the diagonal of the confusion matrix over its row sums."""
    return (cm.diag().float() / cm.sum(1).clamp_min(1)).tolist()


def top_losses(pred: Predictions, k: int = 16) -> torch.Tensor:
    """Indices of the k most confidently wrong images (highest loss), worst first."""
    return pred.losses.topk(min(k, len(pred.losses))).indices


@torch.no_grad()
def activation_stats(model: nn.Module, batch: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per ReLU layer: mean and std of its output, and the fraction of dead units (channels or features that
    are zero for every input of the batch), a signal none of TensorBoard, fastai or Captum logs by default."""
    relus = [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    with capture(model, relus) as out:
        model(batch)
    stats = {}
    for name in relus:
        a = out[name]
        per_unit = a.transpose(0, 1).flatten(1).amax(1)  # (units,): channel for conv maps, feature for fc
        stats[name] = {
            "mean": a.mean().item(),
            "std": a.std().item(),
            "dead_fraction": (per_unit <= 0).float().mean().item(),
        }
    return stats


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    mult_adds: int


@torch.no_grad()
def model_summary(model: nn.Module, input_shape: list[int] | tuple[int, ...]) -> list[LayerRow]:
    """Each leaf layer's output shape, parameter count and multiply-adds for one input (torchinfo's idea)."""
    leaves = [name for name, m in model.named_modules() if name and not list(m.children())]
    modules = dict(model.named_modules())
    param = next(model.parameters(), None)
    with capture(model, leaves) as out:
        model(torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu"))
    rows = []
    for name in leaves:
        m, shape = modules[name], tuple(out[name].shape[1:])
        params = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            macs = out[name].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs = m.in_features * m.out_features
        else:
            macs = 0
        rows.append(LayerRow(name, type(m).__name__, shape, params, macs))
    return rows


def format_summary(rows: list[LayerRow]) -> str:
    lines = [f"{'layer':<10} {'type':<12} {'output':<14} {'params':>9} {'mult-adds':>11}"]
    for r in rows:
        shape = "x".join(map(str, r.output_shape))
        lines.append(f"{r.name:<10} {r.kind:<12} {shape:<14} {r.params:>9,} {r.mult_adds:>11,}")
    total_p, total_m = sum(r.params for r in rows), sum(r.mult_adds for r in rows)
    lines.append(f"{'total':<10} {'':<12} {'':<14} {total_p:>9,} {total_m:>11,}")
    return "\n".join(lines)
