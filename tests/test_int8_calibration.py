"""INT8 for ONNX Runtime: calibration sets of real sketches, and the quantized engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DRIVING, need
from live_puppet.backends import create_backend
from live_puppet.backends.calibration import CalibrationSet, write_calibration_set
from live_puppet.backends.folding import fold_generator
from live_puppet.backends.onnx_backend import runtime_op_counts
from live_puppet.errors import UserError
from live_puppet.model import Generator, ModelConfig


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory, landmarker_model):
    root = tmp_path_factory.mktemp("calibration")
    write_calibration_set(need(DRIVING / "d0.mp4"), root, count=4, landmarker=landmarker_model)
    return root


def test_calibration_set_holds_real_sketches(calibration_dir):
    cs = CalibrationSet(calibration_dir)
    assert len(cs) == 4
    assert (calibration_dir / "d0" / "points.npy").is_file()
    assert len(list((calibration_dir / "d0" / "sketches").glob("*.png"))) == 4
    for s in cs.sketches(64):
        assert s.shape == (64, 64, 3) and s.dtype == np.uint8
        assert 50 < (s.sum(axis=2) > 0).sum() < 64 * 64 // 2  # lines on black, not empty or full
    assert len(cs.digest()) == 16


def test_int8_without_calibration_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="calibration set") as info:
        create_backend("onnxruntime-int8", calibration_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_int8_engine_is_quantized_and_close_to_fp32(calibration_dir, tmp_path):
    import onnx

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, base_channels=8, max_channels=16, embed_dim=16,
                      generator_down_blocks=2, generator_res_blocks=1, attention_resolution=16)
    g = Generator(cfg).eval()
    folded = fold_generator(g, psi=torch.randn(1, g.psi_dim) * 0.1)
    cs = CalibrationSet(calibration_dir)
    from live_puppet.backends.builder import rgb_to_array

    x = torch.from_numpy(rgb_to_array(cs.sketches(32)[0]))
    backend = create_backend("onnxruntime-int8", calibration_dir=calibration_dir)
    path = tmp_path / "g.int8.onnx"
    backend.export(folded, x, path)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "ConvTranspose" not in ops  # split into phase convs: ORT cannot quantize it
    # uint8 activations, int8 weights with one scale per output channel
    inits = {t.name: t for t in model.graph.initializer}
    q_zero_points = [inits[n.input[2]].data_type for n in model.graph.node
                     if n.op_type == "QuantizeLinear"]
    assert q_zero_points and set(q_zero_points) == {onnx.TensorProto.UINT8}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weights and all(list(inits[n.input[1]].dims) == [inits[n.input[0]].dims[0]]
                           for n in weights)
    # what ONNX Runtime runs: every convolution as a QLinearConv int8 kernel, none left in fp32
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in folded.modules()) + 4 * sum(
        isinstance(m, torch.nn.ConvTranspose2d) for m in folded.modules())  # 1 -> 4 phase convs
    kernels = runtime_op_counts(path)
    assert kernels.get("QLinearConv") == convs
    assert not {"Conv", "ConvTranspose", "FusedConv"} & set(kernels)
    out = backend.load(None, x, path)(x.numpy())
    with torch.no_grad():
        ref = folded(x).numpy()
    assert out.shape == ref.shape and np.isfinite(out).all()
    corr = np.corrcoef(out.ravel(), ref.ravel())[0, 1]
    assert corr > 0.9, f"INT8 output correlates {corr:.3f} with fp32"


def test_damaged_or_misplaced_calibration_sets_are_one_sentence(tmp_path):
    broken = tmp_path / "broken" / "x"
    broken.mkdir(parents=True)
    np.save(broken / "points.npy", np.array([{"not": "points"}], dtype=object))  # pickled objects
    with pytest.raises(UserError, match="is damaged; delete the folder"):
        CalibrationSet(tmp_path / "broken")
    picture = tmp_path / "face.jpg"
    picture.write_bytes(b"\xff\xd8 a still picture")
    with pytest.raises(UserError, match="is a picture"):
        write_calibration_set(picture, tmp_path / "cal")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(UserError, match="--calibration-dir"):
        write_calibration_set(need(DRIVING / "d0.mp4"), a_file)


def test_a_new_calibration_set_gives_a_new_int8_engine(calibration_dir, tmp_path):
    # The engine's cache key holds the calibration's digest: a set re-made from another clip must
    # not reuse an engine quantized for the old one.
    import shutil

    other = tmp_path / "other"
    shutil.copytree(calibration_dir, other)
    points = other / "d0" / "points.npy"
    np.save(points, np.load(points)[::-1].copy())  # other sketches in place of the first ones
    first = create_backend("onnxruntime-int8", calibration_dir=calibration_dir).versions()
    again = create_backend("onnxruntime-int8", calibration_dir=calibration_dir).versions()
    changed = create_backend("onnxruntime-int8", calibration_dir=other).versions()
    assert first == again and first != changed
