"""The README's Python example runs as written (with the test data mirror)."""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path

import pytest


def test_readme_python_blocks_import_only_the_public_api() -> None:
    """The README's examples use ``dgmood``'s public names, never its inner modules."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    imported = re.findall(r"^(?:from (\S+) import|import (\S+))", "\n".join(blocks), flags=re.M)
    ours = {a or b for a, b in imported if (a or b).startswith("dgmood")}
    assert ours == {"dgmood"}


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
        exec(compile(blocks[2], "README.md", "exec"), {})  # noqa: S102
        exec(compile(blocks[3], "README.md", "exec"), {})  # noqa: S102
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


@pytest.mark.slow
def test_readme_family_example_trains_scores_and_lists_like_a_built_in(
    tmp_path: Path, mirror: Path
) -> None:
    """The "how to add a model family" example: one register call, and the family trains,
    is listed, is found by capability and scores exactly as an independent computation."""
    import numpy as np
    from scipy import stats as scipy_stats
    from typer.testing import CliRunner

    import dgmood
    from dgmood import config as config_module
    from dgmood.cli.main import app
    from dgmood.models import registry

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    module = tmp_path / "readme_family.py"  # a user's own module, imported as they would
    module.write_text(blocks[1])
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module("readme_family")
        listed = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
        assert "pixel-gauss" in listed.output and "exact-likelihood" in listed.output
        assert "pixel-gauss" in registry.models_with("density", dgmood.Capability.EXACT_LIKELIHOOD)
        sources = dgmood.DataSources(mirror=str(mirror))
        config = dgmood.run_preset("pixel-gauss", "tiny", "fashion-mnist")
        assert config.train.lr == 1e-3 and dgmood.run_preset("pixel-gauss", "cpu").train.lr == 1e-2
        dgmood.train(config, tmp_path / "run", sources=sources, progress=False)
        run = dgmood.load_run(tmp_path / "run")
        images = sources.load_like("mnist", "test", run.config.data).images[:16]
        bpd = dgmood.score_images(run.model, images, dequantization="center")["bits_per_dim"]
        # independently: scipy's normal log-density at the bin centres, in float64
        model = run.model
        mean = model.mean.detach().double().numpy()
        std = np.maximum(np.exp(model.log_std.detach().double().numpy()), 1e-3)
        x = (images.double().numpy() + 0.5) / 256 - 0.5
        log_px = scipy_stats.norm.logpdf(x, mean, std).reshape(16, -1).sum(1)
        dims = 32 * 32
        expected = -(log_px - dims * np.log(256)) / (dims * np.log(2))
        np.testing.assert_allclose(bpd, expected, rtol=1e-5)
        assert dgmood.make_score("nll").applies_to(run)
        assert not dgmood.make_score("likelihood-regret").applies_to(run)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("readme_family", None)
        registry._FAMILIES.pop("pixel-gauss", None)
        config_module._MODEL_CONFIGS.pop("pixel-gauss", None)


@pytest.mark.slow
def test_readme_dataset_example_loads_everywhere_a_dataset_name_does(
    tmp_path: Path, mirror: Path
) -> None:
    """The "how to add a dataset" example: one register call, and the name loads in a run's
    format, is listed by `dgmood datasets`, and a study scores it as an OOD set."""
    import numpy as np
    from typer.testing import CliRunner

    import dgmood
    from dgmood.cli.main import app
    from dgmood.data import registry

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if "register_dataset" in b]
    module = tmp_path / "readme_dataset.py"
    module.write_text(block)
    data_dir = tmp_path / "data"
    (data_dir / "sketches").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 24)):
        images = (rng.random((n, 28, 28)) < 0.1).astype(np.uint8) * 255  # sparse strokes
        np.savez(data_dir / "sketches" / f"{split}.npz", images=images, labels=np.arange(n) % 10)
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module("readme_dataset")
        raw = dgmood.load_dataset("sketches", "test", data_dir=str(data_dir))
        assert raw.images.shape == (24, 1, 28, 28) and raw.labels.tolist()[:3] == [0, 1, 2]
        stored = np.load(data_dir / "sketches" / "test.npz")["images"]
        like = dgmood.run_preset("glow", "tiny", "fashion-mnist").data
        sources = dgmood.DataSources(data_dir=str(data_dir), mirror=str(mirror))
        padded = sources.load_like("sketches", "test", like)  # 28 -> 32 with a zero border
        assert padded.images.shape == (24, 1, 32, 32)
        assert np.array_equal(padded.images[:, 0, 2:30, 2:30].numpy(), stored)
        assert int(padded.images[:, :, :2].sum()) == 0
        listed = CliRunner().invoke(app, ["datasets"])
        assert "sketches" in listed.output
        result = dgmood.run_study(
            "fashion-mnist",
            dgmood.StudyContext(tmp_path / "out", sources, preset="tiny", steps=2, limit=24,
                                progress=False),
            ood=("sketches",), train_limit=24, scores=("nll",), samples=0,
        )  # fmt: skip
        assert "sketches-test" in str(result.table("bits_per_dim").rows)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("readme_dataset", None)
        registry.DATASETS.pop("sketches", None)
