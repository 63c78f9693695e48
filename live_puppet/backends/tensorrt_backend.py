"""The TensorRT backend: torch.export -> torch_tensorrt.dynamo.compile (fp16, static shapes).

Needs an NVIDIA GPU with a CUDA 13 driver and the `tensorrt` extra (`pip install -e ".[tensorrt]"`, which
pulls torch-tensorrt and TensorRT). Everything imports lazily: without them the backend reports one
clear sentence and `auto` falls back to ONNX Runtime.

The program handed to TensorRT is `export_program(module, example)`: a torch.export ExportedProgram
with static shapes. `program_problems` lists what would stop TensorRT from taking it whole (dynamic
shapes, non-core ATen ops, float64), so it can be checked on machines without a GPU.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import operator
from pathlib import Path

import numpy as np

from live_puppet.backends import Backend, Runner, register_backend
from live_puppet.errors import UserError

INSTALL_HINT = 'pip install -e ".[tensorrt]"'


def export_program(module, example):
    """The static-shape ExportedProgram of `module` at `example`'s shape (no dynamic dims)."""
    import torch

    with torch.no_grad():
        return torch.export.export(module.eval(), (example,), strict=False)


def program_problems(program) -> list[str]:
    """What keeps `program` from being a static, core-ATen graph (empty when it is fine).

    The program is decomposed to the core ATen opset first (what torch-tensorrt's converters take).
    """
    import torch

    problems: list[str] = []
    decomposed = program.run_decompositions()
    for node in decomposed.graph.nodes:
        val = node.meta.get("val")
        tensors = val if isinstance(val, (list, tuple)) else [val]
        for t in tensors:
            if isinstance(t, torch.Tensor):
                if any(not isinstance(d, int) for d in t.shape):
                    problems.append(f"dynamic shape {tuple(t.shape)} at {node.name}")
                if t.dtype == torch.float64:
                    problems.append(f"float64 tensor at {node.name}")
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        target = node.target
        if not isinstance(target, torch._ops.OpOverload):
            problems.append(f"non-ATen call {target} at {node.name}")
        elif torch.Tag.core not in target.tags:
            problems.append(f"non-core ATen op {target.name()} at {node.name}")
    return problems


def op_names(program) -> list[str]:
    """The distinct ATen ops of `program` after decomposition to the core opset, sorted."""
    names = {n.target.name() for n in program.run_decompositions().graph.nodes
             if n.op == "call_function" and hasattr(n.target, "name")}
    return sorted(names)


def import_torch_tensorrt():
    """torch_tensorrt, or one clear UserError when it is installed but cannot load."""
    try:
        import torch_tensorrt
    except Exception as exc:  # a wheel for another torch or CUDA, a missing TensorRT library
        raise UserError(f"torch-tensorrt is installed but cannot be loaded ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); reinstall it with {INSTALL_HINT} for torch "
                        f"{_torch_version()}, or choose --backend onnxruntime.") from None
    return torch_tensorrt


def _torch_version() -> str:
    import torch

    return torch.__version__


class TrtRunner:
    """A loaded torch-tensorrt module on numpy arrays (fp16 inside, float32 outside)."""

    def __init__(self, module, dtype):
        self.module = module
        self.dtype = dtype

    def __call__(self, sketch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(sketch, dtype=np.float32))
            x = x.to("cuda", non_blocking=True).to(self.dtype)
            return self.module(x).float().cpu().numpy()


@register_backend("tensorrt")
class TensorRTBackend(Backend):
    """TensorRT through torch-tensorrt's dynamo frontend: fp16, static shapes, saved as an .ep file."""

    precision = "fp16"
    artifact_suffix = ".ep"
    loads_code = True  # torch.export's archives hold pickled constants, unpickled on loading

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("torch_tensorrt") is None:
            return (f"The tensorrt backend needs torch-tensorrt and an NVIDIA GPU; run "
                    f"{INSTALL_HINT} on a machine with an NVIDIA driver for CUDA 13, or choose "
                    f"--backend onnxruntime.")
        import torch

        if not torch.cuda.is_available():
            return ("The tensorrt backend needs an NVIDIA GPU with CUDA, and none is visible; "
                    "choose --backend onnxruntime or torch.")
        return None

    def versions(self) -> dict[str, str]:
        torch_tensorrt = import_torch_tensorrt()
        found = {**super().versions(), "torch_tensorrt": torch_tensorrt.__version__}
        try:
            import tensorrt

            found["tensorrt"] = tensorrt.__version__
        except ImportError:
            pass
        import torch

        found["cuda"] = str(torch.version.cuda)
        return found

    def device_name(self) -> str:
        import torch

        return torch.cuda.get_device_name(0)

    def export(self, module, example, dest: Path) -> None:
        import torch

        torch_tensorrt = import_torch_tensorrt()

        module = copy.deepcopy(module).to("cuda").half().eval()
        x = example.to("cuda").half()
        program = export_program(module, x)
        compile_fn = torch_tensorrt.dynamo.compile
        params = inspect.signature(compile_fn).parameters
        kwargs = {"min_block_size": 1}
        if "use_explicit_typing" in params:  # newer releases: the fp16 weights decide the precision
            kwargs["use_explicit_typing"] = True
        else:
            kwargs["enabled_precisions"] = {torch.float16}
        inputs_kw = "arg_inputs" if "arg_inputs" in params else "inputs"
        kwargs[inputs_kw] = [x]
        trt_module = compile_fn(program, **kwargs)
        save_params = inspect.signature(torch_tensorrt.save).parameters
        save_kw = "arg_inputs" if "arg_inputs" in save_params else "inputs"
        torch_tensorrt.save(trt_module, str(dest), output_format="exported_program",
                            **{save_kw: [x]})

    def load(self, module, example, dest: Path | None) -> Runner:
        import torch

        torch_tensorrt = import_torch_tensorrt()

        loaded = torch_tensorrt.load(str(dest)).module()
        runner = TrtRunner(loaded, torch.float16)
        if example is not None:
            runner(example.detach().cpu().numpy())
        return runner
