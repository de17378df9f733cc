"""Steering vectors from artifacts the core does not know: what other packages plug into `interp steer`.

The core builds vectors from texts (`build`: mean difference, PCA; `lineas`). A package that owns
another artifact (an SAE's latents, a probe's direction) turns it into a plain `SteeringVector` and
registers that function here from a `register()` it names in the `interp.steering` entry-point group
(pyproject.toml), which is read the first time a method or source is looked up:

- `register_method(name, check, build)`: `interp steer build --method NAME`. `check(**options)` refuses
  bad options before the model loads; `build(model, positive, negative, points, **options)` returns
  `(SteeringVector, one-line summary)`. `points` are the hook points of `--layer`/`--hooks` (None when
  neither is given); `options` are the build command's artifact and method options.
- `register_source(name, load)`: `interp steer generate --NAME DIR`: `load(model, folder, selector)`
  returns the `SteeringVector` along the artifact's direction that `selector` picks (an SAE latent, a
  probe's hook point).

Nothing here imports those packages: the arrows point from them to the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from interp.errors import InterpError


@dataclass(frozen=True)
class Method:
    """A registered `steer build --method` (see the module docstring)."""

    check: Callable[..., None]
    build: Callable[..., tuple[Any, str]]


GROUP = "interp.steering"
METHODS: dict[str, Method] = {}
SOURCES: dict[str, Callable[..., Any]] = {}
_loaded = False


def load_registered() -> None:
    """Call every `register()` of the `interp.steering` entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        ep.load()()


def register_method(name: str, check: Callable[..., None], build: Callable[..., tuple[Any, str]]) -> None:
    """Make `name` a `steer build --method` (registering a name again replaces it)."""
    METHODS[name] = Method(check, build)


def register_source(name: str, load: Callable[..., Any]) -> None:
    """Make `--NAME DIR` of `steer generate` read a direction with `load(model, folder, selector)`."""
    SOURCES[name] = load


def method(name: str, core: tuple[str, ...]) -> Method:
    """The registered method `name`; InterpError listing every method when there is none."""
    load_registered()
    if name not in METHODS:
        known = ", ".join([*core, *sorted(METHODS)])
        raise InterpError(f"unknown --method {name!r}: use {known}")
    return METHODS[name]


def source(name: str) -> Callable[..., Any]:
    """The registered source `name`; InterpError when the package that provides it is not installed."""
    load_registered()
    if name not in SOURCES:
        raise InterpError(f"--{name} needs the package that reads such folders, which is not installed here: reinstall interp")
    return SOURCES[name]
