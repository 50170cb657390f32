"""Frozen, typed configuration for every run; saved as ``config.yaml`` next to each checkpoint.

A run is ``RunConfig(model=<family config>, data=DataConfig, train=TrainConfig,
execution=ExecutionConfig)``: the first three are what is trained (the run's identity, which
decides reuse and resume), the last how its steps execute. Model
configs are registered by family name when their family is (``dgmood.models.registry``
calls :func:`register_model_config`; importing :mod:`dgmood.models` registers the built-in
families), so that YAML files round-trip: ``RunConfig.from_dict(cfg.to_dict()) == cfg``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from dgmood.io import atomic_write_text

T = TypeVar("T")

_MODEL_CONFIGS: dict[str, type[ModelConfig]] = {}


class ModelConfig:
    """Base of every model-family config (a frozen dataclass with a ``family`` name).

    Registering the family (``dgmood.models.registry.register_family``) registers the
    config class too, so that a stored config can name its family and be rebuilt
    (:meth:`RunConfig.from_dict`). Numbers are checked by name: sizes (``*channels``,
    ``*width``, ``n_*steps``, ...) >= 1, ``dropout`` in [0, 1), ``n_bits`` in 1..8, any
    other number >= 0 unless its field says ``metadata={"signed": True}``.
    """

    family: ClassVar[str] = ""  # the name its family is registered under

    def __post_init__(self) -> None:
        # the model builders name the valid choices of their Literal fields themselves
        _check_types(self, "model", literals=False)
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            for item in values:
                if isinstance(item, bool) or not isinstance(item, int | float):
                    continue
                if f.name in _PROBABILITIES:
                    _require(0.0 <= item < 1.0, "model", f.name, "in [0, 1)", value)
                elif f.name == "n_bits":
                    _require(1 <= item <= 8, "model", f.name, "in 1..8", value)
                elif _is_size(f.name):
                    _require(item >= 1, "model", f.name, ">= 1", value)
                elif not f.metadata.get("signed", False):
                    _require(item >= 0, "model", f.name, ">= 0", value)


def register_model_config(cls: type[ModelConfig]) -> None:
    """Make stored configs of family ``cls.family`` loadable (called when a family registers)."""
    if not cls.family:
        raise ValueError(f"{cls.__name__} has no family name")
    _MODEL_CONFIGS[cls.family] = cls


def model_config_class(family: str) -> type[ModelConfig]:
    """The config class of a registered model family."""
    if family not in _MODEL_CONFIGS:
        hint = "" if _MODEL_CONFIGS else " (families register when dgmood.models is imported)"
        raise ValueError(f"unknown model family {family!r}; known: {sorted(_MODEL_CONFIGS)}{hint}")
    return _MODEL_CONFIGS[family]


# model-config fields that count or size something, so 0 would build an empty network
_SIZE_WORDS = ("channels", "width", "dim", "filters", "levels", "steps", "blocks", "resnet")
_SIZE_NAMES = frozenset({"n_logistic_mix", "n_samples", "num_classes"})
_PROBABILITIES = frozenset({"dropout"})


def _is_size(name: str) -> bool:
    return name in _SIZE_NAMES or any(word in name for word in _SIZE_WORDS)


def _require(ok: bool, section: str, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{section}.{name} must be {rule}, got {value!r}")


def _check_types(obj: Any, section: str, literals: bool = True) -> None:
    """Every field holds its declared type (a Python caller bypasses YAML's coercion).

    ``literals=False`` leaves choices (``Literal``) to the code that uses them.
    """
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, tp = getattr(obj, f.name), hints[f.name]
        if not literals and typing.get_origin(tp) is typing.Literal:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{section}.{f.name} must be finite, got {value!r}")
        try:
            ok = _coerce(tp, value) == value
        except (ValueError, TypeError) as error:
            raise ValueError(f"{section}.{f.name}: {error}") from None
        if not ok or (tp is int and isinstance(value, bool)):
            raise ValueError(f"{section}.{f.name}: expected {tp}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"  # registry name, see `dgmood datasets`
    image_size: int = 32  # side in pixels; 28x28 sets are zero-padded by 2 on each side
    channels: int = 1  # 1 or 3; converting between them is explicit (gray->rgb repeats)
    upscale: Literal["pad", "resize"] = "pad"  # how a smaller image (28x28) reaches image_size
    train_split: str = "train"  # split used for training
    val_split: str = "test"  # split used for periodic validation
    val_size: int = 2000  # images of val_split used for validation during training (0 = all)
    train_limit: int = 0  # use only the first N training images (0 = all); for tiny runs

    def __post_init__(self) -> None:
        _check_types(self, "data")
        _require(self.image_size >= 1, "data", "image_size", ">= 1", self.image_size)
        _require(self.channels in (1, 3), "data", "channels", "1 or 3", self.channels)
        _require(self.val_size >= 0, "data", "val_size", ">= 0", self.val_size)
        _require(self.train_limit >= 0, "data", "train_limit", ">= 0", self.train_limit)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimiser steps
    batch_size: int = 64  # images per step
    optimizer: Literal["adam", "adamax", "sgd"] = "adam"
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 200  # linear warm-up from 0 to lr
    weight_decay: float = 0.0
    # probability that each uint8 sub-pixel of a training batch is replaced by a uniform random
    # level in 0..255, fresh per batch (a likelihood-ratio background model; 0 = off)
    mutation_rate: float = 0.0
    grad_clip: float = 50.0  # max global grad norm (0 = off)
    seed: int = 0  # seeds parameters, data order and dequantization noise
    eval_every: int = 500  # validate every N steps (0 = only at the end, < 0 = never)
    checkpoint_every: int = 500  # write a resumable checkpoint every N steps (0 = at the end)
    log_every: int = 20  # steps between metric log lines
    augment_flip: bool = False  # random horizontal flips (Glow uses none on MNIST-likes)

    def __post_init__(self) -> None:
        _check_types(self, "train")
        for name in ("steps", "batch_size", "log_every"):
            _require(getattr(self, name) >= 1, "train", name, ">= 1", getattr(self, name))
        for name in ("warmup_steps", "seed", "checkpoint_every"):
            _require(getattr(self, name) >= 0, "train", name, ">= 0", getattr(self, name))
        _require(self.lr > 0, "train", "lr", "> 0", self.lr)
        _require(self.weight_decay >= 0, "train", "weight_decay", ">= 0", self.weight_decay)
        _require(self.grad_clip >= 0, "train", "grad_clip", ">= 0 (0 = off)", self.grad_clip)


@dataclass(frozen=True)
class ExecutionConfig:
    """How a run's steps execute: chosen per invocation, never part of what is trained.

    Changing any of these neither makes a finished run unusable nor blocks resuming it; the
    values of the latest invocation are stored in ``config.yaml`` for the record. What is
    trained (and so decides reuse and resume) is the rest of the config:
    :meth:`RunConfig.identity`.
    """

    device: str = ""  # torch device ("" = cuda if available, else cpu)
    num_threads: int = 0  # torch intra-op threads (0 = torch default)
    channels_last: bool = True  # NHWC memory format: ~1.25x faster convs on CPU
    # bf16 autocast of the networks (flows keep 1x1 convs, log-dets and priors in fp32);
    # "auto" = bf16 where the CPU/GPU has native bf16, fp32 elsewhere; see docs/RESULTS.md, Speed
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # flows (Glow, RealNVP): recompute activations from outputs in backward instead of
    # storing them; same gradients to round-off, activation memory flat in depth, ~1.5-2x
    # the step time
    memory_light: bool = False
    # torch.compile the training loss (forward + backward): minutes of compilation before the
    # first step (seconds with a warm cache), then PixelCNN++ trains 1.25-1.5x faster on CPU
    # (docs/RESULTS.md, Speed); pays for long runs
    compile: bool = False
    budget_minutes: float = 0.0  # stop with a checkpoint after this wall time (0 = no limit)

    def __post_init__(self) -> None:
        _check_types(self, "execution")
        _require(self.num_threads >= 0, "execution", "num_threads", ">= 0", self.num_threads)
        _require(
            self.budget_minutes >= 0, "execution", "budget_minutes", ">= 0", self.budget_minutes
        )


# keys that moved to another section (old -> new): a stored config that has the old one still
# loads, with the value in its new place, since run directories outlive versions of dgmood
_MOVED_KEYS = {
    "model.memory_light": "execution.memory_light",
    "train.memory_light": "execution.memory_light",
    **{
        f"train.{name}": f"execution.{name}"
        for name in ("num_threads", "channels_last", "precision", "compile", "budget_minutes")
    },
}


def _move_old_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run config mapping with every moved key in its new section."""
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for old, new in _MOVED_KEYS.items():
        old_section, old_key = old.split(".")
        new_section, new_key = new.split(".")
        if not isinstance(data.get(old_section), dict) or old_key not in data[old_section]:
            continue
        value = data[old_section].pop(old_key)
        target = data.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # the malformed section is reported by the reader of that section
        if new_key in target and target[new_key] != value:
            raise ValueError(
                f"{old}={value!r} and {new}={target[new_key]!r} disagree; {old} is an "
                f"older name of {new}: keep only {new}"
            )
        target[new_key] = value
    return data


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def dataclass_to_dict(obj: Any) -> Any:
    """Nested dataclass -> plain dict/list/scalars, tuples as lists, families tagged."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if isinstance(obj, ModelConfig):
            out["family"] = type(obj).family
        for f in fields(obj):
            out[f.name] = dataclass_to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple | list):
        return [dataclass_to_dict(v) for v in obj]
    return obj


def _non_default_fields(obj: Any) -> dict[str, Any]:
    """``dataclass_to_dict(obj)`` without the fields that hold their default value."""
    out = dataclass_to_dict(obj)
    for f in fields(obj):
        if f.default is not dataclasses.MISSING and getattr(obj, f.name) == f.default:
            out.pop(f.name)
    return dict(out)


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        return dataclass_from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if isinstance(value, str | int | float | bool):
                value = [value]  # `-o ood=mnist` means the one-element tuple, not its letters
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(members[0], value) if len(members) == 1 else value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "3e-4" as a string
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp in (int, bool, str) and not isinstance(value, tp):
        raise ValueError(f"expected {tp.__name__}, got {value!r}")
    return value


def dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with a clear message."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known - {"family"}
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(known)}"
        )
    kwargs = {}
    for key, value in data.items():
        if key in known:
            try:
                kwargs[key] = _coerce(hints[key], value)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{cls.__name__}.{key}: {error}") from None
    return cls(**kwargs)


@dataclass(frozen=True)
class RunConfig:
    """A run: what is trained (``model``, ``data``, ``train``: its identity) and how its
    steps execute (``execution``)."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""  # name of the preset this config started from, for the record
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = dataclass_to_dict(self)
        return result

    def identity(self) -> dict[str, Any]:
        """What is trained: model, data and training config, each field that differs from
        its default. Two configs with the same identity train the same run, whatever their
        ``execution`` or preset name; a field added later with a default that keeps the old
        behaviour leaves every earlier run's identity (and hash) as it was."""
        return {
            "model": _non_default_fields(self.model),
            "data": _non_default_fields(self.data),
            "train": _non_default_fields(self.train),
        }

    def identity_hash(self, length: int = 12) -> str:
        """A content hash of :meth:`identity` (hex), the name studies find runs by."""
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:length]

    def same_run(self, other: RunConfig) -> bool:
        """Whether ``other`` trains the same run (equal identities)."""
        return self.identity() == other.identity()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise ValueError("a run config is a mapping with a 'model' section (and data, train)")
        data = _move_old_keys(data)
        model_data = dict(data["model"])
        family = model_data.pop("family", None)
        if family is None:
            raise ValueError("model config needs a 'family' key (e.g. glow, pixelcnnpp, vae, cnn)")
        model = dataclass_from_dict(model_config_class(family), model_data)
        return cls(
            model=model,
            data=dataclass_from_dict(DataConfig, data.get("data", {})),
            train=dataclass_from_dict(TrainConfig, data.get("train", {})),
            preset=data.get("preset", ""),
            execution=dataclass_from_dict(ExecutionConfig, data.get("execution", {})),
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> RunConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"not valid YAML: {error}") from None
        return cls.from_dict(data)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.to_yaml())

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """Read a config file; a missing, unreadable or invalid one is one ValueError naming it."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"config {path} is a directory, not a YAML file")
        try:
            return cls.from_yaml(path.read_text())
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read config {path}: {error}") from None
        except ValueError as error:
            raise ValueError(f"config {path}: {error}") from None


UNTIL_BUDGET = 10**9  # train.steps of a run that trains until its time budget runs out


def with_budget(config: T, minutes: float, steps: int | None = None) -> T:
    """``config`` trained for ``minutes`` of wall time: ``execution.budget_minutes`` set and,
    unless ``steps`` caps it, ``train.steps`` unlimited (the budget ends the run)."""
    config = replace_path(config, "execution.budget_minutes", minutes)
    result: T = replace_path(config, "train.steps", steps if steps is not None else UNTIL_BUDGET)
    return result


def apply_overrides(config: T, assignments: Iterable[str]) -> T:
    """``config`` with each ``KEY=VALUE`` (``train.lr=5e-4``) applied by :func:`replace_path`."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {assignment!r}")
        config = replace_path(config, key.strip(), value)
    return config


def replace_path(obj: Any, dotted: str, value: Any) -> Any:
    """Return a copy of a nested frozen dataclass with ``a.b.c = value`` (for CLI overrides).

    ``value`` is a string parsed as YAML (so ``3``, ``1e-3``, ``true``, ``[1, 2]`` work).
    """
    dotted = _MOVED_KEYS.get(dotted, dotted)  # an older name still sets its value
    head, _, rest = dotted.partition(".")
    names = {f.name for f in fields(obj)}
    if head not in names:
        raise ValueError(f"unknown config key {head!r} in {dotted!r}; known: {sorted(names)}")
    if rest:
        return dataclasses.replace(obj, **{head: replace_path(getattr(obj, head), rest, value)})
    hints = typing.get_type_hints(type(obj))
    try:
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
        return dataclasses.replace(obj, **{head: _coerce(hints[head], parsed)})
    except (ValueError, TypeError, yaml.YAMLError) as error:
        message = str(error)
        raise ValueError(message if head in message else f"{dotted}: {message}") from None
