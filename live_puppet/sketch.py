"""Landmark sketches as the talking-head paper draws them.

MediaPipe's 478 face-mesh points are reduced to the 68 iBUG (300-W / dlib) points, which are drawn
as coloured polylines on black, one colour per face part, inside a square crop box at the
generator's resolution.

The 478 -> 68 mapping (`MEDIAPIPE_TO_IBUG68`, iBUG numbering 1..68 in the comments; "right"/"left"
are the subject's, so "right" parts are on the image's left in an unmirrored picture):

    jaw, 1..17 (right ear -> chin 9 -> left ear):
        127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356
    right brow, 18..22 (outer -> inner):      70, 63, 105, 66, 107
    left brow, 23..27 (inner -> outer):       336, 296, 334, 293, 300
    nose bridge, 28..31 (top -> tip):         168, 197, 5, 4
    nose base, 32..36 (right -> left):        75, 97, 2, 326, 305
    right eye, 37..42 (outer corner, upper lid, inner corner, lower lid):
                                              33, 160, 158, 133, 153, 144
    left eye, 43..48 (inner corner, upper lid, outer corner, lower lid):
                                              362, 385, 387, 263, 373, 380
    outer lips, 49..60 (right corner, upper lip, left corner, lower lip):
                                              61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181
    inner lips, 61..68 (right corner, upper, left corner, lower):
                                              78, 82, 13, 312, 308, 317, 14, 87

MediaPipe's mesh has no points exactly at dlib's jaw positions; the mesh's face-oval points nearest
to them are used, so the jaw line sits on the visible face contour.

Sketch images are RGB uint8, H x W x 3; colours per part are in `PARTS`. Lines are aliased
(cv2.LINE_8) so every drawn pixel has exactly its part's colour: the sketch is a label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MEDIAPIPE_TO_IBUG68: tuple[int, ...] = (
    # jaw 1..17
    127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,
    # right brow 18..22, left brow 23..27
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 28..31, nose base 32..36
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 37..42, left eye 43..48
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 49..60
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # inner lips 61..68
    78, 82, 13, 312, 308, 317, 14, 87,
)


@dataclass(frozen=True)
class SketchPart:
    """One polyline of the sketch: 0-based iBUG indices [start, stop), closed or not, RGB colour."""

    name: str
    start: int
    stop: int
    closed: bool
    color: tuple[int, int, int]


PARTS: tuple[SketchPart, ...] = (
    SketchPart("jaw", 0, 17, False, (0, 255, 0)),
    SketchPart("right_brow", 17, 22, False, (255, 128, 0)),
    SketchPart("left_brow", 22, 27, False, (255, 0, 128)),
    SketchPart("nose_bridge", 27, 31, False, (0, 0, 255)),
    SketchPart("nose_base", 31, 36, False, (0, 255, 255)),
    SketchPart("right_eye", 36, 42, True, (255, 0, 0)),
    SketchPart("left_eye", 42, 48, True, (255, 0, 255)),
    SketchPart("outer_lips", 48, 60, True, (255, 255, 0)),
    SketchPart("inner_lips", 60, 68, True, (128, 128, 255)),
)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels
_SHIFT = 4  # sub-pixel bits for cv2.polylines


def to_ibug68(landmarks: np.ndarray) -> np.ndarray:
    """(478, 2 or 3) MediaPipe landmarks -> (68, 2) iBUG points; (68, k) input is passed through."""
    pts = np.asarray(landmarks, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] < 2 or pts.shape[0] not in (68, 478):
        raise ValueError(f"expected 478 or 68 landmarks, got shape {pts.shape}")
    if pts.shape[0] == 68:
        return pts[:, :2].copy()
    return pts[list(MEDIAPIPE_TO_IBUG68), :2].copy()


def face_box(points: np.ndarray, scale: float = 1.8, lift: float = 0.1) -> Box:
    """A square box around a face: `scale` times the landmarks' larger side, centred on them,
    moved up by `lift` of the side (the landmarks stop at the brows; the head goes higher)."""
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    side = max(x1 - x0, y1 - y0) * scale
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - lift * side
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def box_affine(box: Box, size: int) -> np.ndarray:
    """2x3 matrix taking source pixels to crop pixels (box -> [0, size])."""
    x0, y0, x1, y1 = box
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    return np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]], dtype=np.float64)


def to_crop(points: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Points (N, >=2) in source pixels -> (N, 2) crop pixels."""
    m = box_affine(box, size)
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    return (xy @ m[:, :2].T + m[:, 2]).astype(np.float32)


def crop_image(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The `box` of `image` resampled to size x size; outside the picture is black."""
    return cv2.warpAffine(image, box_affine(box, size), (size, size), flags=cv2.INTER_AREA
                          if (box[2] - box[0]) > size else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def draw_sketch(points68: np.ndarray, size: int, thickness: int | None = None) -> np.ndarray:
    """The coloured sketch of 68 iBUG points given in crop pixels: size x size x 3 RGB uint8."""
    pts = np.asarray(points68, dtype=np.float64)
    if pts.shape[0] != 68:
        raise ValueError(f"draw_sketch needs 68 points, got {pts.shape[0]}")
    if thickness is None:
        thickness = max(1, round(size / 128))
    canvas = np.zeros((size, size, 3), np.uint8)
    fixed = np.round(pts[:, :2] * (1 << _SHIFT)).astype(np.int32)
    for part in PARTS:
        cv2.polylines(canvas, [fixed[part.start:part.stop]], part.closed, part.color,
                      thickness=thickness, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas


def render_sketch(landmarks: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Landmarks (478 MediaPipe or 68 iBUG, source pixels) -> the sketch of `box` at `size`."""
    return draw_sketch(to_crop(to_ibug68(landmarks), box, size), size)
