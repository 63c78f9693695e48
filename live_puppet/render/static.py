"""The `static` engine: the portrait, unmoving. The floor every engine must beat in evaluation."""

import numpy as np

from live_puppet.render.base import Engine, register_engine
from live_puppet.types import Portrait, Target


@register_engine("static")
class StaticEngine(Engine):
    name = "static"

    def __init__(self, **_):
        pass

    def render(self, portrait: Portrait, target: Target | None) -> np.ndarray:
        return portrait.image
