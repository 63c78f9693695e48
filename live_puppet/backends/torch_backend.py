"""The in-process torch backends: eager, and torch.compile (Inductor).

Neither writes an engine file: the folded module is already in memory, and torch.compile keeps its
own on-disk cache of compiled kernels (Inductor's FX graph cache), so a second start compiles faster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from live_puppet.backends import Backend, Runner, register_backend
from live_puppet.errors import UserError


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


class TorchRunner:
    """Runs a module under inference mode on numpy NCHW float32 arrays."""

    def __init__(self, module, device: str = "cpu"):
        self.module = module
        self.device = device

    def __call__(self, sketch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(sketch, dtype=np.float32)).to(self.device)
            return self.module(x).float().cpu().numpy()


@register_backend("torch")
class TorchEagerBackend(Backend):
    """The folded module run eagerly by PyTorch (CUDA when present)."""

    def device_name(self) -> str:
        return _device_name()

    def load(self, module, example, dest: Path | None = None) -> Runner:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return TorchRunner(module.to(device).eval(), device)


@register_backend("torch-compile")
class TorchCompileBackend(Backend):
    """The folded module compiled by torch.compile (Inductor; static shapes, one graph)."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        import shutil

        import torch

        if not torch.cuda.is_available() and not (shutil.which("g++") or shutil.which("c++")):
            return ("The torch-compile backend needs a C++ compiler on the CPU (install g++) or a "
                    "CUDA GPU; choose --backend onnxruntime or torch instead.")
        return None

    def device_name(self) -> str:
        return _device_name()

    def load(self, module, example, dest: Path | None = None) -> Runner:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        compiled = torch.compile(module.to(device).eval(), fullgraph=True, dynamic=False)
        runner = TorchRunner(compiled, device)
        try:
            runner(example.detach().cpu().numpy())  # compile now, not on the first live frame
        except Exception as exc:  # Inductor needs a working toolchain; say so in one line
            raise UserError(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:120]}); "
                            f"choose --backend onnxruntime or torch instead.") from None
        return runner
