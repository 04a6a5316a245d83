import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quickstart_has_a_train_and_a_test_command():
    commands = quickstart_commands()
    assert any(c.endswith("python -m vizkit.train") for c in commands)
    assert any(c.endswith("python -m pytest") for c in commands)


def test_ci_runs_the_readmes_test_command():
    test_command = next(c for c in quickstart_commands() if c.endswith("python -m pytest"))
    assert test_command in (REPO / ".ci/run").read_text().splitlines()
