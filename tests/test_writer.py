import errno
import os
import shutil
import subprocess

import pytest
import torch

from vizkit.analysis import histogram, parameter_histograms
from vizkit.plots import feature_grid
from vizkit.run import image_epochs
from vizkit.writer import NullWriter, Writer


def test_image_epochs_fit_tensorboards_default_of_ten():
    assert image_epochs(3) == {1, 2, 3}
    many = image_epochs(50)
    assert len(many) == 10 and {1, 50} <= many


def test_feature_grid_has_a_tile_per_channel():
    grid = feature_grid(torch.randn(4, 16, 7, 7))
    # 16 tiles of 7 px plus 1 px padding across, 4 rows down
    assert grid.shape == (3, 4 * 8 + 1, 16 * 8 + 1)
    assert 0.0 <= grid.min() and grid.max() <= 1.0


def test_hparams_stay_in_the_runs_own_folder(tmp_path):
    writer = Writer(tmp_path)
    writer.hparams({"lr": 0.1, "mean": "[0.5]"}, {"test_accuracy": 0.9}, {"lr": 0.0, "mean": ""})
    writer.close()
    writer.close()  # a second close is harmless
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_null_writer_writes_nothing(tmp_path):
    writer = NullWriter()
    writer.epoch({"train_loss": 1.0, "lr": 0.1}, 1)
    writer.flush()
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_flush_puts_every_event_on_disk_and_the_file_grows_only(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = Writer(tmp_path)
    writer.epoch({"train_loss": 0.5, "val_loss": 0.25, "lr": 0.125}, 3)  # float32-exact values
    writer.flush()  # no thread, no two-minute buffer: on disk now, before the writer closes
    sizes = {p: p.stat().st_size for p in tmp_path.rglob("events.out.tfevents.*")}
    read = {}
    for sub in ("", "train", "val"):
        ea = EventAccumulator(str(tmp_path / sub))
        ea.Reload()
        read[sub] = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    assert read == {"": {"lr": [(3, 0.125)]}, "train": {"Loss": [(3, 0.5)]}, "val": {"Loss": [(3, 0.25)]}}
    writer.close()
    assert all(p.stat().st_size == size for p, size in sizes.items())  # closing added nothing unflushed


def test_a_failed_write_raises_where_it_happened_and_close_does_not_hang(tmp_path):
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    writer = Writer(tmp_path)
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    os.unlink(event_file)
    os.symlink("/dev/full", event_file)  # every write to it: ENOSPC, as on a full disk
    writer.main.file_writer.event_writer._events._py_recordio_writer._writer = open(event_file, "wb")
    with pytest.raises(OSError) as failed:
        writer.scalars({"lr": 0.1}, 1)
        writer.flush()
    assert failed.value.errno == errno.ENOSPC
    with pytest.raises(OSError):  # later writes refuse at once instead of queueing for a dead thread
        writer.scalars({"lr": 0.2}, 2)
    writer.close()  # the failure was reported already: closing neither hangs nor raises it again


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"), reason="needs root's mount")
def test_a_disk_out_of_inodes_fails_the_embedding_with_its_own_error(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=8", "tmpfs", str(disk)]).returncode:
        pytest.skip("this machine does not let root mount a tmpfs")
    try:
        writer = Writer(disk / "run")
        writer.scalars({"lr": 0.1}, 1)
        writer.flush()
        with pytest.raises(OSError) as failed:
            for i in range(8):  # every inode left taken
                (disk / f"fill{i}").mkdir()
        assert failed.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as failed:  # tensorboardX's own makedirs fails and is swallowed
            writer.embedding(torch.rand(4, 3), list("abcd"), torch.rand(4, 1, 8, 8), 1, "penultimate")
        assert failed.value.errno == errno.ENOSPC  # not ENOENT for a file in the folder it could not make
        assert capsys.readouterr().out == ""
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_histogram_of_known_values():
    h = histogram(torch.tensor([0.0, 1.0, 2.0, 3.0, float("nan"), float("inf")]), buckets=3)
    # the finite values only; equal-width buckets [0, 1), [1, 2), [2, 3] named by their right edges
    assert (h.min, h.max, h.num, h.sum, h.sum_squares) == (0.0, 3.0, 4, 6.0, 14.0)
    assert h.limits == [1.0, 2.0, 3.0] and h.counts == [1.0, 1.0, 2.0]
    constant = histogram(torch.zeros(5))  # a bias at its initial value: one bucket
    assert (constant.limits, constant.counts) == ([0.0], [5.0])
    assert histogram(torch.tensor([float("nan")])) is None


def test_parameter_histograms_read_back_with_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 3.0]]))
        model.bias.zero_()
    model(torch.ones(1, 2)).sum().backward()  # grads: weight [1, 1], bias [1]
    hists = parameter_histograms(model)
    assert set(hists) == {"weights/weight", "weights/bias", "grads/weight", "grads/bias"}
    writer = Writer(tmp_path)
    writer.histograms(hists, 4)
    writer.close()
    ea = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    ea.Reload()
    (event,) = ea.Histograms("weights/weight")
    value = event.histogram_value
    assert event.step == 4 and (value.min, value.max, value.num, value.sum, value.sum_squares) == (-1, 3, 2, 2, 10)
    assert value.bucket_limit[-1] == 3.0 and sum(value.bucket) == 2 and value.bucket[0] == value.bucket[-1] == 1
    assert ea.Histograms("grads/bias")[0].histogram_value.bucket == [1.0]
