"""Engines turn (Portrait, Target) into the picture sent to the sinks.

Engines register themselves by name; `create_engine("warp")` builds one.
"""

from live_puppet.render.base import ENGINES, Engine, create_engine, register_engine

__all__ = ["ENGINES", "Engine", "create_engine", "register_engine"]
