"""INT8 calibration sets: real landmark sketches taken from a driving clip, kept under calibration/.

    calibration/<clip stem>/points.npy    (N, 68, 2) float32 iBUG points in unit crop coordinates
    calibration/<clip stem>/sketches/     the same sketches as 256-px PNGs, to look at

The points are stored rather than pixels so the sketches can be redrawn exactly at any generator
resolution. A set is complete when points.npy exists (written last, atomically).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from live_puppet import sketch
from live_puppet.errors import UserError, writable_folder

POINTS_FILE = "points.npy"
PREVIEW_SIZE = 256


def write_calibration_set(clip: str | os.PathLike, out_dir: str | os.PathLike, count: int = 48,
                          landmarker: str | os.PathLike | None = None) -> Path:
    """Track `count` evenly spaced frames of `clip` and store their sketches' points; the set's dir."""
    from tqdm import tqdm

    from live_puppet.capture import IMAGE_SUFFIXES, VideoFileSource
    from live_puppet.tracking import Tracker, resolve_landmarker_model

    clip = Path(clip).expanduser()
    if clip.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(f"The calibration clip '{clip}' is a picture; pass a video of a talking "
                        f"face (e.g. ../shared/data/driving/d3.mp4).")
    writable_folder(out_dir, "the INT8 calibration set", "--calibration-dir")
    try:  # decoded as `run` decodes its source (turned upright as the header says)
        source = VideoFileSource(clip)
    except UserError:
        raise UserError(f"The calibration clip '{clip}' cannot be read; pass a video file with a "
                        f"face (e.g. ../shared/data/driving/d3.mp4).") from None
    total = source.length or count
    wanted = set(np.linspace(0, max(total - 1, 0), num=min(count, max(total, 1))).round().astype(int))
    dest = Path(out_dir) / clip.stem
    (dest / "sketches").mkdir(parents=True, exist_ok=True)
    points = []
    with Tracker(resolve_landmarker_model(landmarker), mode="video") as tracker:
        bar = tqdm(total=len(wanted), desc=f"calibration set from {clip.name}", unit="frame",
                   disable=None)  # (on a terminal only, as run, eval and bench)
        for index, frame in enumerate(source.frames()):
            face = tracker.track(frame, timestamp_ms=int(index * 1000 / 30))
            if index in wanted and face is not None:
                box = sketch.face_box(face.landmarks)
                unit = sketch.to_crop(sketch.to_ibug68(face.landmarks), box, 1)
                points.append(unit)
                preview = sketch.draw_sketch(unit * PREVIEW_SIZE, PREVIEW_SIZE)
                cv2.imwrite(str(dest / "sketches" / f"{index:06d}.png"),
                            cv2.cvtColor(preview, cv2.COLOR_RGB2BGR))
                bar.update(1)
        bar.close()
    if not points:
        raise UserError(f"No face was found in the calibration clip '{clip}'; use a clip of a "
                        f"talking face.")
    tmp = dest / f".{POINTS_FILE}.tmp.npy"
    np.save(tmp, np.stack(points).astype(np.float32))
    os.replace(tmp, dest / POINTS_FILE)
    return dest


def ensure_calibration_set(folder: str | os.PathLike | None, clip: str | os.PathLike,
                           landmarker: str | os.PathLike | None = None) -> None:
    """If `folder` (None: the default calibration/) holds no set yet, make one from `clip`."""
    from live_puppet.config import default_calibration_dir

    folder = Path(folder) if folder is not None else default_calibration_dir()
    if len(CalibrationSet(folder)) == 0:
        print(f"onnxruntime-int8 needs an INT8 calibration set and {folder} has none: making one "
              f"from {Path(clip).name} (once).", file=sys.stderr, flush=True)
        write_calibration_set(clip, folder, landmarker=landmarker)


def _load_points(path: Path) -> np.ndarray:
    """A set's sketch points (N x 68 x 2, in the unit crop); a damaged file raises UserError."""
    try:
        points = np.load(path, allow_pickle=False)
        if points.ndim != 3 or points.shape[1:] != (68, 2) or not np.isfinite(points).all():
            raise ValueError("not N x 68 x 2 finite points")
    except (OSError, ValueError, EOFError):
        raise UserError(f"The INT8 calibration set '{path}' is damaged; delete the folder "
                        f"'{path.parent}' and make it again with --calibration-clip.") from None
    return points


class CalibrationSet:
    """Every set under a calibration folder, as sketches at a given resolution."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        files = sorted(self.root.glob(f"*/{POINTS_FILE}")) + sorted(self.root.glob(POINTS_FILE))
        self.points = [p for f in files for p in _load_points(f)]
        self.files = files

    def __len__(self) -> int:
        return len(self.points)

    def require(self) -> "CalibrationSet":
        if not self.points:
            raise UserError(f"INT8 needs a calibration set and '{self.root}' has none; run "
                            f"`live-puppet build-engine --backend onnxruntime-int8 "
                            f"--calibration-clip CLIP ...` once with a driving clip.")
        return self

    def digest(self) -> str:
        h = hashlib.sha256()
        for p in self.points:
            h.update(np.ascontiguousarray(p, np.float32).tobytes())
        return h.hexdigest()[:16]

    def sketches(self, size: int) -> list[np.ndarray]:
        """The sketches redrawn at `size`: RGB uint8, size x size x 3."""
        return [sketch.draw_sketch(p * size, size) for p in self.points]
