"""The chicken post through the CLI: predict on a real photo, and the whole reproduction (tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data
from typer.testing import CliRunner

from dgmood.cli.main import app
from tests.run_dirs import find_run

runner = CliRunner()


@pytest.mark.slow
def test_reproduce_chicken_tiny_then_predict_a_photo(tmp_path: Path, mirror: Path) -> None:
    out = tmp_path / "chicken"
    result = runner.invoke(
        app,
        [
            "reproduce",
            "chicken",
            "--preset",
            "tiny",
            "--steps",
            "20",
            "--limit",
            "300",
            "--out-dir",
            str(out),
            "--mirror",
            str(mirror),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "result.json").read_text())
    scores = {m["score"] for m in results["data"]["metrics"]}
    vae_scores = {"nll", "typicality", "dose"} | {
        f"complexity-{codec}" for codec in ("png", "jp2", "webp", "jxl")
    }
    assert scores == {"max-softmax", "energy", "odin", "mahalanobis"} | {
        f"vae {name}" for name in vae_scores
    }
    assert [p["name"] for p in results["data"]["photos"]] == [
        "chelsea",
        "astronaut",
        "coffee",
        "rocket",
        "camera",
    ]
    for p in results["data"]["photos"]:
        assert abs(sum(p["probabilities"]) - 1) < 1e-5
    for figure in (
        "confidence_barcode.png",
        "sorted_elbo.png",
        "reconstructions.png",
        "probabilities_chelsea.png",
    ):
        assert (out / figure).stat().st_size > 5_000, figure

    photo = tmp_path / "cat.jpg"
    Image.fromarray(skimage_data.chelsea()).save(photo)
    classifier = find_run(out / "runs", "cnn-plain-tiny-mnist")
    vae = find_run(out / "runs", "vae-bernoulli-tiny-mnist")
    result = runner.invoke(
        app,
        ["predict", str(classifier), str(photo), "--plot", str(tmp_path / "fig")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "cat.jpg" in result.output
    assert (tmp_path / "fig" / "cat_probabilities.png").exists()

    # one reject rule per detector: predict --detector applies the rule the study reported
    result = runner.invoke(
        app,
        ["predict", str(classifier), str(photo), "--detector", str(vae), "--mirror", str(mirror)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    reported = results["data"]["reject_rule"]
    assert f"nll > {reported['threshold']:.4g} " in result.output, result.output
    assert len(list((vae / "thresholds").glob("*.json"))) == 1  # stored once

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text")
    result = runner.invoke(app, ["predict", str(classifier), str(not_an_image)])
    assert result.exit_code == 2 and "notes.png" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["predict", str(vae), str(photo)])
    assert result.exit_code == 2 and "not a classifier" in result.output
    result = runner.invoke(app, ["evaluate", str(classifier), "--ood", "mnist"])
    assert result.exit_code == 2 and "not a density model" in result.output


def test_predict_needs_a_run_dir(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(image)
    result = runner.invoke(app, ["predict", str(tmp_path / "norun"), str(image)])
    assert result.exit_code == 2 and "dgmood train" in result.output
