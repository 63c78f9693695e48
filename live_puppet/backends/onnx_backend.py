"""The ONNX Runtime backend: the folded generator exported at opset 18, run by an InferenceSession.

Export uses the torch.export-based exporter (`dynamo=True`, the default since torch 2.9) and falls
back to the TorchScript exporter if that fails. The session uses the CUDA execution provider when
onnxruntime-gpu offers it, else the CPU one, with all graph optimizations (constant folding, conv
fusions, NCHWc layouts) and one intra-op thread per core, whose workers do not spin between
operators: in the live app the generator shares the cores with the tracker, and spinning workers
took its time (small model at 256 px in the full pipeline, 2 cores: INT8 14-17 fps spinning,
17.6-18 fps not; the tracker 26-30 ms a frame spinning, 22-24 ms not).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from live_puppet.backends import Backend, Runner, register_backend

OPSET = 18
INPUT_NAME = "sketch"
OUTPUT_NAME = "image"


def export_onnx(module, example, dest: Path, opset: int = OPSET) -> None:
    """Write `module` for `example`'s static shape as an ONNX model (one self-contained file)."""
    import torch

    module = module.eval()
    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    sink = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
            _quiet_loggers("torch.onnx", "torch.export", "onnxscript", "root"):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(dest), dynamo=True, external_data=False,
                              verbose=False, **common)
        except Exception:  # the TorchScript exporter handles a few graphs the new one cannot
            torch.onnx.export(module, (example,), str(dest), dynamo=False,
                              do_constant_folding=True, **common)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Raise these loggers to ERROR for the duration (the exporter's and quantizer's chatter)."""
    loggers = [logging.getLogger(n if n != "root" else None) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def cpu_threads() -> int:
    """Intra-op threads for ONNX Runtime: LIVE_PUPPET_ORT_THREADS, else every core we may use."""
    env = os.environ.get("LIVE_PUPPET_ORT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OrtRunner:
    """One InferenceSession on numpy arrays."""

    def __init__(self, session):
        self.session = session
        self.providers = session.get_providers()

    def __call__(self, sketch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(sketch, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


@register_backend("onnxruntime")
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: CUDA execution provider when present, else the CPU one."""

    artifact_suffix = ".onnx"

    def __init__(self, threads: int | None = None, spinning: bool = False, **_):
        self.threads = threads
        self.spinning = spinning

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401
            import onnx  # noqa: F401
        except ImportError:
            return ("The onnxruntime backend needs the onnxruntime and onnx packages; run "
                    "pip install -e . to install them, or choose --backend torch.")
        return None

    @staticmethod
    def providers() -> list[str]:
        import onnxruntime as ort

        present = ort.get_available_providers()
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in present]

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime as ort

        return {**super().versions(), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                "opset": str(OPSET), "providers": ",".join(self.providers())}

    def device_name(self) -> str:
        if "CUDAExecutionProvider" in self.providers():
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"
        return "cpu"

    def session_options(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of convs: no branches
        opts.intra_op_num_threads = self.threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only
        if not self.spinning:  # give the cores back at once (tracker, capture threads)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def export(self, module, example, dest: Path) -> None:
        export_onnx(module, example, dest)

    def load(self, module, example, dest: Path | None) -> Runner:
        import onnxruntime as ort

        session = ort.InferenceSession(str(dest), sess_options=self.session_options(),
                                       providers=self.providers())
        runner = OrtRunner(session)
        if example is not None:  # first run allocates the arena; do it now, not on a live frame
            runner(example.detach().cpu().numpy())
        return runner


class SketchCalibrationReader:
    """Feeds calibration sketches to ONNX Runtime's quantizer, one [1, 3, R, R] batch at a time."""

    def __init__(self, sketches: list[np.ndarray]):
        from live_puppet.backends.builder import rgb_to_array

        self._batches = iter([{INPUT_NAME: rgb_to_array(s)} for s in sketches])

    def get_next(self):
        return next(self._batches, None)


@register_backend("onnxruntime-int8")
class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    """ONNX Runtime on the CPU with the convolutions statically quantized to INT8.

    QDQ format, uint8 activations, int8 weights per output channel, no reduced range (CPUs with
    AVX-512 VNNI or AVX-VNNI multiply u8 x s8 exactly), calibrated on real sketches from
    calibration/ (see live_puppet.backends.calibration). ONNX Runtime fuses every DQ -> Conv -> Q
    into a QLinearConv (int8 kernels) but has no quantized ConvTranspose, so the upsampling
    transposed convs are first split into four phase convolutions (`polyphase_upsampling`), and
    the phases are interleaved as uint8 (DepthToSpace between quantize nodes). Attention stays
    fp32 (its quantized softmax is slower here and less exact). Faster on CPUs with VNNI, but
    approximate: opt-in, never chosen by `auto`.
    """

    precision = "int8"
    artifact_suffix = ".int8.onnx"
    QUANTIZED_OPS = ("Conv", "DepthToSpace", "Reshape")
    RECIPE = "2"  # bump when the quantized graph changes (part of the cache key)

    def __init__(self, calibration_dir: str | os.PathLike | None = None, **options):
        super().__init__(**options)
        from live_puppet.backends.calibration import CalibrationSet
        from live_puppet.config import default_calibration_dir

        self.calibration = CalibrationSet(calibration_dir or default_calibration_dir()).require()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return reason
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError:
            return ("The onnxruntime-int8 backend needs onnxruntime's quantization tools; "
                    "reinstall onnxruntime or choose --backend onnxruntime.")
        return None

    @staticmethod
    def providers() -> list[str]:
        return ["CPUExecutionProvider"]

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "calibration": self.calibration.digest(),
                "int8_recipe": self.RECIPE}

    def export(self, module, example, dest: Path) -> None:
        import copy
        import tempfile

        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from live_puppet.backends.folding import polyphase_upsampling

        module = polyphase_upsampling(copy.deepcopy(module))
        size = int(example.shape[-1])
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
            export_onnx(module, example, fp32)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    _quiet_loggers("root", "onnxruntime"):
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(dest),
                                SketchCalibrationReader(self.calibration.sketches(size)),
                                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=list(self.QUANTIZED_OPS))


def runtime_op_counts(path: Path, threads: int = 1) -> dict[str, int]:
    """The kernels ONNX Runtime's CPU provider actually runs for the model at `path`: op type ->
    count in the graph after all its optimizations (e.g. QLinearConv where DQ -> Conv -> Q fused)."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    return dict(collections.Counter(n.op_type for n in graph.node))
