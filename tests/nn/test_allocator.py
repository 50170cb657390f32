"""The malloc lever: freed tensor memory is reused instead of page-faulted back in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from dgmood.nn import allocator

# the minor page faults of one Glow scoring pass (cpu preset, batch 64) after two warm-up
# passes: glibc's defaults hand the activations back to the OS and fault them in again
_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from dgmood.nn.allocator import tune_malloc
    applied = tune_malloc() if sys.argv[1] == "tune" else False
    from dgmood.models.registry import build_model
    from dgmood.presets import run_preset
    config = run_preset("glow", "cpu", "fashion-mnist")
    model = build_model(config.model, config.data).eval()
    x = torch.rand(64, 1, 32, 32)
    with torch.no_grad():
        for _ in range(2):
            model.log_prob(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model.log_prob(x)
    print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)
_PAGES_PER_MIB = 1024 * 1024 // 4096


def _probe(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("DGMOOD_MALLOC", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return bool(int(out[0])), int(out[1])


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_tuned_malloc_reuses_freed_tensors_instead_of_faulting_them_back() -> None:
    applied, faults = _probe("tune")
    assert applied
    assert faults < _PAGES_PER_MIB  # the same heap blocks every pass
    _, default_faults = _probe("default")
    assert default_faults > 20 * _PAGES_PER_MIB  # measured: ~67 MiB re-faulted per pass


def test_user_settings_and_opt_out_leave_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGMOOD_MALLOC", "default")
    assert allocator.tune_malloc() is False
    monkeypatch.delenv("DGMOOD_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own glibc tunable
    assert allocator.tune_malloc() is False
