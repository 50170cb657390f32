"""Histogram axes never hide data silently: values off the axis are counted in the legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dgmood.reporting import plots


def test_values_beyond_the_axis_are_counted_in_the_legend(tmp_path: Path, monkeypatch) -> None:
    labels: list[str] = []
    original = plots.Figure.subplots

    def spy(self, *args, **kwargs):  # record the legend labels the plot draws
        axes = original(self, *args, **kwargs)
        for ax in np.atleast_1d(axes):
            hist = ax.hist

            def recording_hist(*a, _hist=hist, **k):
                labels.append(k.get("label", ""))
                return _hist(*a, **k)

            ax.hist = recording_hist
        return axes

    monkeypatch.setattr(plots.Figure, "subplots", spy)
    rng = np.random.default_rng(0)
    in_set = rng.normal(3.0, 0.2, 5000)
    ood = np.concatenate([rng.normal(2.5, 0.2, 4990), np.full(10, 1e6)])  # 10 huge VAE-like values
    path = plots.plot_bpd_histograms({"in": in_set, "ood": ood}, tmp_path / "h.png")
    assert path.exists() and path.with_suffix(".svg").exists()
    # the ten 1e6 values are beyond the 99.9th percentile of the pooled 10,000: counted
    assert labels[1].endswith(" 10 above the axis)")
    assert labels[1].startswith("ood (median 2.5")
