"""Where a model is wrong and what its layers do: predictions, confusion, activation statistics, a layer summary.

Plain computations on any nn.Module; run.py and report.py decide where the results go.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vizkit.errors import VizkitError
from vizkit.graph import capture, first_tensor, forward_graph, loss, probabilities, step_outputs


@dataclass
class Predictions:
    """A model's view of a split: per image, the probabilities, the loss and (optionally) penultimate features."""

    probs: torch.Tensor  # (N, K)
    losses: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)
    features: torch.Tensor | None = None  # (N, F): the input of the last Linear, for the projector
    inputs: torch.Tensor | None = None  # (N, C, H, W): the batches as the model took them (normalised)

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def accuracy(self) -> float:
        return (self.preds == self.labels).sum().item() / len(self.labels)  # exact, not float32

    @property
    def loss(self) -> float:
        return self.losses.double().mean().item()


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    input_shape: list[int] | tuple[int, ...],
    features_of: str | None = None,
    keep_inputs: bool = False,
) -> Predictions:
    """Probabilities and per-image losses over (x, y) batches (a DataLoader, or data.batches), in eval mode.

    The model's output may be logits, log-probabilities or probabilities (graph.Graph.output_kind): the loss is
    the cross-entropy either way. `features_of` names a step whose *input* is kept (the last Linear's: what the
    classifier sees); `keep_inputs` keeps the batches themselves (for top-loss pictures). The model is left as
    it was.
    """
    device = model_device(model)
    kind = forward_graph(model, input_shape).output_kind
    names = [features_of] if features_of else []
    probs, losses, labels, feats, kept = [], [], [], [], []
    with capture(model, names, input_shape, inputs=True) as seen:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = first_tensor(model(x), model)
            probs.append(probabilities(out, kind).cpu())
            losses.append(loss(out.float(), y, kind, reduction="none").cpu())
            labels.append(y.cpu())
            if features_of in seen:  # a head that does not run in eval mode gives none
                feats.append(seen.pop(features_of).flatten(1))
            if keep_inputs:
                kept.append(x.cpu())
    if not labels:
        raise VizkitError("the evaluation data is empty: it gave no batches")
    return Predictions(
        torch.cat(probs),
        torch.cat(losses),
        torch.cat(labels).long(),
        torch.cat(feats) if feats and len(feats) == len(labels) else None,
        torch.cat(kept) if kept else None,
    )


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    return torch.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Recall per class: the diagonal of the confusion matrix over its row sums."""
    return (cm.diag().float() / cm.sum(1).clamp_min(1)).tolist()


def top_losses(pred: Predictions, k: int = 16) -> torch.Tensor:
    """Indices of the k most confidently wrong images (highest loss), worst first."""
    return pred.losses.topk(min(k, len(pred.losses))).indices


@dataclass
class Evaluation:
    """A model's final evaluation on a test set, computed once and drawn, logged and saved elsewhere (fastai's
    Interpretation): predictions (probabilities, losses, labels; the projector's features and the inputs kept),
    the confusion matrix, per-class accuracy and the top losses."""

    predictions: Predictions
    confusion: torch.Tensor  # (K, K)
    per_class: list[float]
    worst: torch.Tensor  # indices of the top losses, worst first

    @property
    def accuracy(self) -> float:
        return self.predictions.accuracy

    @property
    def loss(self) -> float:
        return self.predictions.loss

    def numbers(self) -> dict[str, Any]:
        """What metrics.json keeps of it."""
        return {
            "test_accuracy": self.accuracy,
            "test_loss": self.loss,
            "confusion_matrix": self.confusion.tolist(),
            "per_class_accuracy": self.per_class,
        }


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    input_shape: list[int] | tuple[int, ...],
    classes: int,
    features_of: str | None = None,
) -> Evaluation:
    """Everything the final evaluation shows, in one pass over (x, y) batches, in eval mode."""
    pred = predict(model, loader, input_shape, features_of, keep_inputs=True)
    cm = confusion_matrix(pred.labels, pred.preds, classes)
    return Evaluation(pred, cm, per_class_accuracy(cm), top_losses(pred))


def epoch_score(val_accuracy: float | None, val_loss: float | None) -> float:
    """What the best epoch is chosen by: validation accuracy, else the negative validation loss; an epoch
    with neither scores -inf (the latest such epoch is kept as the best)."""
    if val_accuracy is not None:
        return val_accuracy
    return -val_loss if val_loss is not None else float("-inf")


def is_best(score: float, best_score: float) -> bool:
    """Whether an epoch of this score replaces the best so far (an epoch with no score always does)."""
    return score > best_score or score == float("-inf")


@torch.no_grad()
def activation_stats(model: nn.Module, batch: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per ReLU step: mean and std of its output, and the fraction of dead units (channels or features that
    are zero for every input of the batch), a signal none of TensorBoard, fastai or Captum logs by default."""
    relus = forward_graph(model, tuple(batch.shape[1:])).relus()
    out = step_outputs(model, relus, batch)
    stats = {}
    for name in relus:
        if name not in out:  # defined but not called
            continue
        a = out[name]
        per_unit = a.transpose(0, 1).flatten(1).amax(1)  # (units,): channel for conv maps, feature for fc
        stats[name] = {
            "mean": a.mean().item(),
            "std": a.std().item(),
            "dead_fraction": (per_unit <= 0).float().mean().item(),
        }
    return stats


@dataclass
class Histogram:
    """A tensor's distribution as TensorBoard's histogram summary takes it: right edges and counts."""

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    limits: list[float]  # the right edge of each bucket
    counts: list[float]


HISTOGRAM_BUCKETS = 30  # tf.summary.histogram's default


@torch.no_grad()
def histogram(values: torch.Tensor, buckets: int = HISTOGRAM_BUCKETS) -> Histogram | None:
    """Equal-width buckets between the finite values' min and max, as tf.summary.histogram makes them; None when
    no value is finite. torch.histc, where the tensor lives: tensorboardX's add_histogram sorts a numpy copy
    into 1,549 exponential buckets: 38-39 ms an epoch for recipe 001's 16 tensors, against 4.5 (profile_epoch.py)."""
    x = values.detach().flatten().float()
    if x.is_cuda and torch.are_deterministic_algorithms_enabled():
        x = x.cpu()  # histc has no deterministic CUDA kernel and would raise
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return None
    lo, hi = x.aminmax()
    sums = [x.sum(dtype=torch.float64), x.square().sum(dtype=torch.float64)]  # float64 totals, no float64 copy
    head = torch.stack([lo.double(), hi.double(), *sums]).tolist()  # one sync
    lo_f, hi_f = head[0], head[1]
    if lo_f == hi_f:  # one value throughout (a bias at zero): one bucket
        return Histogram(lo_f, hi_f, x.numel(), head[2], head[3], [hi_f], [float(x.numel())])
    counts = torch.histc(x, bins=buckets, min=lo_f, max=hi_f).tolist()
    limits = torch.linspace(lo_f, hi_f, buckets + 1, dtype=torch.float64)[1:].tolist()
    return Histogram(lo_f, hi_f, x.numel(), head[2], head[3], limits, counts)


def parameter_histograms(model: nn.Module) -> dict[str, Histogram]:
    """`weights/<name>` and `grads/<name>` (the last step's gradient) of every parameter."""
    out = {}
    for name, param in model.named_parameters():
        for tag, tensor in ((f"weights/{name}", param), (f"grads/{name}", param.grad)):
            h = histogram(tensor) if tensor is not None else None
            if h is not None:
                out[tag] = h
    return out
