"""Method names -> classes: what ``lvlm-interpret analyse --metrics`` iterates.

Torch-free methods register here on import; methods that need the model register from
:mod:`engine.methods` when that package is imported (the CLI imports it; the dashboard, which
never imports torch, sees only the torch-free ones). Registering twice under one name with
another class is refused, so two methods can never silently share a result key.
"""

from __future__ import annotations

from methods.base import Method, Needs

_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` runnable by name."""
    known = _METHODS.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"method name {cls.name!r} is taken by {known.__qualname__}")
    _METHODS[cls.name] = cls
    return cls


def names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def get(name: str) -> type[Method]:
    """The class registered as ``name`` (``KeyError`` naming the known ones otherwise)."""
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; choose from {', '.join(names())}") from None


def needs_model(chosen: list[str]) -> list[str]:
    """The chosen names whose method re-runs the model."""
    return [n for n in chosen if Needs.MODEL in get(n).needs]


import methods.cleann.method  # noqa: E402  (registers the CLEANN map)
import methods.evidence  # noqa: E402  (registers the evidence map)
import methods.localisation  # noqa: E402,F401  (registers the torch-free methods)
