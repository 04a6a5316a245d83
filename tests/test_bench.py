"""The benchmark is not part of the suite; this runs it on one batch per variant so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each runs a benchmark script in processes of its own: minutes in all


def smoke(script: str, out: Path, data_dir: Path) -> tuple[dict, str]:
    """Run a benchmark script with --smoke: its results file and what it printed."""
    cmd = [sys.executable, f"experiments/{script}", "--smoke", "--out", str(out), "--data-dir", str(data_dir)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text()), result.stdout


def test_bench_smoke(tmp_path, data_dir):
    report, stdout = smoke("bench.py", tmp_path / "bench.json", data_dir)
    assert set(report["medians"]) == {
        "a_tutorial", "b_vizkit_log_off", "c_vizkit_log_full", "d_inference", "k_model_kernels"
    }  # fmt: skip
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    # same model, seed and recipe: the tutorial loop and vizkit's runner start from the same weights
    assert report["medians"]["a_tutorial"]["test_accuracy"] > 0
    assert set(report["ratios"]) >= {"b_over_a_epoch_seconds", "c_over_b_epoch_seconds", "k_over_a_epoch_seconds"}
    # each target is worked out from its ratio, and printed once as the results file has it: met or MISSED
    ratios, targets = report["ratios"], report["targets_met"]
    assert targets["b/a <= 0.25"] == (ratios["b_over_a_epoch_seconds"] <= 0.25)
    assert targets["c/b <= 1.02"] == (ratios["c_over_b_epoch_seconds"] <= 1.02)
    assert targets["c/b <= 1.02, steps taken as equal"] == (ratios["c_over_b_outside_steps"] <= 1.02)
    lines = stdout.splitlines()
    for name, met in {**targets, **report["fast_recipe"]["targets_met"]}.items():
        assert lines.count(f"  [{'met' if met else 'MISSED'}] {name}") == 1, name
        assert lines.count(f"  [{'MISSED' if met else 'met'}] {name}") == 0, name
    assert lines[-1] == f"results: {tmp_path / 'bench.json'}"
    # one batch: the model's kernels alone (k) run one step, and the runs report what was not training steps
    assert report["medians"]["k_model_kernels"]["steps"] == 1
    for variant in ("b_vizkit_log_off", "c_vizkit_log_full"):
        assert 0 < report["medians"][variant]["outside_steps_seconds"] < report["medians"][variant]["epoch_seconds"]
    # the default recipe, once, over two epochs of one batch: its first epoch against the later one
    assert len(report["default_recipe_runs"]) == 1 and report["ratios"]["default_first_over_later_epochs"] > 0
    warm = report["default_recipe_one_time_costs"]  # w: one step of one batch, so nothing is paid only once
    assert len(warm["runs"]) == 1 and warm["medians"]["first_step_ms"] > 0 and warm["medians"]["one_time_seconds"] == 0
    assert report["gpu"]["note"]  # a GPU figure, or why there is none
    fast = report["fast_recipe"]  # f and g: the fast recipe over the seeds, and pytorch/examples' loop
    assert fast["summary"]["seeds"] == 1 and len(fast["runs"]) == 1 and fast["pytorch_examples"]["epochs"]
    # one seed: its accuracy is the mean, the least and the most, and it reaches 99.0% or not
    (line,) = [line for line in stdout.splitlines() if line.startswith("fast recipe over ")]
    accuracy = fast["runs"][0]["test_accuracy"]
    a = f"{100 * accuracy:.2f}%"
    assert line.startswith(f"fast recipe over 1 seeds: test accuracy mean {a} (min {a}, max {a}), training ")
    assert line.endswith(f"; {int(accuracy >= 0.99)} of 1 seeds reach 99.0%")


def test_bench_tab_smoke(tmp_path, data_dir):
    report, _ = smoke("bench_tab.py", tmp_path / "tab.json", data_dir)
    assert set(report["update"]) == {"draw", "test", "photo", "draw (pytorch/examples Net)"}
    # the default model's 15 drawn steps; pytorch/examples' 9 (its functional ReLUs and pooling among them)
    assert report["update"]["draw"]["layers"] == 15 and report["update"]["draw (pytorch/examples Net)"]["layers"] == 9
    capture = report["capture"]  # the traced graph against module hooks, every step of the default model
    assert capture["steps"] == 18 and capture["modules"] == 18 and capture["ratio_graph_over_hooks"] > 0
    assert report["startup"]["vizkit_tab_listed"] and not report["startup"]["torch_imported_at_start"]
    # the card at a new unit per conv step, and the epoch slider, each beside its baseline
    assert set(report["card"]) == {"update (baseline)", "card conv1", "card conv2", "card conv3"}
    assert set(report["epoch_switch"]) == {"update at the epoch shown (baseline)", "to an epoch not opened yet",
                                           "to an epoch opened before"}  # fmt: skip


def test_profile_epoch_smoke(tmp_path, data_dir):
    report, stdout = smoke("profile_epoch.py", tmp_path / "profile.json", data_dir)
    assert len(report["epoch-full"]["wall_seconds"]) == 2  # recipe 001, two epochs
    for part in ("training steps", "validation", "histograms", "activation statistics", "feature maps"):
        assert len(report["epoch-full"]["seconds_by_part"][part]) == 2, part
    assert "histograms" not in report["epoch-off"]["seconds_by_part"]  # --log off computes none of it
    assert report["first-kept"]["keep_freed_memory"] is True and report["first-default"]["keep_freed_memory"] is None
    assert "torch.compile (inductor)" in report["options"] and "top operators" in stdout
    for option in ("NCHW in place of NHWC", "PyTorch's own convolutions (oneDNN off)"):
        assert report["options"][option]["ms_per_step"] > 0, option
