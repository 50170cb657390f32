"""The README's Python example runs as written (with the test data mirror)."""

from __future__ import annotations

import math
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
    bits_per_dim, log_pz, log_abs_det_jacobian = (float(v) for v in printed)
    # a flow's bits/dim on 1x32x32 images in [-0.5, 0.5): -(log p(x) - D ln 256) / (D ln 2)
    dims = 32 * 32
    expected = -(log_pz + log_abs_det_jacobian - dims * math.log(256)) / (dims * math.log(2))
    assert bits_per_dim == pytest.approx(expected, rel=1e-5)
    assert 0.5 < bits_per_dim < 12  # a 20-step tiny Glow: worse than trained, far from garbage
    assert (tmp_path / "runs" / "example" / "model.safetensors").exists()
