"""Calibration: the driver's neutral (rest) face, chosen well, saved per user and reused.

Motion is always measured relative to the neutral, so it must be a relaxed, near-frontal face.
`NeutralPicker` watches the first frames of a session and keeps the calmest (lowest blendshape
activity, smallest head turn). A saved calibration keeps only the face's *shape* (frontalised,
centred, unit size); at the next start it is re-placed where the user sits now, so sitting
elsewhere does not move the portrait.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from live_puppet.errors import UserError
from live_puppet.types import FaceState

# MediaPipe face-mesh points that stay put when the face moves its muscles: forehead, nose bridge
# and tip, inner/outer eye corners, temples and the sides of the face at the ears.
RIGID_POINTS = np.array([
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 19, 2, 98, 327,
    33, 133, 263, 362, 234, 454, 127, 356, 21, 251, 54, 284, 103, 332, 67, 297, 109, 338,
])

# MediaPipe's matrices use OpenGL axes (y up, z towards the viewer); landmarks use image axes.
_GL_TO_IMAGE = np.diag([1.0, -1.0, -1.0])

# Blendshapes that say nothing about expression (gaze) are left out of "activity".
_IGNORED = ("_neutral", "eyeLook")
FORMAT = "live-puppet-calibration/1"


def matrix_rotation(matrix: np.ndarray) -> np.ndarray:
    """The head rotation of a facial transformation matrix, in image axes (x right, y down)."""
    r = np.asarray(matrix, np.float64)[:3, :3]
    u, _, vt = np.linalg.svd(r)  # drop any scale in the matrix
    return _GL_TO_IMAGE @ (u @ vt) @ _GL_TO_IMAGE


def euler_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation in image axes (x right, y down, z forward).

    Decomposition R = Ry(yaw) · Rx(pitch) · Rz(roll): yaw turns about the vertical axis, pitch nods
    about the horizontal one, roll tilts in the picture plane.
    """
    r = np.asarray(rotation, np.float64)
    pitch = math.asin(float(np.clip(-r[1, 2], -1.0, 1.0)))
    yaw = math.atan2(r[0, 2], r[2, 2])
    roll = math.atan2(r[1, 0], r[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The inverse of `euler_angles` (degrees in, 3 x 3 rotation out)."""
    a, b, c = (math.radians(v) for v in (yaw, pitch, roll))
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return ry @ rx @ rz


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


def rigid_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and RMS radius of the rigid points."""
    pts = np.asarray(landmarks, np.float64)[RIGID_POINTS]
    center = pts.mean(0)
    return center, float(np.sqrt(((pts - center) ** 2).sum(1).mean()))


def activity(face: FaceState) -> float:
    """How far a face is from relaxed and frontal: summed expression plus head turn (radians)."""
    expr = sum(v for k, v in face.blendshapes.items() if not k.startswith(_IGNORED))
    r = matrix_rotation(face.matrix)
    turn = math.acos(float(np.clip((np.trace(r) - 1) / 2, -1, 1)))
    return float(expr + 2.0 * turn)


@dataclass
class Neutral:
    """The driver's rest face: motion is measured against it."""

    landmarks: np.ndarray  # 478 x 3, image pixels
    rotation: np.ndarray  # 3 x 3, image axes
    center: np.ndarray  # (3,) centroid of the rigid points
    size: float  # RMS radius of the rigid points
    activity: float = 0.0  # of the faces it was made from (lower is calmer)

    @classmethod
    def from_faces(cls, faces: list[FaceState]) -> "Neutral":
        lms = np.mean([f.landmarks for f in faces], axis=0).astype(np.float64)
        u, _, vt = np.linalg.svd(np.mean([matrix_rotation(f.matrix) for f in faces], axis=0))
        center, size = rigid_frame(lms)
        return cls(landmarks=lms, rotation=u @ vt, center=center, size=size,
                   activity=float(np.mean([activity(f) for f in faces])))

    def shape(self) -> np.ndarray:
        """The face frontalised, centred on its rigid points and scaled to unit size."""
        return ((self.landmarks - self.center) @ self.rotation) / self.size

    def moved_to(self, face: FaceState) -> "Neutral":
        """This neutral moved and scaled to where `face`'s rigid points are (its turn kept)."""
        center, size = rigid_frame(face.landmarks)
        lms = (self.landmarks - self.center) * (size / self.size) + center
        return Neutral(landmarks=lms, rotation=self.rotation, center=center, size=size,
                       activity=self.activity)

    @classmethod
    def place(cls, shape: np.ndarray, face: FaceState, act: float = 0.0) -> "Neutral":
        """A stored shape put where `face` is now (its rigid points' pose, position and size)."""
        r, s, t = umeyama(shape[RIGID_POINTS], face.landmarks[RIGID_POINTS].astype(np.float64))
        lms = s * shape @ r.T + t
        center, size = rigid_frame(lms)
        return cls(landmarks=lms, rotation=matrix_rotation(face.matrix), center=center, size=size,
                   activity=act)


class NeutralPicker:
    """Chooses the neutral from the first `window` frames with a face: the calmest `keep` of them.

    Afterwards, for `refine_frames` more frames, a clearly calmer face (by `margin`) replaces it,
    so a smiling or open-mouthed start does not bend everything after it; but only one in about
    the same place and size (within `stay` of the neutral's head size): the neutral is also where
    the head is at home, and a face passing by (sliding out of the frame, its blendshapes reading
    low) would move home there, leaving the portrait displaced when the user is back.
    """

    def __init__(self, window: int = 5, keep: int = 3, refine_frames: int = 150, margin: float = 0.25,
                 stay: float = 0.5):
        self.window, self.keep = window, keep
        self.refine_frames, self.margin, self.stay = refine_frames, margin, stay
        self._faces: list[FaceState] = []
        self._seen_after = 0

    def reset(self) -> None:
        self._faces.clear()
        self._seen_after = 0

    def offer(self, face: FaceState, current: Neutral | None) -> Neutral | None:
        """A new neutral when this face settles or improves it, else None."""
        if current is None:
            self._faces.append(face)
            if len(self._faces) < self.window:
                return None
            calmest = sorted(self._faces, key=activity)[: self.keep]
            self._faces.clear()
            return Neutral.from_faces(calmest)
        if self._seen_after >= self.refine_frames:
            return None
        self._seen_after += 1
        if activity(face) >= current.activity - self.margin:
            return None
        center, size = rigid_frame(face.landmarks)
        moved = np.linalg.norm((center - current.center)[:2]) / current.size
        if moved > self.stay or abs(math.log(size / current.size)) > self.stay:
            return None
        return Neutral.from_faces([face])


def check_calibration_name(name: str) -> str:
    """`name` if it can name a calibration file; else UserError."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name.startswith("."):
        raise UserError(f"'{name}' is not a usable calibration name; use letters, digits, '-', '_' "
                        f"or '.' (up to 64).")
    return name


def calibration_path(name: str, folder: Path) -> Path:
    return Path(folder) / f"{check_calibration_name(name)}.json"


def save_neutral(neutral: Neutral, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "activity": neutral.activity,
            "shape": np.round(neutral.shape(), 6).tolist()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _is_face_shape(shape: np.ndarray) -> bool:
    """Whether `shape` is what Neutral.shape() writes: a face centred on its rigid points at unit
    size, upright and frontal (eyes above the nose tip, above the mouth, above the chin)."""
    center, size = rigid_frame(shape)
    y = shape[:, 1]
    return bool(0.9 < size < 1.1 and np.linalg.norm(center) < 0.1
                and shape[33, 0] < shape[263, 0]
                and max(y[33], y[263]) < y[1] < y[13] < y[152])


def load_shape(path: Path) -> tuple[np.ndarray, float]:
    """The stored neutral shape (478 x 3) and its activity."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("format")
        shape = np.asarray(data["shape"], np.float64)
        if shape.shape != (478, 3) or not np.isfinite(shape).all() or not _is_face_shape(shape):
            raise ValueError("shape")
        act = float(data.get("activity", 0.0))
        if not np.isfinite(act) or act < 0:
            raise ValueError("activity")
        return shape, act
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"The calibration '{path}' is damaged or not a live-puppet calibration; "
                        f"delete it, and the next start with this name takes your neutral face "
                        f"afresh.") from None
