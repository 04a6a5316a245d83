"""Trust: a run opens its recorded code only with the person's own signature (vizkit/trust.py).

Each crafted run below is what someone sharing a run could make. Each is tried with an inspection command,
with --resume and in the tab, and a marker file shows that none of its code ran.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from vizkit import features, signing, train, trust
from vizkit.checkpoint import model_fields, read_checkpoint, save_checkpoint
from vizkit.config import dict_to_toml
from vizkit.errors import VizkitError
from vizkit.tensorboard_plugin import live

MARKER = "code-ran.txt"
EVIL = f"""
import pathlib
import torch.nn as nn
pathlib.Path(__file__).with_name("{MARKER}").write_text("imported")

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""
# the person's own model file: unchanged, with a helper that writes a file of the caller's choosing
OWN = """
import pathlib
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))

def export_notes(path, text):
    pathlib.Path(path).write_text(text)
    return Net()
"""


def write_run(run: Path, spec: str, **fields: object) -> Path:
    """A run directory as a sharer makes it: best.pth, last.pth (with training state) and config.toml."""
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.fc = torch.nn.Linear(784, 10)
    payload = {**model_fields(spec), "config": {}, "classes": [str(i) for i in range(10)], "mean": [0.0],
               "std": [1.0], "input_shape": [1, 28, 28], "dataset": "mnist", "epoch": 1, "val_accuracy": 0.5,
               **fields}  # fmt: skip
    save_checkpoint(run / "best.pth", net, **payload)
    save_checkpoint(run / "last.pth", net, **payload, resume={"history": []})
    (run / "config.toml").write_text(dict_to_toml({"model": payload["model"], "epochs": 2}))
    return run


@pytest.fixture()
def person(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A person's own code, and a key of their own; runs made inside `as_someone_else` carry another key."""
    monkeypatch.setenv("VIZKIT_HOME", str(tmp_path / "home"))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "own.py").write_text(OWN)
    return tmp_path


def as_someone_else(home: Path, make, *args):  # noqa: ANN001, ANN201
    """Run `make` with another person's key (what a run signed on someone else's machine carries)."""
    before = os.environ["VIZKIT_HOME"]
    os.environ["VIZKIT_HOME"] = str(home)
    try:
        return make(*args)
    finally:
        os.environ["VIZKIT_HOME"] = before


