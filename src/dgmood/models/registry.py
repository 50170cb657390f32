"""Model families by name: config class + builder. Families register themselves on import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dgmood.config import DataConfig, ModelConfig

_FAMILIES: dict[str, tuple[type, Callable[[Any, DataConfig], nn.Module]]] = {}


def register_family(
    config_cls: type[ModelConfig],
) -> Callable[[Callable[[Any, DataConfig], nn.Module]], Any]:
    """Decorator: ``@register_family(GlowConfig) def build(cfg, data) -> nn.Module``."""

    def decorator(builder: Callable[[Any, DataConfig], nn.Module]) -> Any:
        family = config_cls.family
        if not family:
            raise ValueError(f"{config_cls.__name__} has no family name")
        _FAMILIES[family] = (config_cls, builder)
        return builder

    return decorator


def _ensure_loaded() -> None:
    import dgmood.models  # noqa: F401  (imports every family module)


def families() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)


def build_model(config: ModelConfig, data: DataConfig) -> nn.Module:
    """Instantiate the network described by ``config`` for images described by ``data``."""
    _ensure_loaded()
    family = type(config).family
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[family][1](config, data)


_PRESETS: dict[str, dict[str, ModelConfig]] = {}


def register_presets(family: str, presets: dict[str, ModelConfig]) -> None:
    """Named model configs of a family; every family provides at least ``tiny`` and ``cpu``."""
    _PRESETS.setdefault(family, {}).update(presets)


def model_presets(family: str) -> dict[str, ModelConfig]:
    _ensure_loaded()
    if family not in _PRESETS:
        raise ValueError(f"no presets for family {family!r}; known: {sorted(_PRESETS)}")
    return dict(_PRESETS[family])


def model_preset(family: str, name: str) -> ModelConfig:
    presets = model_presets(family)
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} for {family}; known: {sorted(presets)}")
    return presets[name]


_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}


def register_alias(name: str, family: str, **overrides: Any) -> None:
    """A named architecture of a family, e.g. ``cv-glow`` = glow with additive couplings."""
    _ALIASES[name] = (family, overrides)


def model_names() -> list[str]:
    """Every name ``dgmood train`` accepts: families with presets, and architecture aliases."""
    _ensure_loaded()
    return sorted((set(_FAMILIES) & set(_PRESETS)) | set(_ALIASES))


def resolve_model(name: str, preset: str = "cpu") -> ModelConfig:
    """The config of model ``name`` (family or alias) at size ``preset`` (tiny, cpu, paper)."""
    import dataclasses

    _ensure_loaded()
    if name in _ALIASES:
        family, overrides = _ALIASES[name]
        base: Any = model_preset(family, preset)  # a frozen dataclass instance
        replaced: ModelConfig = dataclasses.replace(base, **overrides)
        return replaced
    if name in _FAMILIES:
        return model_preset(name, preset)
    raise ValueError(f"unknown model {name!r}; known: {model_names()}")
