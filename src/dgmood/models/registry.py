"""Model families by name: one :class:`~dgmood.models.base.FamilySpec` each.

A family registers itself once, from its own module, with :func:`register_family`; importing
:mod:`dgmood.models` imports every built-in family. Everything else asks this module: which
names ``dgmood train`` accepts (families and their aliases), the config of a name at a size
preset, a family's kind and capabilities (from its config, without building a model), and
the network itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from dgmood.config import DataConfig, ModelConfig, register_model_config
from dgmood.models.base import Capability, Classifier, DensityModel, FamilySpec, ModelKind

_FAMILIES: dict[str, FamilySpec] = {}
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}  # alias -> (family, config overrides)
_KIND_EXAMPLES: dict[ModelKind, str] = {"density": "a density model", "classifier": "a classifier"}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Make ``spec`` available by name; its config class becomes loadable from YAML."""
    if spec.name != spec.config.family:
        raise ValueError(
            f"family {spec.name!r}: its config class {spec.config.__name__} says "
            f"family={spec.config.family!r}"
        )
    if spec.name in _FAMILIES and _FAMILIES[spec.name] is not spec:
        raise ValueError(f"a model family named {spec.name!r} is already registered")
    has_terms = Capability.TERM_DECOMPOSITION in spec.capabilities
    if has_terms != bool(spec.decomposition):
        raise ValueError(
            f"family {spec.name!r}: Capability.TERM_DECOMPOSITION and a non-empty "
            "FamilySpec.decomposition go together"
        )
    for required in ("tiny", "cpu"):
        if required not in spec.presets:
            raise ValueError(f"family {spec.name!r} needs a {required!r} preset")
    for preset, config in spec.presets.items():
        if type(config) is not spec.config:
            raise ValueError(f"family {spec.name!r}: preset {preset!r} is not a {spec.config}")
    for alias in spec.aliases:
        if alias in _ALIASES and _ALIASES[alias][0] != spec.name:
            raise ValueError(f"model alias {alias!r} is already taken by {_ALIASES[alias][0]}")
    register_model_config(spec.config)
    _FAMILIES[spec.name] = spec
    for alias, overrides in spec.aliases.items():
        _ALIASES[alias] = (spec.name, dict(overrides))
    return spec


def _ensure_loaded() -> None:
    import dgmood.models  # noqa: F401  (imports every built-in family module)


def families() -> list[str]:
    """Names of the registered families."""
    _ensure_loaded()
    return sorted(_FAMILIES)


def family_spec(family: str | ModelConfig) -> FamilySpec:
    """The spec of a family, by name or by one of its configs."""
    _ensure_loaded()
    name = family if isinstance(family, str) else type(family).family
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def capabilities(config: ModelConfig) -> frozenset[Capability]:
    """What the model of ``config`` can do (no model is built)."""
    return family_spec(config).capabilities_of(config)


def model_kind(config: ModelConfig) -> ModelKind:
    """The kind of model of ``config`` (density or classifier), without building it."""
    return family_spec(config).kind


def require(config: ModelConfig, kind: ModelKind, *needed: Capability, what: str = "") -> None:
    """Refuse, before anything is trained or built, a model that is not a ``kind`` model with
    every capability in ``needed``; ``what`` names the use in the message."""
    spec = family_spec(config)
    use = f" for {what}" if what else ""
    if spec.kind != kind:
        raise ValueError(
            f"{spec.name} is {_KIND_EXAMPLES[spec.kind]}, not {_KIND_EXAMPLES[kind]}{use}; "
            f"choose one of {models_with(kind, *needed)}"
        )
    missing = [c.value for c in needed if c not in spec.capabilities_of(config)]
    if missing:
        raise ValueError(
            f"{spec.name} (this config) lacks {', '.join(missing)}{use}; "
            f"choose one of {models_with(kind, *needed)}"
        )


def models_with(kind: ModelKind, *needed: Capability) -> list[str]:
    """Model names (families and aliases, at their cpu size) of ``kind`` with ``needed``."""
    out = []
    for name in model_names():
        config = resolve_model(name, "cpu")
        spec = family_spec(config)
        if spec.kind == kind and set(needed) <= spec.capabilities_of(config):
            out.append(name)
    return out


def build_model(config: ModelConfig, data: DataConfig) -> nn.Module:
    """Instantiate the network described by ``config`` for images described by ``data``."""
    spec = family_spec(config)
    model = spec.build(config, data)
    wanted = DensityModel if spec.kind == "density" else Classifier
    if not isinstance(model, wanted):
        raise TypeError(f"family {spec.name!r} built a {type(model).__name__}, not a {wanted}")
    model.family_spec = spec
    model.capabilities = spec.capabilities_of(config)
    return model


def spec_of_model(model: nn.Module) -> FamilySpec:
    """The family a model was built as (by :func:`build_model`)."""
    spec = model.family_spec if isinstance(model, DensityModel | Classifier) else None
    if spec is None:
        raise ValueError(
            f"this {type(model).__name__} was not built by dgmood.models.build_model, so its "
            "family (and what it can do) is unknown"
        )
    return spec


def model_capabilities(model: nn.Module) -> frozenset[Capability]:
    """What a built model can do, as its family's spec says for its config."""
    spec_of_model(model)  # refuses a model of no known family
    assert isinstance(model, DensityModel | Classifier)
    return model.capabilities


def model_presets(family: str) -> dict[str, ModelConfig]:
    return dict(family_spec(family).presets)


def model_preset(family: str, name: str) -> ModelConfig:
    presets = model_presets(family)
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} for {family}; known: {sorted(presets)}")
    return presets[name]


def model_names() -> list[str]:
    """Every name ``dgmood train`` accepts: the families, and their architecture aliases."""
    _ensure_loaded()
    return sorted(set(_FAMILIES) | set(_ALIASES))


def resolve_model(name: str, preset: str = "cpu") -> ModelConfig:
    """The config of model ``name`` (family or alias) at size ``preset`` (tiny, cpu, paper)."""
    _ensure_loaded()
    if name in _ALIASES:
        family, overrides = _ALIASES[name]
        base: Any = model_preset(family, preset)  # a frozen dataclass instance
        replaced: ModelConfig = dataclasses.replace(base, **overrides)
        return replaced
    if name in _FAMILIES:
        return model_preset(name, preset)
    raise ValueError(f"unknown model {name!r}; known: {model_names()}")
