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


@pytest.mark.slow
def test_readme_extension_examples_register_a_score_and_a_study(
    tmp_path: Path, mirror: Path
) -> None:
    """The "how to add a score / a study" examples work as written, end to end."""
    import numpy as np

    from dgmood.data.loading import DataSources
    from dgmood.scores import make_score, score_names
    from dgmood.scores.base import _SCORES
    from dgmood.studies import StudyContext, run_study, study_names
    from dgmood.studies.base import _STUDIES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    try:
        exec(compile(blocks[1], "README.md", "exec"), {})  # noqa: S102
        exec(compile(blocks[2], "README.md", "exec"), {})  # noqa: S102
        assert "dark-pixels" in score_names() and "tail" in study_names()
        result = run_study(
            "tail",
            StudyContext(
                tmp_path, DataSources(mirror=str(mirror)), preset="tiny", limit=50, progress=False
            ),
        )
        share = result.table("tail").rows[0][1]
        assert (
            isinstance(share, float)
            and result.finding == f"{share:.1%} of MNIST is beyond the cut."
        )
        assert (tmp_path / "tail.csv").exists() and (tmp_path / "report.html").exists()
        import torch

        from dgmood.scores.base import ScoreInput

        dark = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
        bright = torch.full((4, 1, 32, 32), 200, dtype=torch.uint8)
        labels = torch.full((4,), -1)
        score = make_score("dark-pixels").fit(ScoreInput({}, dark, labels))
        assert np.allclose(score.score(ScoreInput({}, bright, labels)), 1.0)
        assert np.allclose(score.score(ScoreInput({}, dark, labels)), 0.0)
    finally:
        _SCORES.pop("dark-pixels", None)
        _STUDIES.pop("tail", None)