def crafted_runs(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[Path, str]]:
    """name -> (run directory, words the refusal must hold)."""
    logdir = root / "logs"
    other = root / "other-home"
    runs = {}
    # 1. signed with another person's key: the code beside it is theirs
    (root / "shared").mkdir()
    (root / "shared" / "evil.py").write_text(EVIL)
    runs["another key"] = (as_someone_else(other, write_run, logdir / "other-key", f"{root}/shared/evil.py:Net"),
                           "not signed with your key")  # fmt: skip
    # 2. the person's own signed run, edited: a helper of their own file, with arguments of the sharer's choosing
    run = write_run(logdir / "edited", f"{root}/code/own.py:Net")
    ckpt = torch.load(run / "best.pth", weights_only=True)
    ckpt.update(model=f"{root}/code/own.py:export_notes", model_args={"path": str(root / MARKER), "text": "x"})
    for name in ("best.pth", "last.pth"):
        torch.save(ckpt, run / name)
    (run / "config.toml").write_text(dict_to_toml({"model": ckpt["model"], "model_args": ckpt["model_args"]}))
    runs["edited"] = (run, "not signed with your key")
    # 3. best.pth a symbolic link into a store; the code inside the run's own folder (even signed: refused)
    run = logdir / "linked"
    run.mkdir()
    (run / "evil.py").write_text(EVIL)
    write_run(root / "store", f"{run}/evil.py:Net")
    for name in ("best.pth", "last.pth"):
        (run / name).symlink_to(root / "store" / name)
    shutil.copy2(root / "store" / "config.toml", run / "config.toml")
    runs["symlinked checkpoint"] = (run, "the checkpoint's own folder")
    # 4. a file beside the shared run, and 5. a relative spec (resolved against the folder the command runs in)
    (logdir / "evil.py").write_text(EVIL)
    runs["sibling file"] = (as_someone_else(other, write_run, logdir / "sibling", f"{logdir}/evil.py:Net"),
                            "not signed with your key")  # fmt: skip
    monkeypatch.chdir(logdir)
    run = as_someone_else(other, write_run, logdir / "relative", "evil.py:Net")
    runs["relative spec"] = (run, "not signed with your key")
    # 6. a package whose __init__.py runs code (only mod.py was hashed before)
    package = root / "site" / "evilpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(EVIL.replace("class Net", "class Unused"))
    (package / "mod.py").write_text("import torch.nn as nn\nclass Net(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(root / "site"))
    runs["package __init__"] = (as_someone_else(other, write_run, logdir / "package", "evilpkg.mod:Net"),
                                "not signed with your key")  # fmt: skip
    return runs


def no_code_ran(root: Path) -> bool:
    return not list(root.rglob(MARKER))


def test_crafted_runs_run_no_code_in_the_cli_resume_and_tab(person, monkeypatch, capsys):
    runs = crafted_runs(person, monkeypatch)
    reasons = {}
    for name, (run, words) in runs.items():
        capsys.readouterr()
        assert features.main(["--run", str(run), "--list-layers"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (name, err)
        assert train.main(["--resume", str(run)]) == 2, name
        with pytest.raises(VizkitError) as refused:
            live.open_run(run / "best.pth", person / "logs")
        reasons[name] = str(refused.value)  # what the tab shows for the run; code inside its log directory is
        assert "\n" not in reasons[name]  # refused before the signature is looked at
        assert words in reasons[name] or "which is the log directory" in reasons[name], (name, reasons[name])
        assert no_code_ran(person), name
    # the refusal says what to do: read the file, then trust the run, or name the code yourself
    run, _ = runs["another key"]
    assert f"python -m vizkit.trust {run}" in reasons["another key"] and "--model" in reasons["another key"]


def test_the_person_s_own_run_opens_and_a_copy_from_elsewhere_needs_trust(person, monkeypatch, capsys):
    own = write_run(person / "runs" / "mine", f"{person}/code/own.py:Net")
    assert features.main(["--run", str(own), "--list-layers"]) == 0  # no flag: signed when it was made
    key = signing.home() / signing.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(bytes.fromhex(key.read_text().strip())) == 32
    # the same run, as another person's machine signed it: their file, but not their signature
    shared = as_someone_else(person / "other-home", write_run, person / "runs" / "shared", f"{person}/code/own.py:Net")
    assert features.main(["--run", str(shared), "--list-layers"]) == 2
    capsys.readouterr()
    # asked, and told no: nothing changes
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert trust.main([str(shared)]) == 1
    shown = capsys.readouterr().out
    lines = len(OWN.splitlines())
    assert f"runs '{person}/code/own.py' ({lines} lines, unchanged since training)" in shown
    assert "calls Net() for 1x28x28 inputs and 10 classes" in shown and "not trusted" in shown
    assert features.main(["--run", str(shared), "--list-layers"]) == 2
    # told yes: both checkpoints signed with this person's key, and the run opens (and resumes past the trust)
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert trust.main([str(shared)]) == 0
    assert all(signing.signed(read_checkpoint(shared / n)) for n in ("best.pth", "last.pth"))
    assert features.main(["--run", str(shared), "--list-layers"]) == 0
    # a script says --yes; with no terminal and no --yes, one line
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert trust.main([str(shared)]) == 2 and "--yes" in capsys.readouterr().err
    assert trust.main([str(shared), "--yes"]) == 0


def test_trust_refuses_what_it_cannot_show(person, capsys):
    run = write_run(person / "runs" / "gone", f"{person}/code/own.py:Net")
    (person / "code" / "own.py").write_text(OWN + "\n# edited\n")
    assert trust.main([str(run), "--yes"]) == 2
    assert "has changed since" in capsys.readouterr().err
    assert trust.main([str(person / "nowhere"), "--yes"]) == 2


class Terminal(io.StringIO):
    """Standard input as a person at a terminal types it."""

    def isatty(self) -> bool:
        return True


def test_a_package_s_init_is_part_of_what_is_trusted(person, monkeypatch, capsys):
    site = person / "site"
    (site / "mine").mkdir(parents=True)
    (site / "mine" / "nets.py").write_text(OWN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(person)
    run = write_run(person / "runs" / "pkg", "mine.nets:Net")  # a namespace package: no __init__ of its own
    assert features.main(["--run", str(run), "--list-layers"]) == 0
    (site / "mine" / "__init__.py").write_text(EVIL)  # planted after training: it would run first
    assert features.main(["--run", str(run), "--list-layers"]) == 2
    assert "another file would be imported" in capsys.readouterr().err and no_code_ran(person)
    run = write_run(person / "runs" / "pkg2", "mine.nets:Net")  # trained with it: recorded, hashed, signed
    assert read_checkpoint(run / "best.pth")["model_source"]["packages"][0]["path"] == str(
        site / "mine" / "__init__.py"
    )
    (site / "mine" / "__init__.py").write_text(EVIL + "\n# edited\n")
    assert features.main(["--run", str(run), "--list-layers"]) == 2
    assert "__init__.py, which has changed since training" in capsys.readouterr().err and no_code_ran(person)


def test_a_signature_holds_for_its_own_record_only(person, capsys):
    run = write_run(person / "runs" / "mine", f"{person}/code/own.py:Net")
    ckpt = torch.load(run / "best.pth", weights_only=True)
    for change in ({"classes": [str(i) for i in range(11)]}, {"input_shape": [1, 56, 56]},
                   {"model_args": {"width": (1, 2)}}):  # fmt: skip
        torch.save({**ckpt, **change}, run / "best.pth")
        assert not signing.signed({**ckpt, **change}), change
    torch.save({**ckpt, "signature": "hmac-sha256:\u00e9"}, run / "best.pth")
    assert features.main(["--run", str(run), "--list-layers"]) == 2
    assert "signature field is malformed" in capsys.readouterr().err


def test_a_key_anyone_could_have_written_is_no_key(person, capsys):
    write_run(person / "runs" / "mine", f"{person}/code/own.py:Net")  # makes the key
    key = signing.home() / signing.KEY_FILE
    key.chmod(0o644)
    with pytest.raises(VizkitError, match="may be read or written by others"):
        signing.key()
    key.write_text("")
    key.chmod(0o600)
    with pytest.raises(VizkitError, match="is not a vizkit key"):
        signing.key()
    key.unlink()
    key.symlink_to(person / "code" / "own.py")
    with pytest.raises(VizkitError, match="cannot read or make the signing key"):
        signing.key()
