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
    assert "nats in density term log p(z)" in result.finding
    assert (tiny_ctx.out_dir / "flow_terms.png").exists()
    assert (tiny_ctx.out_dir / "flow_terms.svg").exists()


def test_decomposition_refuses_a_model_without_terms(tiny_ctx: StudyContext) -> None:
    with pytest.raises(ValueError, match="pixelcnnpp.*lacks term-decomposition.*diffusion"):
        run_study("decomposition", tiny_ctx, model="pixelcnnpp")
    assert not (tiny_ctx.out_dir / "runs").exists()


@pytest.mark.parametrize(
    ("model", "terms"),
    [
        ("vae", {"reconstruction E_q log p(x|z)": 1.0, "KL(q(z|x) || p(z))": -1.0}),
        (
            "diffusion",
            {
                "prior term -KL(q(z_1|x) || p(z_1))": 1.0,
                "diffusion term -L_infinity(x)": 1.0,
                "reconstruction term log p(x|z_0)": 1.0,
            },
        ),
    ],
)
def test_a_vae_and_a_diffusion_model_decompose_through_their_family_spec(
    tiny_ctx: StudyContext, model: str, terms: dict[str, float]
) -> None:
    """The same study on the terms each family's spec names: they add up (with their signs)
    to the log mass behind the bits/dim table, and each gap is that term's contribution."""
    result = run_study("decomposition", tiny_ctx, model=model, train_limit=32)
    table = {(r[0], r[1]): r for r in result.table("flow_terms").rows}
    assert {r[0] for r in result.table("flow_terms").rows} == set(terms)
    bpd = {r[0]: r[3] for r in result.table("bits_per_dim").rows}
    for label in ("fashion-mnist-test", "mnist-test"):
        log_mass = sum(sign * table[term, label][3] for term, sign in terms.items())
        # discrete models: bits/dim = -log P(x) / (D ln 2), D = 1024
        assert bpd[label] == pytest.approx(-log_mass / (1024 * np.log(2.0)), rel=1e-4)
    for term, ood, mean_gap, _ in result.table("flow_term_gaps").rows:
        expected = terms[term] * (table[term, ood][3] - table[term, "fashion-mnist-test"][3])
        assert mean_gap == pytest.approx(expected)
    assert "(mean gaps; the largest: " in result.finding
