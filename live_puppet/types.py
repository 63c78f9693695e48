"""The data that flows between the pipeline's stages.

Source --Frame--> Tracker --FaceState--> Retargeter --Target--> Engine --image--> Sinks
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NUM_LANDMARKS = 478


@dataclass(frozen=True)
class Frame:
    """One captured picture."""

    image: np.ndarray  # H x W x 3, uint8, BGR
    timestamp: float  # capture time, time.perf_counter() seconds
    index: int  # 0-based position in the source
    fps: float = 30.0  # the source's nominal rate
    media_time: float = 0.0  # seconds into the stream: a file's own frame times, capture clock for cameras
    mirrored: bool = False  # flipped left-right at capture (hotkey m)


@dataclass(frozen=True)
class FaceState:
    """What the tracker saw of one face in one picture."""

    landmarks: np.ndarray  # 478 x 3 float32: x, y in pixels; z in pixels (MediaPipe's z times width)
    blendshapes: dict[str, float]  # the 52 ARKit-style coefficients, 0..1
    matrix: np.ndarray  # 4 x 4 facial transformation matrix (canonical face -> camera, MediaPipe's)
    image_size: tuple[int, int]  # (width, height) of the picture the landmarks are in

    @property
    def xy(self) -> np.ndarray:
        return self.landmarks[:, :2]

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the landmarks."""
        x0, y0 = self.xy.min(axis=0)
        x1, y1 = self.xy.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def face_size(self) -> float:
        """The larger side of the landmarks' box, in pixels."""
        x0, y0, x1, y1 = self.bbox()
        return max(x1 - x0, y1 - y0)


@dataclass(eq=False)
class Portrait:
    """A picture to animate, with its face analysed once. Compared and hashed by identity: engines
    and the retargeter keep per-portrait state keyed by the object itself (an id() could be
    reused by another portrait once this one is gone)."""

    name: str  # file stem, shown in the overlay
    path: Path | None
    image: np.ndarray  # H x W x 3 uint8 BGR, already resized to the output canvas
    face: FaceState  # landmarks in the coordinates of `image`
    extras: dict = field(default_factory=dict)  # per-engine caches (mesh, embedding, ...)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.image.shape[:2]
        return w, h


@dataclass(frozen=True)
class Target:
    """Where the portrait's landmarks should be now, in the portrait's own pixel frame.

    The head motion is also given as a similarity about `center`, so that points outside the face
    (hair, ears) can follow the head: p' = center + scale * rotation @ (p - center) + translation.
    """

    landmarks: np.ndarray  # 478 x 3 float32, portrait pixels
    rotation: np.ndarray  # 3 x 3 head rotation relative to the neutral (image axes: x right, y down)
    scale: float  # head scale relative to the neutral
    translation: np.ndarray  # (3,) head translation in portrait pixels
    center: np.ndarray  # (3,) the pivot of the head motion in portrait pixels
    blendshapes: dict[str, float] = field(default_factory=dict)  # the driver's expression

    def move_rigid(self, points: np.ndarray) -> np.ndarray:
        """Move N x 3 (or N x 2, taken at the pivot's depth) portrait points with the head."""
        pts = np.asarray(points, np.float32)
        if pts.shape[1] == 2:
            pts = np.concatenate([pts, np.full((len(pts), 1), self.center[2], np.float32)], axis=1)
        moved = self.center + self.scale * (pts - self.center) @ self.rotation.T + self.translation
        return moved.astype(np.float32)
