"""Named groups of MediaPipe's 478 face-mesh points, shared by retargeting and the engines."""

from functools import lru_cache

import numpy as np

# The face outline, as a closed loop starting at the top of the forehead.
FACE_OVAL = np.array([
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
])
# The inner edge of the lips (the mouth opening), as a closed loop from the right corner.
INNER_LIPS = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308,
                       324, 318, 402, 317, 14, 87, 178, 88, 95])
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
# The same loop as the upper and the lower lip line, each from corner to corner.
UPPER_INNER_LINE = INNER_LIPS[:11]
LOWER_INNER_LINE = np.r_[INNER_LIPS[10:], INNER_LIPS[0]]
MOUTH_CORNERS = (78, 308)
# The outer edge of the lips.
OUTER_LIPS = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291,
                       375, 321, 405, 314, 17, 84, 181, 91, 146])
# Eyelids as closed loops (subject's right eye is on the image's left).
RIGHT_EYE = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7])
LEFT_EYE = np.array([263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249])
RIGHT_IRIS = np.array([468, 469, 470, 471, 472])  # centre first
LEFT_IRIS = np.array([473, 474, 475, 476, 477])
# Upper / lower eyelid points facing each other, the eye's corners and its iris, per eye.
LID_PAIRS = {
    "right": (np.array([246, 161, 160, 159, 158, 157, 173]), np.array([7, 163, 144, 145, 153, 154, 155]),
              (33, 133), RIGHT_IRIS),
    "left": (np.array([466, 388, 387, 386, 385, 384, 398]), np.array([249, 390, 373, 374, 380, 381, 382]),
             (263, 362), LEFT_IRIS),
}
RIGHT_BROW = np.array([70, 63, 105, 66, 107, 55, 65, 52, 53, 46])
LEFT_BROW = np.array([300, 293, 334, 296, 336, 285, 295, 282, 283, 276])


def eye_openness(landmarks: np.ndarray, eye: str) -> float:
    """Mean lid gap over eye width (about 0.3 open, under 0.05 closed)."""
    upper, lower, corners, _ = LID_PAIRS[eye]
    width = np.linalg.norm(landmarks[corners[0], :2] - landmarks[corners[1], :2]) + 1e-6
    return float(np.linalg.norm(landmarks[upper, :2] - landmarks[lower, :2], axis=1).mean() / width)


def expressive_points() -> np.ndarray:
    """Points that move with expression fast and far: lips, eyelids, irises, jaw line."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    parts = (C.FACE_LANDMARKS_LIPS, C.FACE_LANDMARKS_LEFT_EYE, C.FACE_LANDMARKS_RIGHT_EYE,
             C.FACE_LANDMARKS_LEFT_IRIS, C.FACE_LANDMARKS_RIGHT_IRIS)
    idx = {v for part in parts for c in part for v in (c.start, c.end)}
    idx |= set(FACE_OVAL[11:26].tolist())  # the jaw line, ear to ear under the chin
    return np.array(sorted(idx))


@lru_cache(maxsize=1)
def soft_tissue() -> tuple[np.ndarray, np.ndarray]:
    """Cheek, forehead, nose and chin points (all but the expressive points and the brows), and
    for each its neighbours in MediaPipe's face mesh as a padded index array (-1 = none)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    neighbours: list[set[int]] = [set() for _ in range(478)]
    for c in C.FACE_LANDMARKS_TESSELATION:
        neighbours[c.start].add(c.end)
        neighbours[c.end].add(c.start)
    features = set(expressive_points().tolist()) | set(RIGHT_BROW.tolist()) | set(LEFT_BROW.tolist())
    points = np.array([i for i in range(478) if i not in features and neighbours[i]])
    table = np.full((len(points), max(len(neighbours[i]) for i in points)), -1)
    for row, i in enumerate(points):
        table[row, :len(neighbours[i])] = sorted(neighbours[i])
    points.flags.writeable = table.flags.writeable = False  # shared by every caller
    return points, table
