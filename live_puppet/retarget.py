"""Retargeting: the driver's motion, relative to their neutral face, applied to the portrait's face.

The portrait keeps its own face shape. Per frame:
- head motion: the similarity (rotation, scale, translation) that carries the driver's neutral
  face onto the current one, fitted on landmarks that do not move with expression (Umeyama);
- expression: what is left after undoing that motion, i.e. landmark offsets in the neutral face's
  frame, turned into the portrait's head frame (rotation from MediaPipe's transformation
  matrices) and scaled to the portrait's face size;
- both are applied to the portrait's own landmarks, about the portrait's head centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from live_puppet.types import FaceState, Portrait, Target

# MediaPipe face-mesh points that stay put when the face moves its muscles: forehead, nose bridge
# and tip, inner/outer eye corners, temples and the sides of the face at the ears.
RIGID_POINTS = np.array([
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 19, 2, 98, 327,
    33, 133, 263, 362, 234, 454, 127, 356, 21, 251, 54, 284, 103, 332, 67, 297, 109, 338,
])

# MediaPipe's matrices use OpenGL axes (y up, z towards the viewer); landmarks use image axes.
_GL_TO_IMAGE = np.diag([1.0, -1.0, -1.0])


def matrix_rotation(matrix: np.ndarray) -> np.ndarray:
    """The head rotation of a facial transformation matrix, in image axes (x right, y down)."""
    r = np.asarray(matrix, np.float64)[:3, :3]
    u, _, vt = np.linalg.svd(r)  # drop any scale in the matrix
    r = u @ vt
    return _GL_TO_IMAGE @ r @ _GL_TO_IMAGE


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation R, scale s, translation t minimising |s R src + t - dst|² (rows are points)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(len(d))
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    r = (u * sign) @ vt
    var = (a ** 2).sum() / len(src)
    s = float((d * sign).sum() / var) if var > 0 else 1.0
    t = mu_d - s * r @ mu_s
    return r, s, t


def clamp_rotation(r: np.ndarray, max_degrees: float) -> np.ndarray:
    """The same rotation with its angle limited to `max_degrees` (extreme poses tear the image)."""
    vec, _ = cv2.Rodrigues(np.asarray(r, np.float64))
    angle = float(np.linalg.norm(vec))
    limit = math.radians(max_degrees)
    if angle <= limit:
        return r
    out, _ = cv2.Rodrigues(vec * (limit / angle))
    return out


@dataclass
class Neutral:
    """The driver's rest face: motion is measured against it."""

    landmarks: np.ndarray  # 478 x 3
    rotation: np.ndarray  # 3 x 3, image axes
    center: np.ndarray  # (3,) centroid of the rigid points
    size: float  # RMS radius of the rigid points


def _rigid_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    pts = landmarks[RIGID_POINTS].astype(np.float64)
    center = pts.mean(0)
    size = float(np.sqrt(((pts - center) ** 2).sum(1).mean()))
    return center, size


class OneEuroFilter:
    """The 1€ filter (Casiez et al. 2012) on an array: smooth when still, quick when moving."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff, dt):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x, np.zeros_like(x), t
            return x
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x


@dataclass
class RetargetSettings:
    """How the driver's motion is carried over."""

    expression_gain: float = 1.0  # multiplier on expression offsets
    neutral_frames: int = 5  # frames with a face averaged into the automatic neutral
    max_rotation_deg: float = 35.0  # head rotation limit relative to the neutral
    max_scale_change: float = 0.25  # head scale limited to 1 ± this
    max_translation: float = 0.35  # head translation limited to this fraction of the face size
    smoothing_min_cutoff: float = 1.5  # 1€ filter on driver landmarks (Hz); lower = smoother
    smoothing_beta: float = 0.02  # 1€ speed coefficient; higher = less lag when moving


class Retargeter:
    """Turns the driver's FaceState into a Target for the current portrait."""

    def __init__(self, settings: RetargetSettings | None = None):
        self.settings = settings or RetargetSettings()
        self.neutral: Neutral | None = None
        self._pending: list[FaceState] = []
        self._filter = OneEuroFilter(self.settings.smoothing_min_cutoff, self.settings.smoothing_beta)
        self._portrait_id: int | None = None
        self._p_center = np.zeros(3)
        self._p_size = 1.0
        self._p_rotation = np.eye(3)

    # -- neutral -------------------------------------------------------------------------------
    def retake_neutral(self) -> None:
        """Forget the neutral; the next frames with a face become the new one."""
        self.neutral = None
        self._pending.clear()
        self._filter.reset()

    def set_neutral(self, faces: list[FaceState]) -> None:
        """Make the average of these faces the neutral reference."""
        lms = np.mean([f.landmarks for f in faces], axis=0).astype(np.float64)
        rots = np.mean([matrix_rotation(f.matrix) for f in faces], axis=0)
        u, _, vt = np.linalg.svd(rots)
        center, size = _rigid_frame(lms)
        self.neutral = Neutral(landmarks=lms, rotation=u @ vt, center=center, size=size)

    @property
    def calibrating(self) -> bool:
        return self.neutral is None

    # -- portrait ------------------------------------------------------------------------------
    def _use_portrait(self, portrait: Portrait) -> None:
        if self._portrait_id == id(portrait):
            return
        self._portrait_id = id(portrait)
        self._p_center, self._p_size = _rigid_frame(portrait.face.landmarks)
        self._p_rotation = matrix_rotation(portrait.face.matrix)

    # -- per frame -----------------------------------------------------------------------------
    def __call__(self, face: FaceState | None, portrait: Portrait, timestamp: float) -> Target | None:
        """The portrait's target for this driver face; None while calibrating or with no face."""
        self._use_portrait(portrait)
        if face is None:
            return None
        if self.neutral is None:
            self._pending.append(face)
            if len(self._pending) < self.settings.neutral_frames:
                return None
            self.set_neutral(self._pending)
            self._pending.clear()
        s = self.settings
        n = self.neutral
        driver = self._filter(face.landmarks, timestamp)

        # Head motion: the similarity carrying the neutral's rigid points onto the current ones.
        r, scale, t = umeyama(n.landmarks[RIGID_POINTS], driver[RIGID_POINTS])
        # Expression: what remains once that motion is undone, in the neutral's frame.
        undone = (driver - t) @ r / scale
        delta = undone - n.landmarks

        # Into the portrait: neutral head frame -> portrait head frame, driver size -> portrait size.
        size_ratio = self._p_size / n.size
        to_portrait = self._p_rotation @ n.rotation.T
        delta_p = (delta @ to_portrait.T) * size_ratio * s.expression_gain

        r = clamp_rotation(r, s.max_rotation_deg)
        scale = float(np.clip(scale, 1 - s.max_scale_change, 1 + s.max_scale_change))
        move = (r @ n.center * scale + t) - n.center  # how the neutral's centre moved
        move = move * size_ratio
        limit = s.max_translation * 2.5 * self._p_size
        move[:2] = np.clip(move[:2], -limit, limit)
        move[2] = 0.0

        base = portrait.face.landmarks.astype(np.float64) + delta_p
        center = self._p_center
        landmarks = center + scale * (base - center) @ r.T + move
        return Target(landmarks=landmarks.astype(np.float32), rotation=r.astype(np.float32),
                      scale=scale, translation=move.astype(np.float32),
                      center=center.astype(np.float32), blendshapes=dict(face.blendshapes))
