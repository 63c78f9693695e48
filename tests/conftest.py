"""Shared fixtures: the ../shared data beside the checkout, the landmarker model, a fake vcam."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "face_landmarker.task"
PORTRAITS = SHARED / "data" / "portraits"
DRIVING = SHARED / "data" / "driving"

if MODEL.is_file():
    os.environ.setdefault("LIVE_PUPPET_LANDMARKER", str(MODEL))
os.environ.setdefault("GLOG_minloglevel", "2")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: put the project's shared data at ../shared beside the checkout")
    return path


@pytest.fixture(scope="session")
def landmarker_model() -> Path:
    return need(MODEL)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo (Eileen Collins), BGR."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="session")
def image_tracker(landmarker_model):
    from live_puppet.tracking import Tracker

    with Tracker(landmarker_model, mode="image", num_faces=4) as tracker:
        yield tracker


@pytest.fixture(scope="session")
def astronaut_portrait(astronaut, image_tracker, tmp_path_factory):
    import cv2

    from live_puppet.portrait import load_portrait

    path = tmp_path_factory.mktemp("portrait") / "astronaut.png"
    cv2.imwrite(str(path), astronaut)
    return load_portrait(path, image_tracker)


def tiny_model_config():
    """A generator/embedder small enough for CPU tests (imports torch only when asked)."""
    from live_puppet.model import ModelConfig

    return ModelConfig(image_size=32, base_channels=8, max_channels=16, embed_dim=16,
                       generator_down_blocks=2, generator_res_blocks=1, attention_resolution=16)


class FakeCamera:
    """An in-memory pyvirtualcam backend: keeps what it is sent."""

    instances: list["FakeCamera"] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.width, self.height, self.fps = width, height, fps
        self.frames: list[np.ndarray] = []
        self.closed = False
        FakeCamera.instances.append(self)

    def send(self, frame):
        self.frames.append(frame.copy())

    def close(self):
        self.closed = True

    def device(self):
        return "fake"

    def native_fourcc(self):
        return None


@pytest.fixture
def fake_vcam():
    import pyvirtualcam

    pyvirtualcam.register_backend("fake", FakeCamera)
    FakeCamera.instances.clear()
    yield FakeCamera
    FakeCamera.instances.clear()


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Write BGR frames to an H.264 mp4 with PyAV."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def numbered_frames(n: int, size=(64, 48)) -> list[np.ndarray]:
    """Frames whose brightness encodes their index (index * 8), to check order after encoding."""
    w, h = size
    return [np.full((h, w, 3), min(255, i * 8), np.uint8) for i in range(n)]


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Tests press Ctrl-C (SIGINT) and expect a KeyboardInterrupt, as in a terminal; a suite started
    in the background of a script, where SIGINT is ignored, would not get one."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
