from __future__ import annotations

import numpy as np
import pytest

from dgmood.studies import StudyContext, run_study


def test_decomposition_gaps_and_full_range_tiny(tiny_ctx: StudyContext) -> None:
    result = run_study("decomposition", tiny_ctx, train_limit=32)
    terms = {(r[0], r[1]): r for r in result.table("flow_terms").rows}
    gaps = result.table("flow_term_gaps").rows
    assert [g[0] for g in gaps] == ["density term log p(z)", "volume term log|det J|"]
    for term, ood, mean_gap, median_gap in gaps:
        assert ood == "mnist-test"
        assert mean_gap == pytest.approx(terms[term, ood][3] - terms[term, "fashion-mnist-test"][3])
        assert median_gap == pytest.approx(
            terms[term, ood][5] - terms[term, "fashion-mnist-test"][5]
        )
    # the two terms add up to log p(x): compare with the bits/dim table (D = 1024)
    bpd = {r[0]: r[3] for r in result.table("bits_per_dim").rows}
    for label in ("fashion-mnist-test", "mnist-test"):
        density = terms["density term log p(z)", label][3]
        log_px = density + terms["volume term log|det J|", label][3]
        # bits/dim = -(log p(x) + D log(1/256)) / (D ln 2) for inputs in [-0.5, 0.5)
        assert bpd[label] == pytest.approx(
            -(log_px - 1024 * np.log(256.0)) / (1024 * np.log(2.0)), rel=1e-4
        )
    assert "nats in log p(z)" in result.finding
    assert (tiny_ctx.out_dir / "flow_terms.png").exists()
    assert (tiny_ctx.out_dir / "flow_terms.svg").exists()


def test_decomposition_refuses_a_model_without_terms(tiny_ctx: StudyContext) -> None:
    with pytest.raises(ValueError, match="vae.*lacks log-det-decomposition.*glow"):
        run_study("decomposition", tiny_ctx, model="vae")
    assert not (tiny_ctx.out_dir / "runs").exists()
