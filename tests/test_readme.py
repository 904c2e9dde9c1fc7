"""The README's commands are the ones CI runs, and its quick start runs."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = _bash_blocks(readme)
    assert len(blocks) >= 2, "README must give a main-job command and a test command"
    test_command = blocks[1].strip().split(" && ")[-1]
    assert test_command.startswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in [line.strip() for line in ci.splitlines()]
    assert "pip install torch==2.13.0" in ci
    assert "precal demo" in blocks[0]


def test_quick_start_runs():
    readme = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=400)
    logits = 4.0 * (np.eye(5)[y] + rng.normal(size=(400, 5)))
    namespace = {
        "logits_cal": logits[:200], "y_cal": y[:200], "logits_test": logits[200:], "y_test": y[200:],
        "print": lambda *a: None,
    }
    exec(compile(code, "README quick start", "exec"), namespace)
    assert namespace["ts"].temperature_ > 0
