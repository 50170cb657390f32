"""The chicken grid: one CNN per cell, the post's numbers per cell."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgmood.config import DataConfig
from dgmood.data.loading import DataSources
from dgmood.models.classifiers.cnn import MNISTCNN, CNNConfig
from dgmood.presets import run_preset
from dgmood.runs import load_run
from dgmood.studies.base import StudyContext
from dgmood.studies.chicken_grid import (
    ChickenGrid,
    ChickenGridOptions,
    distance_to_post,
    grid_cells,
    grid_finding,
)


def test_cells_are_the_product_of_the_axes_and_change_the_config() -> None:
    options = ChickenGridOptions(
        steps=(10, 20), regularization=("none", "both"), optimizer=("sgd",), width=(0.5,)
    )
    cells = grid_cells(options)
    assert len(cells) == 4 and len({c.role for c in cells}) == 4
    config = cells[-1].apply(run_preset("cnn-plain", "cpu", "mnist"), dropout=0.25)
    assert isinstance(config.model, CNNConfig)
    assert config.model.batch_norm and config.model.dropout == 0.25
    assert config.model.channels == (16, 32, 64) and config.model.hidden_width == 64
    assert config.train.steps == 20 and config.train.optimizer == "sgd" and config.train.lr > 1e-3
    with pytest.raises(ValueError, match="width"):
        grid_cells(ChickenGridOptions(width=()))


def test_input_normalization_changes_what_the_first_conv_sees() -> None:
    torch.manual_seed(0)
    unit = MNISTCNN(CNNConfig(channels=(4,), hidden_width=8), (1, 8, 8))
    standardized = MNISTCNN(
        CNNConfig(channels=(4,), hidden_width=8, input_normalization="standardize"), (1, 8, 8)
    )
    standardized.load_state_dict(unit.state_dict())
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(standardized.features(x), unit.features((x - 0.1307) / 0.3081))
    with pytest.raises(ValueError, match="input_normalization"):
        MNISTCNN(CNNConfig(input_normalization="zca"), (1, 32, 32))  # type: ignore[arg-type]
    assert DataConfig().image_size == 32


def test_finding_picks_the_closest_accurate_cell() -> None:
    post = {0.99: 0.634, 0.95: 0.743, 0.75: 0.889}
    assert distance_to_post(post) == 0.0
    far = {"0.99": 0.0, "0.95": 0.0, "0.75": 0.0}
    records: list[dict[str, object]] = [
        {
            "cell": "inaccurate",
            "mnist_accuracy": 0.5,
            "distance_to_post": 0.0,
            "fashion_fractions": {str(k): v for k, v in post.items()},
            "highest_photo_confidence": 1.0,
        },
        {
            "cell": "accurate",
            "mnist_accuracy": 0.99,
            "distance_to_post": 0.8,
            "fashion_fractions": far,
            "highest_photo_confidence": 0.9,
        },
    ]
    assert "accurate (" in grid_finding(records) and "inaccurate" not in grid_finding(records)
    assert "No cell" in grid_finding(records[:1])


@pytest.mark.slow
def test_grid_end_to_end_with_architectures_and_test_time_scales(
    tmp_path: Path, mirror: Path
) -> None:
    ctx = StudyContext(
        out_dir=tmp_path,
        sources=DataSources(mirror=str(mirror)),
        preset="tiny",
        limit=200,
        progress=False,
    )
    options = ChickenGridOptions(
        classifier="cnn",
        steps=(15,),
        regularization=("none", "both"),
        architecture=("cnn", "mlp"),
        test_scale=(1.0, 255.0),
    )
    result = ChickenGrid(options).run(ctx)
    (table,) = result.tables
    assert len(table.rows) == 8  # 4 trained cells x 2 test-time scales
    cells = result.data["cells"]
    assert [(c["regularization"], c["architecture"], c["test_scale"]) for c in cells][:4] == [
        ("none", "cnn", 1.0),
        ("none", "cnn", 255.0),
        ("none", "mlp", 1.0),
        ("none", "mlp", 255.0),
    ]
    sources = DataSources(mirror=str(mirror))
    for cell in cells:
        fractions = [cell["fashion_fractions"][str(t)] for t in (0.99, 0.95, 0.75)]
        assert 0.0 <= fractions[0] <= fractions[1] <= fractions[2] <= 1.0
        assert 0.1 <= cell["highest_photo_confidence"] <= 1.0
        run = load_run(cell["run_dir"])
        convs = [m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert bool(convs) == (cell["architecture"] == "cnn")
        # independently: the model on the scaled [0, 1] pixels, straight through torch
        with torch.no_grad():
            fashion = sources.load_like("fashion-mnist", "test", run.config.data).head(200)
            mnist = sources.load_like("mnist", "test", run.config.data).head(200)
            scale = cell["test_scale"]
            probs = torch.softmax(run.model(fashion.images.float() / 255 * scale), dim=1)
            accuracy = run.model(mnist.images.float() / 255 * scale).argmax(1) == mnist.labels
        assert fractions[0] == pytest.approx(float((probs.max(1).values > 0.99).float().mean()))
        assert cell["mnist_accuracy"] == pytest.approx(float(accuracy.float().mean()))
    assert result.finding
