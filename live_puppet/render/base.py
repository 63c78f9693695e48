"""The engine interface and its registry (like pyvirtualcam's backends: a name -> a class)."""

from __future__ import annotations

import importlib
from concurrent.futures import Future
from typing import Callable

import numpy as np

from live_puppet.errors import UserError
from live_puppet.types import Portrait, Target


class Engine:
    """Renders a portrait so that its face shows a target.

    `prepare` runs once per portrait (when it is selected) and may be slow; `render` runs per frame
    and must be fast. Both see only the Portrait and the Target, never a camera frame.
    """

    name = "engine"

    def prepare(self, portrait: Portrait) -> None:
        """Precompute whatever this portrait needs (mesh, embedding, compiled network)."""

    def prepare_async(self, portrait: Portrait) -> Future:
        """Prepare without stalling the stream. Engines whose prepare is slow override this to
        build in the background; here it is quick, so it runs at once."""
        done: Future = Future()
        try:
            self.prepare(portrait)
            done.set_result(None)
        except Exception as exc:
            done.set_exception(exc)
        return done

    def render(self, portrait: Portrait, target: Target | None) -> np.ndarray:
        """The output picture (H x W x 3 uint8 BGR, the portrait's size). None target: at rest."""
        raise NotImplementedError

    def close(self) -> None:
        """Release threads, sessions and files."""


EngineFactory = Callable[..., Engine]
ENGINES: dict[str, EngineFactory] = {}

# Engines living in their own modules; imported on first use so that `warp` never loads torch.
_LAZY = {
    "warp": "live_puppet.render.warp",
    "static": "live_puppet.render.static",
    "neural": "live_puppet.render.neural",
}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    def deco(factory: EngineFactory) -> EngineFactory:
        ENGINES[name] = factory
        return factory

    return deco


def engine_names() -> list[str]:
    return sorted(set(ENGINES) | set(_LAZY))


def create_engine(name: str, **options) -> Engine:
    """Build the engine registered as `name`; options are passed to its constructor."""
    if name not in ENGINES and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in ENGINES:
        raise UserError(f"Unknown engine '{name}'; choose one of: {', '.join(engine_names())}.")
    return ENGINES[name](**options)
