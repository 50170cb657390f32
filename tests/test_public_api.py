"""The public API: ``dgmood``'s few names, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dgmood


def test_every_public_name_resolves_to_its_definition() -> None:
    for name in dgmood.__all__:
        value = getattr(dgmood, name)
        assert value is not None, name
        if name != "__version__":
            assert getattr(value, "__name__", name) == name, name
    assert dgmood.make_score("nll").name == "nll"  # built-in scores registered on first use
    assert dgmood.run_study is not None  # the built-in studies register on first use too
    from dgmood.studies.base import study_names

    assert "pairs" in study_names()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dgmood.nope  # noqa: B018


def test_importing_dgmood_stays_light() -> None:
    """``import dgmood`` (which the command runs first) loads no torch until a name is used."""
    code = (
        "import sys, dgmood; print('torch' in sys.modules); "
        "dgmood.run_preset; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
