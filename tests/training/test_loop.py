"""The training loop end to end on real FashionMNIST: runs, resumes exactly, fails safely."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from dgmood.config import DataConfig, ExecutionConfig, ModelConfig, RunConfig, TrainConfig
from dgmood.models.base import DensityModel, FamilySpec, InputSpec
from dgmood.models.flows import MultiscaleFlow
from dgmood.models.registry import register_family, resolve_model
from dgmood.runs import Checkpoint, load_checkpoint, read_metrics, save_checkpoint
from dgmood.training import RunDirError, TrainingDivergedError, load_run, train
from dgmood.training.loop import (
    DataSources,
    batch_indices,
    mutate_pixels,
    restore_rng_state,
    rng_state,
)

TINY_DATA = DataConfig(dataset="fashion-mnist", train_limit=512, val_size=128)


def tiny_run(steps: int = 8, **train_overrides: object) -> RunConfig:
    train_cfg = TrainConfig(
        steps=steps,
        batch_size=16,
        warmup_steps=2,
        eval_every=4,
        checkpoint_every=4,
        log_every=2,
        **train_overrides,
    )
    return RunConfig(model=resolve_model("glow", "tiny"), data=TINY_DATA, train=train_cfg)


@pytest.fixture
def sources(mirror: Path, data_dir: Path) -> DataSources:
    return DataSources(data_dir=str(data_dir), mirror=str(mirror))


@pytest.mark.slow
def test_tiny_glow_trains_and_improves_on_real_data(tmp_path: Path, sources: DataSources) -> None:
    config = tiny_run(steps=30)
    result = train(config, tmp_path / "run", sources=sources, progress=False)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < losses[0] - 0.3  # bits/dim goes down
    assert {"config.yaml", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl"} <= {
        p.name for p in (tmp_path / "run").iterdir()
    }
    loaded = load_run(tmp_path / "run")
    assert loaded.step == 30 and loaded.config == config
    x = torch.rand(4, 1, 32, 32) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.log_prob(x), result.model.log_prob(x))


def test_resume_is_exact(tmp_path: Path, sources: DataSources) -> None:
    config = tiny_run(steps=8)
    train(config, tmp_path / "straight", sources=sources, progress=False)
    half = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=4))
    train(half, tmp_path / "resumed", sources=sources, progress=False)
    train(config, tmp_path / "resumed", sources=sources, progress=False, resume=True)
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed") if "loss" in r]
    assert steps == sorted(set(steps))  # no duplicated log lines after resuming


def test_existing_run_dir_is_not_overwritten(tmp_path: Path, sources: DataSources) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError, match="--resume"):
        train(tiny_run(), run_dir, sources=sources, progress=False)
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]


@dataclass(frozen=True)
class ExplodingConfig(ModelConfig):
    family: ClassVar[str] = "test-exploding"
    explode_at: int = 3  # optimiser step whose loss is NaN


class ExplodingDensity(DensityModel):
    """A real (factorised Gaussian) density whose loss turns NaN after a few steps."""

    def __init__(self, explode_at: int) -> None:
        super().__init__()
        self.input_spec = InputSpec(shape=(1, 32, 32))
        self.mean = nn.Parameter(torch.zeros(1))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.explode_at = explode_at

    def log_prob_terms(self, x: Tensor) -> dict[str, Tensor]:
        if self.training:
            self.calls += 1
        log_prob = -0.5 * ((x - self.mean) ** 2).flatten(1).sum(1)
        if self.training and int(self.calls) > self.explode_at + 1:  # +1: the init pass
            log_prob = log_prob * float("nan")
        return {"log_prob": log_prob}


def _build_exploding(config: ExplodingConfig, data: DataConfig) -> ExplodingDensity:
    return ExplodingDensity(config.explode_at)


register_family(
    FamilySpec(
        name="test-exploding",
        config=ExplodingConfig,
        build=_build_exploding,
        kind="density",
        presets={"tiny": ExplodingConfig(), "cpu": ExplodingConfig()},
    )
)


def test_nan_loss_stops_with_last_good_checkpoint_kept(
    tmp_path: Path, sources: DataSources
) -> None:
    config = RunConfig(
        model=ExplodingConfig(explode_at=5),
        data=TINY_DATA,
        train=TrainConfig(
            steps=20, batch_size=16, checkpoint_every=4, eval_every=0, log_every=1, warmup_steps=0
        ),
    )
    with pytest.raises(TrainingDivergedError, match="step 5.*last good checkpoint \\(step 4\\)"):
        train(config, tmp_path / "run", sources=sources, progress=False)
    assert load_run(tmp_path / "run").step == 4
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert torch.isfinite(weights["mean"]).all()


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    a = batch_indices(100, 10, seed=1, step=13)
    assert torch.equal(a, batch_indices(100, 10, seed=1, step=13))
    epoch = torch.cat([batch_indices(100, 10, 1, s) for s in range(10)])
    assert sorted(epoch.tolist()) == list(range(100))  # one epoch visits every image once
    assert not torch.equal(a, batch_indices(100, 10, seed=2, step=13))


def test_ctrl_c_during_a_checkpoint_is_held_until_it_is_written(tmp_path: Path) -> None:
    import os
    import signal

    from dgmood.io import deferred_interrupts

    path = tmp_path / "state.txt"
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        path.write_text("written after the signal arrived")
    assert path.read_text() == "written after the signal arrived"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("light_first", [False, True])
def test_memory_light_can_be_switched_when_resuming(
    tmp_path: Path, sources: DataSources, light_first: bool
) -> None:
    """An execution option: resuming with it switched continues the same run."""
    config = tiny_run(steps=8)

    def with_light(cfg: RunConfig, light: bool) -> RunConfig:
        return dataclasses.replace(
            cfg, execution=dataclasses.replace(cfg.execution, memory_light=light)
        )

    half = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=4))
    straight = train(config, tmp_path / "straight", sources=sources, progress=False)
    train(with_light(half, light_first), tmp_path / "run", sources=sources, progress=False)
    resumed = train(
        with_light(config, not light_first),
        tmp_path / "run",
        sources=sources,
        progress=False,
        resume=True,
    )
    assert isinstance(resumed.model, MultiscaleFlow)
    assert all(level.memory_light is not light_first for level in resumed.model.levels)
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    reference = load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in reference.items()}
    # recomputed activations carry the inverse's float32 round-off: equal to round-off
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)

    def losses(history: list[dict[str, float]]) -> list[float]:
        return [r["loss"] for r in history if "loss" in r and r["step"] > 4]

    assert len(losses(resumed.history)) == 2  # steps 6 and 8 (log_every=2)
    assert losses(resumed.history) == pytest.approx(losses(straight.history), rel=1e-5)


def test_memory_light_is_refused_for_models_without_it(
    tmp_path: Path, sources: DataSources
) -> None:
    config = RunConfig(
        model=resolve_model("vae", "tiny"),
        data=TINY_DATA,
        train=TrainConfig(steps=2, batch_size=16),
        execution=ExecutionConfig(memory_light=True),
    )
    with pytest.raises(ValueError, match="vae.*lacks memory-light.*execution.memory_light.*glow"):
        train(config, tmp_path / "run", sources=sources, progress=False)
    assert not (tmp_path / "run").exists()


def _checkpoint_round_trip(run_dir: Path, state: dict[str, object]) -> dict[str, object]:
    """``state`` as a resume reads it back from a checkpoint file."""
    run_dir.mkdir()
    save_checkpoint(run_dir, tiny_run(), Checkpoint(1, {"w": torch.zeros(1)}, dict(state)))
    return load_checkpoint(run_dir).training_state


def test_rng_states_survive_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = rng_state([])
    assert set(state) == {"torch_rng"}  # no CUDA device in use: no CUDA state to keep
    expected = torch.rand(4)
    restore_rng_state(_checkpoint_round_trip(tmp_path / "run", state), [])
    assert torch.equal(torch.rand(4), expected)


def test_a_checkpoint_without_cuda_states_resumes_on_a_gpu(tmp_path: Path) -> None:
    """Checkpoints written on a CPU, or before CUDA states were saved, leave CUDA as seeded."""
    torch.manual_seed(3)
    state = {"torch_rng": torch.get_rng_state()}  # what every such checkpoint holds
    expected = torch.rand(4)
    # no CUDA state to set, so no CUDA call is made even with a CUDA device given
    restore_rng_state(_checkpoint_round_trip(tmp_path / "run", state), [torch.device("cuda", 0)])
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_states_survive_a_checkpoint(tmp_path: Path) -> None:
    device = torch.device("cuda", 0)
    torch.manual_seed(3)
    state = rng_state([device])
    assert len(state["cuda_rng"]) == 1
    expected = torch.rand(4, device=device), torch.rand(4)
    restore_rng_state(_checkpoint_round_trip(tmp_path / "run", state), [device])
    assert torch.equal(torch.rand(4, device=device), expected[0])
    assert torch.equal(torch.rand(4), expected[1])
    # a GPU run resumed on a CPU restores the CPU state and skips the device's
    restore_rng_state(state, [])
    assert torch.equal(torch.rand(4), expected[1])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_takes_the_same_steps(tmp_path: Path, sources: DataSources) -> None:
    """train.compile changes how a step runs, not the run: same losses and weights."""
    config = tiny_run(steps=4)
    compiled = dataclasses.replace(
        config, execution=dataclasses.replace(config.execution, compile=True)
    )
    eager = train(config, tmp_path / "eager", sources=sources, progress=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    fast = train(compiled, tmp_path / "compiled", sources=sources, progress=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile

    def losses(history: list[dict[str, float]]) -> list[float]:
        return [r["loss"] for r in history if "loss" in r]

    assert len(losses(fast.history)) == 2
    # fused kernels sum in another order: equal to float32 round-off, amplified by Adam
    assert losses(fast.history) == pytest.approx(losses(eager.history), rel=1e-4)
    weights = load_file(str(tmp_path / "compiled" / "model.safetensors"))
    reference = load_file(str(tmp_path / "eager" / "model.safetensors"))
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=1e-3, atol=1e-4, msg=key)


def test_a_finished_run_is_reused_whatever_its_execution_settings(
    tmp_path: Path, sources: DataSources
) -> None:
    """Threads, precision, channels-last, compile, memory-light, device or a budget decide
    how steps run, not what is trained: none of them makes a finished run unusable (before
    the split, changing train.num_threads refused the finished run with RunDirError)."""
    from dgmood.config import replace_path
    from dgmood.training.launch import train_or_reuse

    config = tiny_run(steps=4)
    assert train_or_reuse(config, tmp_path / "run", sources=sources, progress=False)
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    for key, value in [
        ("execution.num_threads", "1"),
        ("execution.channels_last", "false"),
        ("execution.memory_light", "true"),
        ("execution.device", "cpu"),
        ("execution.budget_minutes", "30"),
    ]:
        again = replace_path(config, key, value)
        assert not train_or_reuse(again, tmp_path / "run", sources=sources, progress=False), key
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
    # what is trained still decides: a different identity is never trained over the run
    with pytest.raises(RunDirError, match="already exists"):
        train_or_reuse(replace_path(config, "train.lr", "0.5"), tmp_path / "run", sources=sources)


def test_background_run_validates_on_clean_images(tmp_path: Path, sources: DataSources) -> None:
    """A likelihood-ratio background run trains on mutated images; its val_bpd must be the
    bits/dim of the *clean* validation images, comparable with the main run's."""
    from dgmood.inference import score_images

    config = tiny_run(steps=4, mutation_rate=0.5, augment_flip=True)
    train(config, tmp_path / "background", sources=sources, progress=False)
    run = load_run(tmp_path / "background")
    (last,) = [
        r for r in read_metrics(tmp_path / "background") if r.get("step") == 4 and "val_bpd" in r
    ]
    validation = sources.load_like("fashion-mnist", "test", config.data).head(config.data.val_size)
    clean = score_images(run.density_model(), validation.images)["bits_per_dim"]
    mutated = score_images(
        run.density_model(),
        mutate_pixels(validation.images, 0.5, torch.Generator().manual_seed(0)),
    )["bits_per_dim"]
    assert mutated.mean() > clean.mean() + 0.1  # mutation is visible at this scale
    # same images, other dequantization draws: equal up to the noise of a 128-image mean
    assert last["val_bpd"] == pytest.approx(float(clean.mean()), abs=0.02)
