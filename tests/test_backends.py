"""Backends: registry, `auto`, TensorRT's absence, what TensorRT consumes, and parity of each
backend present here against the unfolded eager generator."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import tiny_model_config
from live_puppet.backends import (BACKEND_CHOICES, backend_class, create_backend, resolve_backend)
from live_puppet.backends.folding import fold_generator
from live_puppet.backends.tensorrt_backend import export_program, op_names, program_problems
from live_puppet.errors import UserError
from live_puppet.model import Generator, ModelConfig

HAS_TRT = importlib.util.find_spec("torch_tensorrt") is not None and torch.cuda.is_available()


def tiny_config() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture(scope="module")
def generator_and_psi():
    torch.manual_seed(0)
    g = Generator(tiny_config()).eval()
    psi = torch.randn(1, g.psi_dim) * 0.3
    return g, psi


@pytest.fixture(scope="module")
def sketch_batch():
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1


def reference(g, psi, x):
    with torch.no_grad():
        return g(x, psi).numpy()


def test_registry_names_every_choice():
    for name in BACKEND_CHOICES[1:]:
        assert backend_class(name).name == name
    with pytest.raises(UserError, match="Unknown backend 'cuda-magic'"):
        backend_class("cuda-magic")


def test_auto_picks_the_fastest_present_and_says_which():
    said = []
    chosen = resolve_backend("auto", announce=said.append)
    assert chosen == ("tensorrt" if HAS_TRT else "onnxruntime")
    assert len(said) == 1 and chosen in said[0] and "\n" not in said[0]


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is present on this machine")
def test_tensorrt_unavailable_is_one_clear_line():
    with pytest.raises(UserError) as info:
        resolve_backend("tensorrt")
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    assert ("pip install -e \".[tensorrt]\"" in message) or ("GPU" in message)
    assert info.value.exit_code == 2
    with pytest.raises(UserError):
        create_backend("tensorrt")


def test_the_backend_bench_says_what_is_wrong_in_one_line(capsys, tmp_path):
    # engines/README documents `python -m live_puppet.backends.bench`: no traceback from it either
    from live_puppet.backends import bench

    if importlib.util.find_spec("torch_tensorrt") is None or not torch.cuda.is_available():
        assert bench.main(["--backends", "tensorrt", "--configs", "small", "--frames", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "tensorrt backend needs" in err and "Traceback" not in err
    assert bench.main(["--ttff", "--portrait", str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err


def test_exported_program_is_static_and_core_aten(generator_and_psi, sketch_batch):
    """What TensorRT consumes: one static-shape program of core ATen ops only."""
    g, psi = generator_and_psi
    program = export_program(fold_generator(g, psi=psi), sketch_batch)
    assert program_problems(program) == []
    ops = op_names(program)
    assert "aten::convolution" in ops
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    shapes = [tuple(n.meta["val"].shape) for n in placeholders if "val" in n.meta]
    assert (1, 3, 32, 32) in shapes
    assert all(isinstance(d, int) for s in shapes for d in s)
    with torch.no_grad():
        out = program.module()(sketch_batch)
    assert np.abs(out.numpy() - reference(g, psi, sketch_batch)).max() < 1e-4


def test_program_problems_does_flag_dynamic_shapes(generator_and_psi):
    """The static-shape check can fail: a program exported with a dynamic batch is flagged."""
    class Scale(torch.nn.Module):
        def forward(self, x):
            return x * 2

    x = torch.zeros(2, 3, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=8)
    dynamic = torch.export.export(Scale(), (x,), dynamic_shapes=({0: batch},))
    assert any("dynamic shape" in p for p in program_problems(dynamic))


@pytest.mark.parametrize("name,tol", [("torch", 1e-4), ("onnxruntime", 1e-4)])
def test_backend_parity_with_unfolded_eager(name, tol, generator_and_psi, sketch_batch, tmp_path):
    g, psi = generator_and_psi
    backend = create_backend(name)
    folded = fold_generator(g, psi=psi)
    path = None
    if backend.artifact_suffix:
        path = tmp_path / f"engine{backend.artifact_suffix}"
        backend.export(folded, sketch_batch, path)
        assert path.stat().st_size > 0
    runner = backend.load(folded, sketch_batch, path)
    out = runner(sketch_batch.numpy())
    err = np.abs(out - reference(g, psi, sketch_batch)).max()
    assert out.shape == (1, 3, 32, 32) and out.dtype == np.float32
    assert err < tol, f"{name}: max abs error {err:.2e}"


def test_onnx_file_is_opset_18_with_folded_instance_norm(generator_and_psi, sketch_batch, tmp_path):
    import onnx

    g, psi = generator_and_psi
    path = tmp_path / "g.onnx"
    create_backend("onnxruntime").export(fold_generator(g, psi=psi), sketch_batch, path)
    model = onnx.load(str(path))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}
    ops = {n.op_type for n in model.graph.node}
    assert "InstanceNormalization" in ops and "Conv" in ops
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]


@pytest.mark.skipif(backend_class("torch-compile").unavailable_reason() is not None,
                    reason="torch.compile needs a C++ compiler here")
def test_torch_compile_parity(generator_and_psi, sketch_batch):
    g, psi = generator_and_psi
    runner = create_backend("torch-compile").load(fold_generator(g, psi=psi), sketch_batch, None)
    err = np.abs(runner(sketch_batch.numpy()) - reference(g, psi, sketch_batch)).max()
    assert err < 1e-4, f"torch-compile: max abs error {err:.2e}"


def test_bench_rows_report_speed_and_parity():
    from live_puppet.backends.bench import bench_generators, format_table

    rows = bench_generators(configs=(tiny_config(),), backends=("torch", "onnxruntime"), size=32,
                            frames=2, warmup=1, log=lambda _: None)
    assert [r.backend for r in rows] == ["torch (unfolded)", "torch", "onnxruntime"]
    assert all(r.ms_median > 0 and r.ms_min <= r.ms_median for r in rows)
    assert all(r.max_abs_err < 1e-4 for r in rows)
    assert rows[1].gflops < rows[0].gflops  # folding + rewrites cut the arithmetic
    assert len(format_table(rows).splitlines()) == 2 + len(rows)


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None,
                    reason="torch-tensorrt is installed here")
def test_torch_tensorrt_that_cannot_load_is_one_clear_line():
    from live_puppet.backends.tensorrt_backend import import_torch_tensorrt

    with pytest.raises(UserError) as info:
        import_torch_tensorrt()
    assert "\n" not in str(info.value) and "--backend onnxruntime" in str(info.value)
