"""The README's Python example runs as written (with the test data mirror)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


@pytest.mark.slow
def test_readme_python_example_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mirror: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README should carry a Python example"
    monkeypatch.setenv("DGMOOD_MIRROR", str(mirror))
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3 and all(float(v) == float(v) for v in printed)
    assert (tmp_path / "runs" / "example" / "model.safetensors").exists()
