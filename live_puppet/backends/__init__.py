"""Backends that run the portrait-folded generator: a name -> a class (like pyvirtualcam's backends).

Every backend turns the same `PortraitGenerator` (sketch [1,3,R,R] float32 in [-1, 1] -> image
[1,3,R,R] float32 in [-1, 1]) into a `Runner`, a callable on numpy arrays:

    backend = create_backend("onnxruntime")
    backend.export(module, example, path)     # only when backend.artifact_suffix: writes the engine file
    runner = backend.load(module, example, path)
    image = runner(sketch_nchw_float32)

`torch` and `torch-compile` run the module in process and write no file; `onnxruntime` writes an
.onnx model, `onnxruntime-int8` the same model statically quantized to INT8 with a calibration set
of real sketches (opt-in: approximate), and `tensorrt` a serialized torch-tensorrt ExportedProgram,
all cached by
`live_puppet.backends.cache.EngineCache`. `auto` is resolved by `resolve_backend`: TensorRT when
CUDA and torch-tensorrt are present, else ONNX Runtime, else torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from live_puppet.errors import UserError

BACKEND_CHOICES = ("auto", "tensorrt", "onnxruntime", "onnxruntime-int8", "torch", "torch-compile")


class Runner(Protocol):
    """A compiled generator: sketch (1, 3, R, R) float32 -> image (1, 3, R, R) float32."""

    def __call__(self, sketch: np.ndarray) -> np.ndarray: ...


class Backend:
    """One way of compiling and running the folded generator."""

    name = "backend"
    precision = "fp32"
    artifact_suffix: str | None = None  # file suffix of what `export` writes; None: nothing written
    loads_code = False  # loading its engine files can run code in them (pickles): only signed ones

    def __init__(self, **options):
        """Backends take keyword options (threads, calibration_dir, ...) and ignore the rest."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this backend can run here, else one sentence saying what is missing."""
        return None

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable_reason() is None

    def versions(self) -> dict[str, str]:
        """The library versions an engine file depends on (part of the cache key)."""
        import torch

        return {"torch": torch.__version__}

    def device_name(self) -> str:
        """The device the engine runs on (part of the cache key): a GPU's name or 'cpu'."""
        return "cpu"

    def export(self, module, example, dest: Path) -> None:
        """Compile `module` for `example`'s shape and write the engine to `dest`."""
        raise NotImplementedError(f"the {self.name} backend writes no engine file")

    def load(self, module, example, dest: Path | None) -> Runner:
        """A runner from the engine file `dest` (or from `module` itself for in-process backends)."""
        raise NotImplementedError


BACKENDS: dict[str, type[Backend]] = {}

# Backends living in their own modules, imported on first use so that nothing heavy loads early.
_LAZY = {
    "torch": "live_puppet.backends.torch_backend",
    "torch-compile": "live_puppet.backends.torch_backend",
    "onnxruntime": "live_puppet.backends.onnx_backend",
    "onnxruntime-int8": "live_puppet.backends.onnx_backend",
    "tensorrt": "live_puppet.backends.tensorrt_backend",
}

# The order `auto` tries them in: fastest first.
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    def deco(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return deco


def backend_class(name: str) -> type[Backend]:
    """The class registered as `name` (importing its module on first use)."""
    if name not in BACKENDS and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in BACKENDS:
        raise UserError(f"Unknown backend '{name}'; choose one of: {', '.join(BACKEND_CHOICES)}.")
    return BACKENDS[name]


def resolve_backend(name: str = "auto", announce: Callable[[str], None] | None = print) -> str:
    """The concrete backend for `name`; `auto` picks the fastest one present and says which."""
    if name != "auto":
        cls = backend_class(name)
        reason = cls.unavailable_reason()
        if reason:
            raise UserError(reason)
        return name
    skipped = []
    for candidate in AUTO_ORDER:
        reason = backend_class(candidate).unavailable_reason()
        if reason is None:
            if announce:
                why = f"; not available: {', '.join(skipped)}" if skipped else ""
                announce(f"Neural backend: {candidate} (chosen by --backend auto{why}).")
            return candidate
        skipped.append(candidate)
    raise UserError("No neural backend can run here; install onnxruntime or torch.")


def create_backend(name: str, **options) -> Backend:
    """An instance of the (concrete, available) backend `name`."""
    cls = backend_class(resolve_backend(name, announce=None) if name == "auto" else name)
    reason = cls.unavailable_reason()
    if reason:
        raise UserError(reason)
    return cls(**options)


__all__ = [
    "AUTO_ORDER", "BACKENDS", "BACKEND_CHOICES", "Backend", "Runner", "backend_class",
    "create_backend", "register_backend", "resolve_backend",
]
