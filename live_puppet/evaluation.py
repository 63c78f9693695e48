"""Measuring sticks: how faithful (`live-puppet eval`) and how fast (`live-puppet bench`) the puppet is.

Both drive the same pipeline as `run` (`App`), headless, with an extra sink that watches every
output frame; capture, tracking, retargeting and rendering are not reimplemented here.

eval, per (portrait, driving clip) pair and engine, scoring frames 1..N (frame 0 of a
self-reenactment is the portrait itself):
- self-reenactment (the clip's first frame is the portrait, so every frame has a ground truth):
  PSNR and SSIM over the whole frame and inside the real face's box grown by 20%;
- both modes: the output is re-tracked with MediaPipe; Pearson r between the driver's and the
  output's key blendshape series, landmark-geometry series (face_features) and head yaw / pitch /
  roll series, the share of output frames with a face, and temporal jitter (mean landmark
  acceleration, in face sizes, output / driver).

bench, per engine and canvas size, in a subprocess of its own (so that the peak RSS belongs to
that configuration): throughput and per-stage latency from the app's own `Stats` (the code behind
`run --stats-json`), with the H.264 recorder as the sink, as `run --record` has it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from live_puppet import face_mesh as fm
from live_puppet.calibration import euler_angles
from live_puppet.capture import VIDEO_SUFFIXES, upright
from live_puppet.errors import UserError
from live_puppet.sinks import FrameInfo, RecorderSink, Sink
from live_puppet.types import FaceState

PSNR_CAP_DB = 100.0  # PSNR of identical pictures (instead of infinity, so that means stay finite)
FACE_BOX_GROWTH = 1.2  # the face box for the face-only scores: the landmarks' box grown by 20%
KEY_SHAPES = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight",
              "browInnerUp", "mouthPucker", "mouthFunnel")
MOVED_SHAPE_STD = 0.03  # a key shape counts as moved by the driver when its series' std is this or more
MOVED_ANGLE_STD = 1.0  # a head angle counts as moved when its std is this many degrees or more
# An output series with a smaller std than these does not move, and its r is taken as 0. MediaPipe in
# video mode drifts slowly on a still picture (measured on the static engine's output of d0, 40
# frames: std up to 0.005 for blendshapes, 0.1 degrees for head angles); Pearson's r ignores
# amplitude, so that drift alone could correlate with the driver's motion.
STILL_SHAPE_STD = 0.01
STILL_ANGLE_STD = 0.5
# Landmark geometry, read off the re-tracked landmarks themselves (lid gaps over eye widths; the
# rest in eye-corner distances, in the face's own frame), blendshape model aside: on a painting
# the blendshapes can sit where they barely respond (Woman in Black's mouthPucker reads 0.007
# through d0.mp4, while her re-tracked mouth narrows with the driver's at r 0.76).
FEATURES = ("eye_right", "eye_left", "mouth_width", "lip_gap", "brow_right", "brow_left",
            "corner_right", "corner_left")
MOVED_FEATURE_STD = 0.01  # a feature counts as moved by the driver when its std is this or more
# MediaPipe in video mode on a still painting: feature std up to 0.0043 (150 frames, each of the
# five ../shared paintings); an output below this does not move and its r is 0.
STILL_FEATURE_STD = 0.005
MIN_SCORED_FRAMES = 10  # a pair with fewer frames than this (a clip ending early) is not scored
CROSS_SHEET_ZOOM = 2.0  # cross-reenactment sheets show a square twice the output face's size
ANGLE_NAMES = ("yaw", "pitch", "roll")


# ----------------------------------------------------------------------------------------------
# Image metrics
# ----------------------------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, cap: float = PSNR_CAP_DB) -> float:
    """Peak signal-to-noise ratio in dB, capped at `cap` (identical pictures)."""
    if a.shape != b.shape:
        raise ValueError(f"PSNR of pictures of different shapes: {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return cap
    return min(cap, 10.0 * math.log10(data_range ** 2 / mse))


SSIM_SIGMA = 1.5  # Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03
SSIM_WINDOW = 11
SSIM_PAD = (SSIM_WINDOW - 1) // 2


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """The SSIM index at each pixel (Gaussian-window SSIM of Wang et al.), averaged over channels.

    Same definition as scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`; computed with OpenCV so that no extra dependency is needed.
    """
    if a.shape != b.shape:
        raise ValueError(f"SSIM of pictures of different shapes: {a.shape} and {b.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA,
                                borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=2) if s.ndim == 3 else s


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM over the picture, leaving out the half-window border (as scikit-image does)."""
    return float(_crop_border(ssim_map(a, b, data_range)).mean())


def _crop_border(m: np.ndarray) -> np.ndarray:
    if min(m.shape[:2]) <= 2 * SSIM_PAD:
        return m
    return m[SSIM_PAD:-SSIM_PAD, SSIM_PAD:-SSIM_PAD]


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive), image pixels


def grow_box(bbox: tuple[float, float, float, float], image_size: tuple[int, int],
             factor: float = FACE_BOX_GROWTH) -> Box:
    """The box scaled by `factor` about its centre, clipped to the picture (w, h)."""
    x0, y0, x1, y1 = bbox
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    w, h = image_size
    return (max(0, int(math.floor(cx - hw))), max(0, int(math.floor(cy - hh))),
            min(w, int(math.ceil(cx + hw))), min(h, int(math.ceil(cy + hh))))


@dataclass(frozen=True)
class ImageScores:
    """A picture against its ground truth."""

    psnr: float
    ssim: float
    psnr_face: float | None  # inside the real face's box (None: no face in the ground truth)
    ssim_face: float | None


def score_image(output: np.ndarray, truth: np.ndarray, face_box: Box | None) -> ImageScores:
    """PSNR and SSIM of the whole picture and inside `face_box` (one SSIM map serves both)."""
    smap = ssim_map(output, truth)
    whole = ImageScores(psnr(output, truth), float(_crop_border(smap).mean()), None, None)
    if face_box is None:
        return whole
    x0, y0, x1, y1 = face_box
    if x1 - x0 < 2 or y1 - y0 < 2:
        return whole
    return ImageScores(whole.psnr, whole.ssim, psnr(output[y0:y1, x0:x1], truth[y0:y1, x0:x1]),
                       float(smap[y0:y1, x0:x1].mean()))


# ----------------------------------------------------------------------------------------------
# Motion metrics
# ----------------------------------------------------------------------------------------------

def head_angles(face: FaceState) -> tuple[float, float, float]:
    """The face's (yaw, pitch, roll) in degrees, from MediaPipe's facial transformation matrix."""
    from live_puppet.retarget import matrix_rotation

    return euler_angles(matrix_rotation(face.matrix))


def face_features(xy: np.ndarray) -> dict[str, float]:
    """FEATURES of one face (478 x 2 landmarks): lid gaps (over the eye's width), mouth width and
    lip gap, brow height above the upper lid, and how far each mouth corner sits above the lips'
    centre (these in distances between the outer eye corners, across the eye line)."""
    across = xy[263] - xy[33]  # the eye-corner line: x of the face's frame
    scale = float(np.linalg.norm(across)) + 1e-6
    up = np.array([across[1], -across[0]]) / scale  # ... and its up

    def height(a: np.ndarray, b: np.ndarray) -> float:
        return float((a - b) @ up) / scale

    lips = (xy[0] + xy[17]) / 2
    return {"eye_right": fm.eye_openness(xy, "right"), "eye_left": fm.eye_openness(xy, "left"),
            "mouth_width": float(np.linalg.norm(xy[61] - xy[291])) / scale,
            "lip_gap": float(np.linalg.norm(xy[13] - xy[14])) / scale,
            "brow_right": height(xy[[105, 66, 107]].mean(0), xy[159]),
            "brow_left": height(xy[[334, 296, 336]].mean(0), xy[386]),
            "corner_right": height(xy[61], lips), "corner_left": height(xy[291], lips)}


def pearson(reference: Sequence[float], follower: Sequence[float],
            still_std: float = 0.0) -> float | None:
    """Pearson's r of a follower series against a reference series.

    None when r says nothing: fewer than 3 samples, or a constant reference. A follower whose std
    is below `still_std` does not move, so it shares none of the reference's motion: r is 0.
    """
    a, b = np.asarray(reference, np.float64), np.asarray(follower, np.float64)
    if len(a) != len(b):
        raise ValueError("pearson: series of different lengths")
    if len(a) < 3 or a.std() == 0.0:
        return None
    if b.std() <= still_std:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def jitter(landmarks: Sequence[np.ndarray | None], sizes: Sequence[float | None]) -> float | None:
    """Mean landmark acceleration |x[t+1] - 2 x[t] + x[t-1]| in face sizes per frame².

    Only triples of consecutive frames that all have a face count; None when there are none.
    """
    values = []
    for t in range(1, len(landmarks) - 1):
        prev, cur, nxt = landmarks[t - 1], landmarks[t], landmarks[t + 1]
        if prev is None or cur is None or nxt is None or not sizes[t]:
            continue
        accel = np.linalg.norm(nxt[:, :2] - 2 * cur[:, :2] + prev[:, :2], axis=1)
        values.append(float(accel.mean()) / float(sizes[t]))
    return float(np.mean(values)) if values else None


# ----------------------------------------------------------------------------------------------
# Per-frame records and their summary
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceSample:
    """What the scores need of one tracked face."""

    shapes: dict[str, float]  # the key blendshapes
    angles: tuple[float, float, float]  # yaw, pitch, roll in degrees
    xy: np.ndarray  # 478 x 2 landmarks, pixels
    size: float  # the landmarks' larger box side, pixels
    features: dict[str, float]  # face_features

    @classmethod
    def of(cls, face: FaceState | None) -> "FaceSample | None":
        if face is None:
            return None
        return cls(shapes={k: float(face.blendshapes.get(k, 0.0)) for k in KEY_SHAPES},
                   angles=head_angles(face), xy=face.xy.astype(np.float32).copy(),
                   size=face.face_size(), features=face_features(face.xy.astype(np.float64)))


@dataclass(frozen=True)
class FrameRecord:
    """One scored output frame."""

    index: int
    image: ImageScores | None  # None without a ground truth (cross-reenactment)
    driver: FaceSample | None  # the face the pipeline tracked in the driving frame
    output: FaceSample | None  # the face found again in the output frame


@dataclass
class MotionScores:
    """How well the output's re-tracked face follows the driver's."""

    expr_r: float | None  # mean Pearson r over the key shapes the driver moves
    expr_amplitude: float | None  # mean over those shapes of std(output) / std(driver)
    shape_r: dict[str, float]  # r per moved key shape
    geometry_r: float | None  # mean Pearson r over the FEATURES the driver moves
    feature_r: dict[str, float]  # r per moved feature
    yaw_r: float | None
    pitch_r: float | None
    roll_r: float | None
    pose_r: float | None  # mean r over the head angles the driver moves
    face_found: float  # share of output frames in which a face was found
    jitter_output: float | None  # mean landmark acceleration, face sizes / frame²
    jitter_driver: float | None
    jitter_ratio: float | None  # output / driver


def moved_shapes(driver_series: dict[str, np.ndarray], min_std: float = MOVED_SHAPE_STD) -> list[str]:
    """The key shapes whose driver series varies by at least `min_std`."""
    return [k for k in KEY_SHAPES if k in driver_series and float(np.std(driver_series[k])) >= min_std]


def score_motion(records: Sequence[FrameRecord]) -> MotionScores:
    """Correlations, amplitudes, face share and jitter over the frames (r over frames with both faces).

    Only what the driver moves is scored: key shapes with std >= MOVED_SHAPE_STD, head angles with
    std >= MOVED_ANGLE_STD degrees; the others are None.
    """
    both = [r for r in records if r.driver is not None and r.output is not None]
    drv_shapes = {k: np.array([r.driver.shapes[k] for r in both]) for k in KEY_SHAPES}
    out_shapes = {k: np.array([r.output.shapes[k] for r in both]) for k in KEY_SHAPES}
    used = moved_shapes(drv_shapes)
    shape_r = {k: pearson(drv_shapes[k], out_shapes[k], STILL_SHAPE_STD) for k in used}
    shape_r = {k: v for k, v in shape_r.items() if v is not None}
    amplitude = [float(out_shapes[k].std() / drv_shapes[k].std()) for k in shape_r]
    drv_features = {k: np.array([r.driver.features[k] for r in both]) for k in FEATURES}
    out_features = {k: np.array([r.output.features[k] for r in both]) for k in FEATURES}
    feature_r = {k: pearson(drv_features[k], out_features[k], STILL_FEATURE_STD)
                 for k in FEATURES if len(both) and drv_features[k].std() >= MOVED_FEATURE_STD}
    feature_r = {k: v for k, v in feature_r.items() if v is not None}

    axis_r: dict[str, float | None] = {}
    for i, name in enumerate(ANGLE_NAMES):
        d = np.array([r.driver.angles[i] for r in both])
        o = np.array([r.output.angles[i] for r in both])
        moved = len(d) > 0 and float(d.std()) >= MOVED_ANGLE_STD
        axis_r[name] = pearson(d, o, STILL_ANGLE_STD) if moved else None

    j_out = jitter([r.output.xy if r.output else None for r in records],
                   [r.output.size if r.output else None for r in records])
    j_drv = jitter([r.driver.xy if r.driver else None for r in records],
                   [r.driver.size if r.driver else None for r in records])
    return MotionScores(
        expr_r=_mean(shape_r.values()), expr_amplitude=_mean(amplitude), shape_r=shape_r,
        geometry_r=_mean(feature_r.values()), feature_r=feature_r,
        yaw_r=axis_r["yaw"], pitch_r=axis_r["pitch"], roll_r=axis_r["roll"],
        pose_r=_mean(axis_r.values()),
        face_found=sum(r.output is not None for r in records) / max(1, len(records)),
        jitter_output=j_out, jitter_driver=j_drv,
        jitter_ratio=(j_out / j_drv) if (j_out is not None and j_drv) else None)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


@dataclass
class PairResult:
    """The scores of one (portrait, driving clip, engine) evaluation."""

    name: str  # "d0" (self) or "mona_lisa~d6" (cross)
    mode: str  # "self" | "cross"
    engine: str
    portrait: str  # the portrait file (for self: the clip, whose frame 0 it is)
    driving: str
    frames: int  # frames scored
    psnr: float | None  # self only: means over frames 1..N
    ssim: float | None
    psnr_face: float | None
    ssim_face: float | None
    expr_r: float | None
    expr_amplitude: float | None
    yaw_r: float | None
    pitch_r: float | None
    roll_r: float | None
    pose_r: float | None
    face_found: float
    jitter_output: float | None
    jitter_driver: float | None
    jitter_ratio: float | None
    geometry_r: float | None = None
    shape_r: dict[str, float] = field(default_factory=dict)
    feature_r: dict[str, float] = field(default_factory=dict)
    canvas: tuple[int, int] = (0, 0)  # output (w, h)
    contact_sheet: str | None = None
    video: str | None = None
    seconds: float = 0.0  # wall time of the evaluation


SCORE_KEYS = ("psnr", "ssim", "psnr_face", "ssim_face", "expr_r", "expr_amplitude", "geometry_r", "yaw_r",
              "pitch_r", "roll_r", "pose_r", "face_found", "jitter_output", "jitter_driver", "jitter_ratio")


def summarize_pair(records: Sequence[FrameRecord], **about) -> PairResult:
    """Means of the image scores and the motion scores of one evaluation."""
    images = [r.image for r in records if r.image is not None]
    motion = score_motion(records)
    return PairResult(
        frames=len(records),
        psnr=_mean(i.psnr for i in images) if images else None,
        ssim=_mean(i.ssim for i in images) if images else None,
        psnr_face=_mean(i.psnr_face for i in images) if images else None,
        ssim_face=_mean(i.ssim_face for i in images) if images else None,
        **asdict(motion), **about)


def summary_row(results: Sequence[PairResult], label: str) -> dict:
    """The mean of each score over the results (scores that are None are left out)."""
    row = {"name": label, "engine": results[0].engine if results else "",
           "frames": sum(r.frames for r in results)}
    for key in SCORE_KEYS:
        row[key] = _mean(getattr(r, key) for r in results)
    return row


# ----------------------------------------------------------------------------------------------
# What a person looks at: the contact sheet and the side-by-side video
# ----------------------------------------------------------------------------------------------

def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    width = max(2, round(w * height / h) // 2 * 2)
    interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _label(image: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5) -> None:
    """White text on a black box, `org` its baseline's left end."""
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    cv2.rectangle(image, (x - 2, y - h - 2), (x + w + 2, y + base), (0, 0, 0), -1)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


class ContactSheet:
    """Thumbnails of chosen frames: one column a frame, the driver above, the output below.

    With `face_zoom`, output tiles show a fixed square around the output's face (found in the first
    chosen frame, grown `face_zoom` times), so that a small face in a large canvas stays visible.
    """

    def __init__(self, indices: Iterable[int], tile_height: int = 200, title: str = "",
                 face_zoom: float | None = None):
        self.indices = set(indices)
        self.tile_height = tile_height
        self.title = title
        self.face_zoom = face_zoom
        self._crop: Box | None = None
        self._tiles: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def offer(self, index: int, driver: np.ndarray, output: np.ndarray,
              output_face: np.ndarray | None = None) -> None:
        """Keep thumbnails of this frame if it is one of the chosen ones (`output_face`: N x 2)."""
        if index not in self.indices:
            return
        if self.face_zoom and self._crop is None and output_face is not None:
            self._crop = square_box(output_face, (output.shape[1], output.shape[0]), self.face_zoom)
        if self._crop is not None:
            x0, y0, x1, y1 = self._crop
            output = output[y0:y1, x0:x1]
        self._tiles[index] = (_fit_height(driver, self.tile_height),
                              _fit_height(output, self.tile_height))

    def render(self) -> np.ndarray:
        """The sheet (BGR); a title strip, then driver and output rows."""
        if not self._tiles:
            raise ValueError("no frames were collected for the contact sheet")
        th, header, gap = self.tile_height, 28, 4
        cols = [self._tiles[i] for i in sorted(self._tiles)]
        widths = [max(d.shape[1], o.shape[1]) for d, o in cols]
        sheet = np.full((header + 2 * th + gap, sum(widths) + gap * (len(cols) - 1), 3), 32, np.uint8)
        x = 0
        for (driver, output), width, index in zip(cols, widths, sorted(self._tiles)):
            for row, tile in enumerate((driver, output)):
                y = header + row * (th + gap)
                ox = x + (width - tile.shape[1]) // 2
                sheet[y:y + th, ox:ox + tile.shape[1]] = tile
            _label(sheet, f"#{index}", (x + 4, header + 18))
            x += width + gap
        bottom = "output, face zoomed" if self._crop is not None else "output"
        _label(sheet, f"{self.title}   top: driver   bottom: {bottom}", (6, 19))
        return sheet

    def save(self, path: Path) -> Path:
        if not cv2.imwrite(str(path), self.render()):
            raise UserError(f"Could not write the contact sheet '{path}'; choose a writable --out folder.")
        return path


def square_box(points: np.ndarray, image_size: tuple[int, int], zoom: float) -> Box:
    """A square around the points' box, its side `zoom` times the box's larger side, kept inside
    the picture (shifted, then clipped when the picture is smaller)."""
    x0, y0 = points[:, :2].min(axis=0)
    x1, y1 = points[:, :2].max(axis=0)
    w, h = image_size
    side = min(float(max(x1 - x0, y1 - y0)) * zoom, w, h)
    cx = float(np.clip((x0 + x1) / 2, side / 2, w - side / 2))
    cy = float(np.clip((y0 + y1) / 2, side / 2, h - side / 2))
    bx0, by0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    return bx0, by0, min(w, bx0 + int(round(side))), min(h, by0 + int(round(side)))


def sheet_indices(first: int, last: int, columns: int, every: int | None = None) -> list[int]:
    """Every k-th frame of first..last: `every` if given, else k chosen for about `columns` frames."""
    count = last - first + 1
    if count <= 0:
        return []
    k = every or max(1, math.ceil(count / max(1, columns)))
    return list(range(first, last + 1, k))


class SideBySide:
    """An H.264 video of driver | output, both scaled to the same height (the run recorder's code)."""

    def __init__(self, path: Path, driver_size: tuple[int, int], output_size: tuple[int, int],
                 fps: float, height: int = 480):
        self.height = min(height, max(driver_size[1], output_size[1])) // 2 * 2
        width = sum(max(2, round(w * self.height / h) // 2 * 2) for w, h in (driver_size, output_size))
        self.path = Path(path)
        self._recorder = RecorderSink(self.path, (width, self.height), fps)

    def write(self, index: int, driver: np.ndarray, output: np.ndarray) -> None:
        frame = np.hstack([_fit_height(driver, self.height), _fit_height(output, self.height)])
        self._recorder.send(np.ascontiguousarray(frame), FrameInfo(index=index))

    def close(self) -> None:
        self._recorder.close()
        if not self._recorder.written:
            raise RuntimeError(f"the side-by-side video '{self.path}' was not written "
                               f"({self._recorder.error or 'no frame came'})")


# ----------------------------------------------------------------------------------------------
# The sink that scores each frame as the pipeline makes it
# ----------------------------------------------------------------------------------------------

class FrameScorer:
    """Scores one output frame against its driving frame; owns the output's video-mode tracker."""

    def __init__(self, landmarker_model: Path, fps: float, ground_truth: bool):
        from live_puppet.tracking import Tracker

        self.tracker = Tracker(landmarker_model, mode="video", num_faces=1)
        self.fps = fps
        self.ground_truth = ground_truth

    def __call__(self, index: int, driver: np.ndarray, driver_face: FaceState | None,
                 output: np.ndarray) -> FrameRecord:
        image = None
        if self.ground_truth:
            if driver.shape != output.shape:
                raise ValueError(f"output {output.shape} and ground truth {driver.shape} differ in size")
            box = None
            if driver_face is not None:
                box = grow_box(driver_face.bbox(), (driver.shape[1], driver.shape[0]))
            image = score_image(output, driver, box)
        out_face = self.tracker.track(output, int(round(index * 1000.0 / self.fps)))
        return FrameRecord(index=index, image=image, driver=FaceSample.of(driver_face),
                           output=FaceSample.of(out_face))

    def close(self) -> None:
        self.tracker.close()


class EvalSink(Sink):
    """Fed by the app alongside the other sinks: scores frames from `first` on, fills the sheet
    and the side-by-side video. An exception is kept in `error` (the app would only drop the sink)."""

    name = "eval"
    wants_canvas = True

    def __init__(self, scorer: FrameScorer, first: int = 1, sheet: ContactSheet | None = None,
                 video_factory: Callable[[np.ndarray, np.ndarray], SideBySide] | None = None):
        self.scorer = scorer
        self.first = first
        self.sheet = sheet
        self._video_factory = video_factory
        self.video: SideBySide | None = None
        self.records: list[FrameRecord] = []
        self.canvas: tuple[int, int] = (0, 0)
        self.error: BaseException | None = None

    def send(self, image: np.ndarray, info: FrameInfo) -> None:
        if info.index < self.first:
            return
        try:
            self._score(image, info)
        except BaseException as exc:
            self.error = exc
            raise

    def _score(self, image: np.ndarray, info: FrameInfo) -> None:
        if info.driver is None:
            raise ValueError("the app passed no driving frame to the evaluation sink")
        self.canvas = (image.shape[1], image.shape[0])
        self.records.append(self.scorer(info.index, info.driver, info.driver_face, image))
        if self.sheet is not None:
            face = self.records[-1].output
            self.sheet.offer(info.index, info.driver, image, face.xy if face is not None else None)
        if self._video_factory is not None:
            if self.video is None:
                self.video = self._video_factory(info.driver, image)
            self.video.write(info.index, info.driver, image)

    def close(self) -> None:
        try:
            if self.video is not None:
                self.video.close()
        except Exception as exc:  # kept for run_eval_task to report (the app would only warn)
            self.error = self.error or exc
        finally:
            self.scorer.close()


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipInfo:
    """A driving clip's size, rate, length and first frame."""

    path: Path
    width: int
    height: int
    fps: float
    frames: int
    first_frame: np.ndarray


def probe_clip(path: Path) -> ClipInfo:
    """Read a clip's header and first frame (decoded by PyAV, as the pipeline's source does)."""
    import av

    path = Path(path)
    if path.is_dir():
        raise UserError(f"'{path}' is a folder; pass one driving video file here.")
    if not path.is_file():
        raise UserError(f"The driving clip '{path}' does not exist; pass a video file or a folder of them.")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.base_rate or 30)
            frame = next(container.decode(stream))
            first = upright(frame)
        frames = 0
        with av.open(str(path)) as container:
            for packet in container.demux(video=0):
                frames += packet.size > 0
    except Exception:
        raise UserError(f"'{path}' could not be read as a video; pass a video file (mp4, mov, "
                        f"mkv, ...).") from None
    return ClipInfo(path=path, width=first.shape[1], height=first.shape[0], fps=fps,
                    frames=frames, first_frame=first)


def expand_clips(paths: Sequence[Path]) -> list[Path]:
    """Video files, with folders replaced by their videos (sorted by name)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir()  # (not hidden files: macOS's "._name.mp4")
                           if q.suffix.lower() in VIDEO_SUFFIXES and not q.name.startswith("."))
            if not found:
                raise UserError(f"The folder '{p}' holds no videos (mp4, mov, mkv, ...); pass "
                                f"video files or a folder of them.")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"The driving clip '{p}' does not exist; pass a video file or a "
                            f"folder of them.")
    return out


def expand_portraits(paths: Sequence[Path]) -> list[Path]:
    """Portrait files, with folders replaced by their images (sorted by name)."""
    from live_puppet.portrait import list_portraits

    out: list[Path] = []
    for p in paths:
        out.extend(list_portraits(Path(p)))
    return out


def parse_engines(text: str) -> list[str]:
    """"warp,static" -> ["warp", "static"], checked against the engine registry."""
    from live_puppet.render.base import engine_names

    names = [n.strip() for n in text.split(",") if n.strip()]
    known = engine_names()
    for n in names:
        if n not in known:
            raise UserError(f"Unknown engine '{n}'; choose from: {', '.join(known)} "
                            f"(several separated by commas).")
    if not names:
        raise UserError("No engine given; pass --engine warp (or several, e.g. warp,static).")
    return names


# ----------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalTask:
    """One evaluation: a driving clip, a portrait (None: the clip's own first frame), an engine."""

    driving: Path
    portrait: Path | None
    engine: str

    @property
    def mode(self) -> str:
        return "self" if self.portrait is None else "cross"

    @property
    def name(self) -> str:
        return self.driving.stem if self.portrait is None else f"{self.portrait.stem}~{self.driving.stem}"


@dataclass
class EvalOptions:
    """How to evaluate (the pipeline options mirror `run`'s)."""

    out_dir: Path
    frames: int | None = None  # score frames 1..N (None: the whole clip)
    sheet_columns: int = 8  # frames on the contact sheet
    sheet_every: int | None = None  # or: every k-th frame
    video: bool = False  # also write a side-by-side mp4
    landmarker_model: Path | None = None
    checkpoint: Path | None = None
    backend: str = "auto"
    engine_dir: Path | None = None  # None: the default engines/ (as `run`)
    size: tuple[int, int] | None = None  # cross-reenactment canvas (self: always the clip's size)
    max_side: int = 1024
    expression_gain: float = 1.0
    feature_gains: dict[str, float] = field(default_factory=dict)  # --feature-gain, as `run`


def eval_config(task: EvalTask, portrait: Path, clip: ClipInfo, options: EvalOptions,
                max_frames: int) -> "RunConfig":
    """The run configuration of an evaluation: the clip as source, headless, every frame in order."""
    from live_puppet.config import RunConfig

    self_reenactment = task.portrait is None
    size = (clip.width, clip.height) if self_reenactment else options.size
    # In self-reenactment the portrait *is* the clip's first frame, so that frame is the driver's
    # neutral (motion relative to the source frame, as in the literature); cross-reenactment
    # calibrates as `run` does.
    neutral = dict(neutral_frames=1, neutral_refine_frames=0, rehome=False) if self_reenactment else {}
    return RunConfig(portrait=portrait, source=str(clip.path), realtime=False, loop=False,
                     landmarker_model=options.landmarker_model, engine=task.engine,
                     checkpoint=options.checkpoint, backend=options.backend, size=size,
                     max_side=options.max_side, expression_gain=options.expression_gain,
                     feature_gains=dict(options.feature_gains),
                     vcam=False, preview=False, record=None, max_frames=max_frames,
                     engine_dir=options.engine_dir, **neutral)


def run_eval_task(task: EvalTask, options: EvalOptions) -> PairResult:
    """Run the pipeline on one task with an EvalSink and summarize what it scored."""
    from live_puppet.app import App
    from live_puppet.tracking import resolve_landmarker_model

    started = time.perf_counter()
    clip = probe_clip(task.driving)
    last = clip.frames - 1 if options.frames is None else min(options.frames, clip.frames - 1)
    if last < 1:
        raise UserError(f"'{clip.path}' has {clip.frames} frame(s); evaluation needs at least 2.")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{task.name}_{task.engine}"
    sheet = ContactSheet(sheet_indices(1, last, options.sheet_columns, options.sheet_every),
                         title=f"{task.name} ({task.mode}) engine={task.engine}",
                         face_zoom=None if task.portrait is None else CROSS_SHEET_ZOOM)
    video_path = options.out_dir / f"{stem}_side_by_side.mp4"
    factory = None
    if options.video:
        def factory(driver, output):
            return SideBySide(video_path, (driver.shape[1], driver.shape[0]),
                              (output.shape[1], output.shape[0]), clip.fps)
    model = resolve_landmarker_model(options.landmarker_model)
    scorer = FrameScorer(model, clip.fps, ground_truth=task.portrait is None)
    sink = EvalSink(scorer, first=1, sheet=sheet, video_factory=factory)
    with tempfile.TemporaryDirectory(prefix="live-puppet-eval-") as tmp:
        portrait = task.portrait
        if portrait is None:
            portrait = Path(tmp) / f"{clip.path.stem}_frame0.png"
            cv2.imwrite(str(portrait), clip.first_frame)
        config = eval_config(task, portrait, clip, options, max_frames=last + 1)
        app = App(config, extra_sinks=[sink])
        app.run()  # the app closes the sink (and its tracker)
    if app.interrupted:
        raise KeyboardInterrupt
    if sink.error is not None:
        raise RuntimeError(f"evaluating {task.name} failed: {sink.error}") from sink.error
    if len(sink.records) < min(last, MIN_SCORED_FRAMES):
        raise UserError(f"Evaluating {task.name} stopped after {len(sink.records)} of {last} frames "
                        f"('{clip.path.name}' ends early); nothing was scored.")
    # (A clip that ends before its header says, damaged or cut short, is scored as far as it goes;
    # the source said so.)
    sheet_path = sheet.save(options.out_dir / f"{stem}_sheet.png")
    return summarize_pair(
        sink.records, name=task.name, mode=task.mode, engine=task.engine,
        portrait=str(task.portrait or clip.path), driving=str(clip.path), canvas=sink.canvas,
        contact_sheet=str(sheet_path), video=str(video_path) if options.video else None,
        seconds=round(time.perf_counter() - started, 2))


def eval_tasks(engines: Sequence[str], clips: Sequence[Path],
               portraits: Sequence[Path] | None) -> list[EvalTask]:
    """Self-reenactment of each clip (portraits None), or every portrait with every clip."""
    pairs = [(c, None) for c in clips] if portraits is None else [(c, p) for p in portraits for c in clips]
    return [EvalTask(driving=c, portrait=p, engine=e) for e in engines for c, p in pairs]


@dataclass(frozen=True)
class Column:
    """A table column: header, the row key, and how to print the value."""

    header: str
    key: str
    fmt: str = "{:.3f}"

    def cell(self, row: dict) -> str:
        value = row.get(self.key)
        if value is None:
            return "-"
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return self.fmt.format(value)


SELF_COLUMNS = (Column("clip", "name", "{}"), Column("engine", "engine", "{}"),
                Column("frames", "frames", "{}"), Column("PSNR dB", "psnr", "{:.2f}"),
                Column("SSIM", "ssim"), Column("PSNR face", "psnr_face", "{:.2f}"),
                Column("SSIM face", "ssim_face"), Column("expr r", "expr_r"),
                Column("expr amp", "expr_amplitude", "{:.2f}"), Column("geom r", "geometry_r"),
                Column("pose r", "pose_r"), Column("face %", "face_found", "{:.1%}"),
                Column("jitter out/drv", "jitter_ratio", "{:.2f}"))
CROSS_COLUMNS = (Column("pair", "name", "{}"), Column("engine", "engine", "{}"),
                 Column("frames", "frames", "{}"), Column("expr r", "expr_r"),
                 Column("expr amp", "expr_amplitude", "{:.2f}"), Column("geom r", "geometry_r"),
                 Column("yaw r", "yaw_r"), Column("pitch r", "pitch_r"), Column("roll r", "roll_r"),
                 Column("pose r", "pose_r"), Column("face %", "face_found", "{:.1%}"),
                 Column("jitter out x1e3", "jitter_output", "{:.2f}"),
                 Column("jitter out/drv", "jitter_ratio", "{:.2f}"))


def format_table(rows: Sequence[dict], columns: Sequence[Column], rule_before: Iterable[int] = ()) -> str:
    """A plain-text table; a rule is drawn before the row indices in `rule_before`."""
    cells = [[c.header for c in columns]] + [[c.cell(r) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    line = lambda row: "  ".join(v.rjust(w) if i else v.ljust(w)  # noqa: E731
                                 for i, (v, w) in enumerate(zip(row, widths)))
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [line(cells[0]), rule]
    breaks = set(rule_before)
    for i, row in enumerate(cells[1:]):
        if i in breaks:
            out.append(rule)
        out.append(line(row))
    return "\n".join(out)


def _scaled_row(row: dict) -> dict:
    """Jitter printed in thousandths of a face size."""
    out = dict(row)
    if out.get("jitter_output") is not None:
        out["jitter_output"] = out["jitter_output"] * 1000.0
    return out


@dataclass
class EvalReport:
    """All results of one `eval` call, with a summary row per engine."""

    mode: str
    frames: int | None
    results: list[PairResult]
    planned: int | None = None  # pairs asked for (more than results when stopped early)

    def summaries(self) -> list[dict]:
        engines = list(dict.fromkeys(r.engine for r in self.results))
        return [summary_row([r for r in self.results if r.engine == e], f"mean ({e})") for e in engines]

    def table(self) -> str:
        columns = SELF_COLUMNS if self.mode == "self" else CROSS_COLUMNS
        rows = [asdict(r) for r in self.results] + self.summaries()
        return format_table([_scaled_row(r) for r in rows], columns, rule_before=[len(self.results)])

    def to_json(self) -> dict:
        return {"mode": self.mode, "frames": self.frames, "psnr_cap_db": PSNR_CAP_DB,
                "pairs_planned": self.planned,
                "complete": self.planned is None or len(self.results) == self.planned,
                "key_shapes": list(KEY_SHAPES), "moved_shape_std": MOVED_SHAPE_STD,
                "features": list(FEATURES), "moved_feature_std": MOVED_FEATURE_STD,
                "results": [asdict(r) for r in self.results], "summary": self.summaries()}


def check_inputs(tasks: Sequence[EvalTask], options: EvalOptions) -> None:
    """Every clip readable and every portrait usable (a face found), before the first pair runs:
    one bad file found half-way would throw away the scores of the pairs before it."""
    from live_puppet.portrait import check_portraits

    for clip in dict.fromkeys(t.driving for t in tasks):
        info = probe_clip(clip)
        if any(t.portrait is None and t.driving == clip for t in tasks):
            _check_first_frame(info, options)
    if any(t.engine == "neural" for t in tasks):
        from live_puppet.training.checkpoint import load_checkpoint

        if options.checkpoint is None:
            raise UserError("The neural engine needs a trained model; pass --checkpoint PATH (a "
                            "safetensors file from `live-puppet train` or `finetune`).")
        load_checkpoint(options.checkpoint)
    portraits = list(dict.fromkeys(t.portrait for t in tasks if t.portrait is not None))
    if portraits:
        check_portraits(portraits, options.landmarker_model, options.size, [options.max_side])


def _check_first_frame(clip: ClipInfo, options: EvalOptions) -> None:
    """A self-reenactment's portrait is its clip's first frame: it must show a face."""
    from live_puppet.portrait import MIN_FACE_PX, find_face, fit_canvas
    from live_puppet.tracking import Tracker, resolve_landmarker_model

    with Tracker(resolve_landmarker_model(options.landmarker_model), mode="image") as tracker:
        # (on the canvas the run gives it: the clip's own size)
        face = find_face(tracker, fit_canvas(clip.first_frame, (clip.width, clip.height), options.max_side))
    if face is None or face.face_size() < MIN_FACE_PX:
        raise UserError(f"The first frame of '{clip.path.name}' shows no face big enough to be the "
                        f"portrait of a self-reenactment; trim the clip to start on a face, or leave "
                        f"it out.")


def run_eval(tasks: Sequence[EvalTask], options: EvalOptions,
             progress: Callable[[str], None] | None = None) -> EvalReport:
    """Evaluate every task in turn. When one stops the evaluation (Ctrl-C, an error), the report
    of the pairs scored before it is attached to the exception as `partial_report`."""
    results: list[PairResult] = []
    report = EvalReport(mode=tasks[0].mode if tasks else "self", frames=options.frames, results=results,
                        planned=len(tasks))
    for i, task in enumerate(tasks, 1):
        if progress:
            progress(f"[{i}/{len(tasks)}] {task.name} engine={task.engine} ...")
        try:
            results.append(run_eval_task(task, options))
        except (KeyboardInterrupt, Exception) as exc:
            exc.partial_report = report  # the pairs scored so far are kept by the caller
            raise
    return report


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------

BENCH_STAGES = (("decode", "capture_wait"), ("track", "track"), ("retarget", "retarget"),
                ("render", "render"), ("sink", "sink"))
GENERATE_STAGE = "generate"  # the neural engine's generator call alone, inside the render stage


@dataclass(frozen=True)
class BenchSpec:
    """One configuration to benchmark (run in a process of its own)."""

    engine: str
    driving: str
    portrait: str
    max_side: int
    size: tuple[int, int] | None = None
    frames: int | None = None  # output frames (None: the whole clip)
    realtime: bool = False  # pace the clip at its fps, dropping frames like a camera
    record: bool = True  # the H.264 recorder as the sink, as `run --record`
    landmarker_model: str | None = None
    checkpoint: str | None = None
    backend: str = "auto"
    engine_dir: str | None = None  # None: the default engines/ (as `run`)
    expression_gain: float = 1.0
    feature_gains: dict[str, float] = field(default_factory=dict)  # --feature-gain, as `run`
    # With --model-config: the preset whose random (untrained) checkpoint is `checkpoint`, and
    # the generator's resolution; None for a trained checkpoint.
    model_config: str | None = None
    model_size: int | None = None
    calibration_dir: str | None = None  # INT8 calibration sets (None: the default calibration/)

    @classmethod
    def from_json(cls, data: dict) -> "BenchSpec":
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        if data.get("size") is not None:
            data["size"] = tuple(data["size"])
        return cls(**data)

    @property
    def model_label(self) -> str | None:
        """What the neural engine runs, for the table: "paper 256px random", or None."""
        if self.engine != "neural":
            return None
        if self.model_config:
            return f"{self.model_config} {self.model_size}px random"
        return Path(self.checkpoint).name if self.checkpoint else None

    @property
    def title(self) -> str:
        """"warp", or "neural paper 256px random onnxruntime": the configuration in a few words."""
        if self.engine != "neural":
            return self.engine
        return " ".join(filter(None, [self.engine, self.model_label, self.backend]))


@dataclass
class BenchResult:
    """What one configuration measured: the app's Stats summary plus memory and machine load."""

    spec: BenchSpec
    canvas: tuple[int, int]  # output (w, h)
    fps: float
    frames_in: int
    frames_out: int
    frames_dropped: int
    latency_ms: dict[str, dict[str, float]]  # stage -> median / p90 / p99
    peak_rss_mb: float  # peak resident memory of the configuration's process
    load_before: tuple[float, float, float]  # os.getloadavg() when it started
    wall_seconds: float
    backend: str | None = None  # the neural engine's backend as resolved (auto -> its choice)


def bench_config(spec: BenchSpec, record_path: Path | None) -> "RunConfig":
    """The run configuration of a benchmark: headless, the clip as source, the recorder as sink."""
    from live_puppet.config import RunConfig

    return RunConfig(portrait=Path(spec.portrait), source=spec.driving, realtime=spec.realtime,
                     landmarker_model=Path(spec.landmarker_model) if spec.landmarker_model else None,
                     engine=spec.engine,
                     checkpoint=Path(spec.checkpoint) if spec.checkpoint else None,
                     backend=spec.backend, size=spec.size, max_side=spec.max_side,
                     expression_gain=spec.expression_gain, feature_gains=dict(spec.feature_gains),
                     vcam=False, preview=False,
                     record=record_path, max_frames=spec.frames,
                     engine_dir=Path(spec.engine_dir) if spec.engine_dir else None,
                     calibration_dir=Path(spec.calibration_dir) if spec.calibration_dir else None)


def bench_worker(spec: BenchSpec, out_json: Path) -> int:
    """Run one configuration in this process; write the Stats summary (as `run --stats-json`
    does) with the canvas size, peak RSS and load average added, or what went wrong (the parent
    process says it). Returns the exit code."""
    from live_puppet.app import App

    load = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="live-puppet-bench-") as tmp:
            record = Path(tmp) / "bench.mp4" if spec.record else None
            app = App(bench_config(spec, record))
            app.run()
            canvas = list(app.portrait.size)
            if app.recorder is not None and app.recorder.error is not None:  # a cut-short run
                raise UserError(f"The benchmark's recording failed ({app.recorder.error}); free "
                                f"some space in the temporary folder, or pass --no-record.")
    except UserError as err:
        out_json.write_text(json.dumps({"user_error": str(err)}))
        return err.exit_code
    except Exception as exc:
        out_json.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    extra = {}
    if spec.engine == "neural":
        extra["backend"] = app.engine.backend  # what --backend auto chose
        # the engine timed its generator alone: one more stage in the summary
        app.stats.samples[GENERATE_STAGE] = list(app.engine.generate_ms)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    app.stats.write_json(out_json, {"spec": asdict(spec), "canvas": canvas,
                                    "peak_rss_mb": round(peak_kb / 1024.0, 1),
                                    "load_before": [round(v, 2) for v in load], **extra})
    return 0


def read_bench_result(data: dict) -> BenchResult:
    return BenchResult(spec=BenchSpec.from_json(data["spec"]), canvas=tuple(data["canvas"]),
                       fps=data["fps"], frames_in=data["frames_in"], frames_out=data["frames_out"],
                       frames_dropped=data["frames_dropped"], latency_ms=data["latency_ms"],
                       peak_rss_mb=data["peak_rss_mb"], load_before=tuple(data["load_before"]),
                       wall_seconds=data["wall_seconds"], backend=data.get("backend"))


def run_bench_spec(spec: BenchSpec, timeout: float = 1800.0) -> BenchResult:
    """Run one configuration in a fresh process (`live-puppet bench --worker`) and read its result."""
    with tempfile.TemporaryDirectory(prefix="live-puppet-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        cmd = [sys.executable, "-m", "live_puppet", "bench", "--worker", str(spec_path),
               "--worker-out", str(out_path)]
        # The worker shares our stderr: its progress bar and warnings show as they happen.
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, timeout=timeout)
        data = json.loads(out_path.read_text()) if out_path.is_file() else {}
        if "user_error" in data:
            raise UserError(data["user_error"])
        if proc.returncode != 0 or "fps" not in data:
            why = data.get("error", f"the worker process ended with exit code {proc.returncode}")
            raise RuntimeError(f"the benchmark of {spec.title} at {spec.max_side} px failed: {why}")
        return read_bench_result(data)


def _stage_cell(latency: dict, stage: str) -> str:
    s = latency.get(stage)
    if not s:
        return "-"
    return f"{s['median']:.1f}/{s['p90']:.1f}/{s['p99']:.1f}"


def bench_rows(results: Sequence[BenchResult]) -> list[dict]:
    rows = []
    for r in results:
        neural = r.spec.engine == "neural"
        row = {"engine": r.spec.engine, "model": r.spec.model_label,
               "backend": (r.backend or r.spec.backend) if neural else None,
               "generate": _stage_cell(r.latency_ms, GENERATE_STAGE) if neural else None,
               "canvas": f"{r.canvas[0]}x{r.canvas[1]}",
               "mode": "realtime" if r.spec.realtime else "all frames",
               "frames": f"{r.frames_out}/{r.frames_in}", "fps": r.fps,
               "dropped": r.frames_dropped, "rss": r.peak_rss_mb,
               "load": r.load_before[0], "c2s": _stage_cell(r.latency_ms, "capture_to_sink")}
        for label, stage in BENCH_STAGES:
            row[label] = _stage_cell(r.latency_ms, stage)
        rows.append(row)
    return rows


def bench_table(results: Sequence[BenchResult]) -> str:
    realtime = any(r.spec.realtime for r in results)
    neural = any(r.spec.engine == "neural" for r in results)
    columns = [Column("engine", "engine", "{}")]
    if neural:
        columns += [Column("model", "model", "{}"), Column("backend", "backend", "{}")]
    columns += [Column("canvas", "canvas", "{}"), Column("mode", "mode", "{}"),
                Column("out/in", "frames", "{}"), Column("fps", "fps", "{:.1f}")]
    columns += [Column(f"{label} ms", label, "{}") for label, _ in BENCH_STAGES]
    if neural:  # the generator's own time, part of the render stage
        columns.insert(-1, Column("generator ms", "generate", "{}"))
    if realtime:
        columns += [Column("capture->sink ms", "c2s", "{}"), Column("dropped", "dropped", "{}")]
    columns += [Column("peak RSS MB", "rss", "{:.0f}"), Column("load 1m", "load", "{:.2f}")]
    return format_table(bench_rows(results), columns)


def bench_specs(engines: Sequence[str], sides: Sequence[int], base: BenchSpec,
                backends: Sequence[str] = (), models: Sequence[dict] = ()) -> list[BenchSpec]:
    """One spec per engine and long side; the neural engine once per model and backend.

    `models`: BenchSpec fields per neural model (checkpoint, model_config, model_size); none:
    the base spec's checkpoint. `backends`: none: the base spec's backend."""
    from dataclasses import replace

    specs = []
    for engine in engines:
        variants = [{}]
        if engine == "neural":
            variants = [{**m, "backend": b} for m in (models or [{}])
                        for b in (backends or [base.backend])]
        specs += [replace(base, engine=engine, max_side=side, **v) for v in variants for side in sides]
    return specs
