"""plots.py: what a person reads in the figures, checked on the rendered figure."""

from __future__ import annotations

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from vizkit.plots import activation_figure, top_losses_figure


def title_inside(fig) -> bool:  # noqa: ANN001
    """Whether the figure's title, as drawn, lies within the figure (a long one used to run off both sides)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    return box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_long_titles_wrap_inside_the_figure():
    title = "test-0 (label Ankle boot): predicted Ankle boot (97.4%); " + "normalised with mean 0.2851, std 0.3534 " * 3
    for values in (torch.rand(4, 6, 6), torch.rand(10)):  # tiles of maps, and bars
        fig = activation_figure(values, "blocks.0.conv (Conv2d, from input)", torch.rand(1, 6, 6), title)
        assert title_inside(fig) and "\n" in fig._suptitle.get_text()


def test_output_bars_are_named_by_class():
    fig = activation_figure(torch.tensor([0.1, -2.0, 3.0]), "fc", torch.rand(1, 6, 6), "t", ["cat", "dog", "emu"])
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert labels == ["cat", "dog", "emu"]


def test_top_losses_say_when_nothing_was_wrong():
    images = torch.zeros(3, 1, 6, 6, dtype=torch.uint8)
    right = top_losses_figure(images, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.rand(3), "abc")
    assert right._suptitle.get_text() == "top losses: no test image was wrong; the least confident right answers"
    wrong = top_losses_figure(images, torch.tensor([0, 1, 2]), torch.tensor([1, 1, 2]), torch.rand(3), "abc")
    assert wrong._suptitle.get_text() == "top losses: the most confidently wrong test images"
