"""Tracking: MediaPipe FaceLandmarker (Tasks API) -> FaceState per picture.

The model asset is found in this order: an explicit path (`--landmarker-model`), the environment
variable LIVE_PUPPET_LANDMARKER, the user cache, and finally a download from Google's official
MediaPipe model storage (progress bar, sha256 checked).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from live_puppet import face_mesh as fm
from live_puppet.errors import UserError
from live_puppet.types import NUM_LANDMARKS, FaceState

MODEL_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
    "face_landmarker.task"
)
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
MODEL_FILENAME = "face_landmarker.task"
ENV_VAR = "LIVE_PUPPET_LANDMARKER"

# The blendshapes MediaPipe reports, in its order (index 0 is "_neutral").
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)


def user_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("live-puppet"))


def resolve_landmarker_model(explicit: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The path of face_landmarker.task, downloading it into the user cache on first use."""
    for given, where in ((explicit, "--landmarker-model"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                state = "is a folder" if path.is_dir() else "does not exist"
                raise UserError(f"The landmarker model '{path}' given by {where} {state}; "
                                f"give the path of a face_landmarker.task file.")
            return path
    cached = user_cache_dir() / MODEL_FILENAME
    if cached.is_file():
        return cached
    if not download:
        raise UserError(f"The face landmarker model is missing; put face_landmarker.task at "
                        f"{cached} or pass --landmarker-model PATH (or set ${ENV_VAR}).")
    return _download(cached)


def _download(dest: Path) -> Path:
    import pooch

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the folder '{dest.parent}' for MediaPipe's face landmarker "
                        f"model ({exc.strerror or exc}); make it writable, or download {MODEL_URL} "
                        f"yourself and pass it with --landmarker-model PATH (or ${ENV_VAR}).") from None
    print(f"Downloading MediaPipe's face landmarker model (3.6 MB) to {dest} ...", flush=True)
    pooch.get_logger().setLevel(logging.WARNING)  # (its own "Downloading data from" line)
    try:
        fetched = pooch.retrieve(MODEL_URL, known_hash=f"sha256:{MODEL_SHA256}", fname=dest.name,
                                 path=dest.parent, progressbar=True)
    except Exception as exc:  # offline, refused, or a checksum mismatch
        offline = " (this machine seems to be offline)" if "Connection" in type(exc).__name__ else ""
        raise UserError(
            f"Could not download the face landmarker model ({type(exc).__name__}{offline}); "
            f"download {MODEL_URL} by hand and put it at {dest}, or pass --landmarker-model PATH "
            f"(or set ${ENV_VAR}).") from None
    return Path(fetched)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hide what MediaPipe's C++ side prints while it starts (graph and delegate chatter)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            sys.stderr.flush()
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class Tracker:
    """One MediaPipe FaceLandmarker; use as a context manager so it is always closed.

    mode "video" tracks a stream (timestamps must increase); mode "image" analyses single pictures.
    """

    def __init__(self, model_path: str | os.PathLike, mode: str = "video", num_faces: int = 1,
                 min_confidence: float = 0.5):
        import mediapipe as mp
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self._mp = mp
        self.mode = mode
        running_mode = (vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE)
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=running_mode,
            num_faces=num_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            with _quiet_native_stderr():
                self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except Exception:
            # Only the copy this tool downloaded may be deleted; a path the user gave is theirs.
            cached = Path(model_path).resolve() == (user_cache_dir() / MODEL_FILENAME).resolve()
            todo = ("delete it and run again to download a fresh copy, or pass a good "
                    "face_landmarker.task to --landmarker-model" if cached else
                    f"pass MediaPipe's face_landmarker.task to --landmarker-model (or set "
                    f"${ENV_VAR} to it)")
            raise UserError(f"'{model_path}' could not be loaded as a MediaPipe face landmarker "
                            f"model; {todo}.") from None
        self._last_ts = -1
        self._warm = False

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def detect_all(self, image_bgr: np.ndarray, timestamp_ms: int | None = None) -> list[FaceState]:
        """Every face found, in MediaPipe's order."""
        if self._landmarker is None:
            raise RuntimeError("tracker is closed")
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        quiet = contextlib.nullcontext() if self._warm else _quiet_native_stderr()
        with quiet:  # the first call prints delegate chatter too
            if self.mode == "video":
                ts = int(timestamp_ms if timestamp_ms is not None else self._last_ts + 33)
                ts = max(ts, self._last_ts + 1)  # MediaPipe insists on strictly increasing timestamps
                self._last_ts = ts
                result = self._landmarker.detect_for_video(image, ts)
            else:
                result = self._landmarker.detect(image)
        self._warm = True
        h, w = image_bgr.shape[:2]
        faces = []
        for i, lms in enumerate(result.face_landmarks):
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lms], dtype=np.float32)
            if len(pts) < NUM_LANDMARKS:
                continue
            pts = pts[:NUM_LANDMARKS]
            shapes = {}
            if result.face_blendshapes and i < len(result.face_blendshapes):
                shapes = {c.category_name: float(c.score) for c in result.face_blendshapes[i]}
            matrix = np.eye(4, dtype=np.float32)
            if result.facial_transformation_matrixes and i < len(result.facial_transformation_matrixes):
                matrix = np.asarray(result.facial_transformation_matrixes[i], dtype=np.float32)
            faces.append(FaceState(landmarks=pts, blendshapes=shapes, matrix=matrix, image_size=(w, h)))
        return faces

    def track(self, image_bgr: np.ndarray, timestamp_ms: int | None = None) -> FaceState | None:
        """The largest face in the picture, or None."""
        faces = self.detect_all(image_bgr, timestamp_ms)
        if not faces:
            return None
        return max(faces, key=lambda f: f.face_size())


