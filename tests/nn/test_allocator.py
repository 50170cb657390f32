"""The malloc lever: freed tensor memory is reused instead of page-faulted back in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dgmood.nn import allocator

# the minor page faults of one Glow scoring pass (cpu preset, batch 64) after two warm-up
# passes, first with glibc's defaults (they hand the activations back to the OS and fault
# them in again), then, in the same process, after tune_malloc(): malloc's settings can be
# changed once the process runs but not reset, so the default path is measured first
_PROBE = textwrap.dedent(
    """
    import resource, torch
    from dgmood.nn.allocator import tune_malloc
    from dgmood.models.registry import build_model
    from dgmood.presets import run_preset
    config = run_preset("glow", "cpu", "fashion-mnist")
    model = build_model(config.model, config.data).eval()
    x = torch.rand(64, 1, 32, 32)

    def faults_of_third_pass():
        with torch.no_grad():
            for _ in range(2):
                model.log_prob(x)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model.log_prob(x)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    default = faults_of_third_pass()
    applied = tune_malloc()
    tuned = faults_of_third_pass()
    print(int(applied), default, tuned)
    """
)
_PAGES_PER_MIB = 1024 * 1024 // 4096


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without the user's malloc settings (they turn the lever off)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for name in ("DGMOOD_MALLOC", "GLIBC_TUNABLES"):
        clean.pop(name, None)
    return {**clean, **extra}


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_tuned_malloc_reuses_freed_tensors_instead_of_faulting_them_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    applied, default_faults, tuned_faults = bool(int(out[0])), int(out[1]), int(out[2])
    assert default_faults > 20 * _PAGES_PER_MIB  # measured: ~67 MiB re-faulted per pass
    assert applied
    assert tuned_faults < _PAGES_PER_MIB  # the same heap blocks every pass


def test_user_settings_and_opt_out_leave_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGMOOD_MALLOC", "default")
    assert allocator.tune_malloc() is False
    monkeypatch.delenv("DGMOOD_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own glibc tunable
    assert allocator.tune_malloc() is False


# loaded by Python at start-up from PYTHONPATH: reports, when the process ends, whether the
# process that ran the console script had malloc tuned (mallopt called and accepted)
_SITECUSTOMIZE = textwrap.dedent(
    """
    import atexit, os

    def _report():
        from dgmood.nn.allocator import is_tuned
        with open(os.environ["DGMOOD_TEST_MALLOC_REPORT"], "w") as out:
            out.write("tuned" if is_tuned() else "default")

    atexit.register(_report)
    """
)


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_the_installed_dgmood_command_tunes_malloc(tmp_path: Path) -> None:
    """Defect: [project.scripts] called `app`, so only `python -m dgmood.cli.main` tuned."""
    script = Path(sys.executable).with_name("dgmood")
    if not script.exists():
        pytest.skip(f"dgmood is not installed next to {sys.executable} (pip install -e .)")
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    report = tmp_path / "malloc.txt"
    env = _clean_env(PYTHONPATH=str(tmp_path), DGMOOD_TEST_MALLOC_REPORT=str(report))
    # --help: the command's whole start-up (main, then typer), without importing torch
    result = subprocess.run([str(script), "--help"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert report.read_text() == "tuned"
    # the same command with the user's opt-out: the probe can tell the two apart
    subprocess.run(
        [str(script), "--help"],
        env={**env, "DGMOOD_MALLOC": "default"},
        check=True,
        capture_output=True,
    )
    assert report.read_text() == "default"
