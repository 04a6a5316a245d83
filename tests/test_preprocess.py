import numpy as np
import pytest
import torch
from photos import digit_photo
from PIL import Image, ImageOps

from vizkit.checkpoint import open_checkpoint
from vizkit.data import load_test_split, normalize
from vizkit.errors import VizkitError
from vizkit.preprocess import image_files, load_image, mnist_style, prepare


def naive(img: Image.Image, size: int = 28) -> np.ndarray:
    """The tutorials' preparation (grayscale, invert, resize the whole photo): kept to show why it fails."""
    small = ImageOps.invert(img.convert("L")).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0


def test_output_is_mnist_like():
    rng = np.random.default_rng(0)
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a "1"
    out = mnist_style(digit_photo(digit, rng))
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0) and out[0].max() == 0 and out[:, 0].max() == 0  # light ink on black
    rows, cols = np.nonzero(out > 0)
    assert rows.max() - rows.min() + 1 == 20  # the longer side is 20 px
    ys, xs = np.indices(out.shape)
    assert abs((ys * out).sum() / out.sum() - 13.5) <= 1 and abs((xs * out).sum() / out.sum() - 13.5) <= 1


@pytest.mark.slow
def test_photos_of_test_digits_are_read_right(mnist_run, data_dir):
    """A model at about 98.5% on MNIST stays above 95% on photos; the tutorials' resize does not."""
    model, ckpt = open_checkpoint(mnist_run / "best.pth")
    test = load_test_split("mnist", data_dir)
    rng = np.random.default_rng(1)
    n = 200
    photos = [digit_photo(test.images[i, 0].numpy(), rng) for i in range(n)]
    prepared = torch.stack([torch.from_numpy(mnist_style(p))[None] for p in photos])
    tutorial = torch.stack([torch.from_numpy(naive(p))[None] for p in photos])
    with torch.no_grad():
        ours = model(normalize(prepared * 255, ckpt["mean"], ckpt["std"])).argmax(1)
        theirs = model(normalize(tutorial * 255, ckpt["mean"], ckpt["std"])).argmax(1)
    labels = test.labels[:n]
    assert (ours == labels).float().mean() >= 0.95
    assert (theirs == labels).float().mean() < 0.5


def test_gray_light_on_dark_and_small_images_work():
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 8:20] = 255
    out = mnist_style(Image.fromarray(digit))  # already MNIST-like: light ink on black, 28 x 28
    assert out.max() == pytest.approx(1.0) and out[0].max() == 0


def test_non_square_inputs_keep_their_height_and_width():
    """A model of 20 x 36 inputs: a dark square on paper becomes a 14 px square (20 of 28 of the shorter side),
    centred by its centre of mass: rows 9.5 - 6.5 = 3 to 16, columns 17.5 - 6.5 = 11 to 24."""
    page = np.full((60, 100), 230, np.uint8)
    page[25:45, 30:50] = 20
    out = prepare(Image.fromarray(page), [1, 20, 36])
    assert out.shape == (1, 1, 20, 36)
    expected = torch.zeros(20, 36)
    expected[3:17, 11:25] = 1.0
    torch.testing.assert_close(out[0, 0], expected)
    # colour models take the whole photo, fitted to their height and width
    assert prepare(Image.fromarray(page).convert("RGB"), [3, 24, 40]).shape == (1, 3, 24, 40)


def test_blank_page_is_an_error():
    with pytest.raises(VizkitError, match="no digit"):
        mnist_style(Image.new("L", (300, 200), 230))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("not an image"), "not an image"),
        (lambda p: p.write_bytes(_png_bytes()[:200]), "truncated|could not be decoded"),
        (lambda p: p.write_bytes(_huge_png()), "pixels, more than|too large"),
    ],
    ids=["text", "truncated", "20000x20000"],
)
def test_bad_images(tmp_path, make, message):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(VizkitError, match=message):
        load_image(path)


def test_directories_expand_to_their_images(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in image_files([str(tmp_path)])] == ["a.jpg", "b.png"]


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _huge_png() -> bytes:
    import io

    # A 20,000 x 20,000 1-bit image compresses to a few tens of kB: a decompression bomb in miniature.
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, "PNG")
    return buf.getvalue()