class FlowStabilizer:
    """Steadies a stream of landmarks with optical flow (Lucas-Kanade) between frames.

    MediaPipe's landmarks drift and jitter by a few pixels from frame to frame even on a still face
    (measured on d19.mp4: 6 px of landmark motion where the pixels moved 1.3 px), which a warp turns
    into a swimming portrait. Flow follows the pixels precisely over short spans but drifts over
    long ones; MediaPipe has no drift. So each point is predicted by flow and pulled towards
    MediaPipe's estimate: gently when they agree, at once when they disagree by much (fast motion,
    a flow failure). Lips, eyelids, irises and the jaw line take MediaPipe's estimate whole (flow
    loses them when a mouth opens or an eye blinks: with a 0.7 share, d6's one-frame blink kept
    half its lid gap, 0.16 of the eye's width where MediaPipe saw 0.03), placed by the steadied
    head: MediaPipe's mesh is first moved by the similarity that carries its rigid points onto the
    steadied ones. The retargeter's 1-euro filter smooths them after.
    """

    def __init__(self, pull: float = 0.003, agree: float = 0.35, expressive_pull: float = 1.0,
                 window: int = 21, levels: int = 3):
        from live_puppet.calibration import RIGID_POINTS

        self.rigid = RIGID_POINTS
        self.agree = agree  # disagreement (fraction of face size) at which MediaPipe wins outright
        # Share of MediaPipe's estimate taken per frame when it agrees with the flow, per point.
        self.pull = np.full((478, 1), pull, np.float32)
        self.pull[fm.expressive_points()] = expressive_pull
        # Points whose flow is used: all but those that take MediaPipe's estimate whole, and the
        # rigid points, which place MediaPipe's mesh.
        self._flowed = np.union1d(np.flatnonzero(self.pull.ravel() < 1.0), RIGID_POINTS)
        self._lk = dict(winSize=(window, window), maxLevel=levels,
                        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))
        self._gray: np.ndarray | None = None
        self._points: np.ndarray | None = None

    def reset(self) -> None:
        self._gray = self._points = None

    def __call__(self, image_bgr: np.ndarray, face: FaceState | None) -> FaceState | None:
        from live_puppet.calibration import umeyama

        if face is None:
            self.reset()
            return None
        gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        measured = face.landmarks[:, :2].astype(np.float32)
        if self._gray is None or self._gray.shape != gray.shape or len(measured) != len(self.pull):
            self._gray, self._points = gray, measured
            return face
        flowed, status, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, self._points[self._flowed], None,
                                                     **self._lk)
        ok = status.ravel() == 1
        predicted = measured.copy()
        predicted[self._flowed[ok]] = flowed[ok]
        # MediaPipe's mesh, moved onto where the flow says the head is.
        r, s, t = umeyama(measured[self.rigid].astype(np.float64), predicted[self.rigid].astype(np.float64))
        placed = (measured @ (s * r).T + t).astype(np.float32)
        expressive = self.pull > 0.5
        target = np.where(expressive, placed, measured)
        gap = np.linalg.norm(target - predicted, axis=1, keepdims=True)
        gap /= self.agree * max(face.face_size(), 1.0)
        weight = np.clip(self.pull + (1 - self.pull) * gap ** 2, self.pull, 1.0)
        steady = (predicted + weight * (target - predicted)).astype(np.float32)
        self._gray, self._points = gray, steady
        landmarks = face.landmarks.copy()
        landmarks[:, :2] = steady
        return FaceState(landmarks=landmarks, blendshapes=face.blendshapes, matrix=face.matrix,
                         image_size=face.image_size)
