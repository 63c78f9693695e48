"""Sinks take each finished picture: virtual camera, preview window, recording.

Sinks register by name (like pyvirtualcam's backends). A sink that fails to open or breaks says so
in one line and is dropped; the others keep running. The recorder is always finalized on close.
"""

from __future__ import annotations

import os
import platform
import queue
import sys
import time
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from live_puppet.errors import UserError
from live_puppet.types import FaceState, Target


class Letterbox:
    """Fits pictures of one size into another without distortion (black bars)."""

    def __init__(self, src_size: tuple[int, int], dst_size: tuple[int, int]):
        sw, sh = src_size
        dw, dh = dst_size
        scale = min(dw / sw, dh / sh)
        self.inner = (max(1, round(sw * scale)), max(1, round(sh * scale)))
        self.offset = ((dw - self.inner[0]) // 2, (dh - self.inner[1]) // 2)
        self.src_size, self.dst_size = (sw, sh), (dw, dh)
        self._canvas = np.zeros((dh, dw, 3), np.uint8)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if (image.shape[1], image.shape[0]) == self.dst_size:
            return image
        iw, ih = self.inner
        ox, oy = self.offset
        interp = cv2.INTER_AREA if iw < image.shape[1] else cv2.INTER_LINEAR
        out = self._canvas.copy()
        out[oy:oy + ih, ox:ox + iw] = cv2.resize(image, (iw, ih), interpolation=interp)
        return out


@dataclass
class FrameInfo:
    """What sinks may show about a frame besides its pixels."""

    index: int
    media_time: float | None = None  # seconds into the source (None: index / the source's fps)
    fps: float = 0.0
    portrait_name: str = ""
    landmarks: np.ndarray | None = None  # target landmarks in output pixels (for the overlay)
    status: str = ""  # e.g. "calibrating: look at the camera with a neutral face"
    keys: list[int] = field(default_factory=list)  # filled by the preview: keys pressed
    driver: np.ndarray | None = None  # the driving frame this output was made from (BGR)
    driver_face: "FaceState | None" = None  # what the tracker saw in it
    target: "Target | None" = None  # what the engine was asked to show (None: at rest)


class Sink:
    """Takes each finished picture. `wants_canvas`: the portrait-sized picture, not the
    letterboxed camera frame."""

    name = "sink"
    wants_canvas = False
    delivers = True  # the frames reach someone (camera, window, file); a progress bar does not

    def send(self, image: np.ndarray, info: FrameInfo) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


SINKS: dict[str, Callable[..., Sink]] = {}


def register_sink(name: str):
    def deco(cls):
        SINKS[name] = cls
        cls.name = name
        return cls

    return deco


def create_sink(name: str, *args, **kwargs) -> Sink:
    """The sink registered as `name` ("vcam", "preview", "progress", "record"), opened."""
    if name not in SINKS:
        raise ValueError(f"no sink named {name!r}; registered: {', '.join(sorted(SINKS))}")
    return SINKS[name](*args, **kwargs)


def vcam_setup_hint() -> str:
    system = platform.system()
    if system == "Linux":
        return ("install v4l2loopback and load it with: sudo modprobe v4l2loopback devices=1 "
                "exclusive_caps=1 card_label=live-puppet")
    return "install OBS Studio (28 or newer) and start its Virtual Camera once so the device exists"


@register_sink("vcam")
class VirtualCameraSink(Sink):
    """Sends frames (already letterboxed to its size) to a virtual camera via pyvirtualcam."""

    def __init__(self, size: tuple[int, int], fps: float, backend: str | None = None):
        import pyvirtualcam

        try:
            self.cam = pyvirtualcam.Camera(width=size[0], height=size[1], fps=fps,
                                           fmt=pyvirtualcam.PixelFormat.BGR, backend=backend)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"No virtual camera device could be opened ({first}); "
                            f"{vcam_setup_hint()}, or pass --no-vcam.") from None
        self.device = self.cam.device
        self.frames_sent = 0

    def send(self, image: np.ndarray, info: FrameInfo) -> None:
        self.cam.send(image)
        self.frames_sent += 1

    def close(self) -> None:
        self.cam.close()


def display_available() -> bool:
    """Whether a window can be opened (on Linux: an X11 or Wayland display, or Qt offscreen)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal"))


@register_sink("preview")
class PreviewSink(Sink):
    """An OpenCV window with an overlay; reports the keys pressed (the app maps them to actions)."""

    WINDOW = "live-puppet"
    wants_canvas = True

    def __init__(self, show_landmarks: bool = False, show_fps: bool = True):
        self.show_landmarks = show_landmarks
        self.show_fps = show_fps
        if not display_available():  # Qt would abort the whole process, not raise
            raise UserError("No display is available for the preview window; pass --no-preview "
                            "to run headless.")
        try:
            cv2.namedWindow(self.WINDOW, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
        except cv2.error:
            raise UserError("No display is available for the preview window; pass --no-preview "
                            "to run headless.") from None

    def send(self, image: np.ndarray, info: FrameInfo) -> None:
        view = image.copy()
        if self.show_landmarks and info.landmarks is not None:
            for x, y in info.landmarks[:, :2].astype(np.int32):
                cv2.circle(view, (int(x), int(y)), 1, (80, 255, 80), -1, cv2.LINE_AA)
        lines = [info.portrait_name]
        if self.show_fps:
            lines.append(f"{info.fps:5.1f} fps")
        if info.status:
            lines.append(info.status)
        for i, text in enumerate(lines):
            org = (10, 24 + 22 * i)
            cv2.putText(view, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(view, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.imshow(self.WINDOW, view)
        key = cv2.waitKey(1)
        if key != -1:
            info.keys.append(key & 0xFF)
        try:
            if cv2.getWindowProperty(self.WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                info.keys.append(ord("q"))  # the window was closed
        except cv2.error:
            pass

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.WINDOW)
            cv2.waitKey(1)
        except cv2.error:
            pass


@register_sink("progress")
class ProgressSink(Sink):
    """A progress bar (tqdm) for runs with no window to watch: the source's frames gone by, of
    how many, and the rate. When frames are dropped (realtime) the frames drawn and their rate are
    shown beside it: the bar's own rate is the source's. On stderr it shows only on a terminal
    (logs and pipes stay clean)."""

    name = "progress"
    delivers = False

    def __init__(self, total: int | None, description: str = "rendering", file=None):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=description, unit="frame", dynamic_ncols=True,
                        file=file or sys.stderr, disable=None if file is None else False)
        self.drawn = 0
        self._first: float | None = None

    def send(self, image: np.ndarray, info: FrameInfo) -> None:
        now = time.perf_counter()
        self._first = self._first or now
        self.drawn += 1
        if self.drawn < info.index + 1:  # frames were dropped on the way
            rate = (self.drawn - 1) / (now - self._first) if now > self._first else 0.0
            self.bar.set_postfix_str(f"drawn {self.drawn} ({rate:.1f}/s)", refresh=False)
        self.bar.update(info.index + 1 - self.bar.n)  # source frames gone by, also those dropped

    def close(self) -> None:
        self.bar.close()


RECORD_SUFFIXES = {".mp4", ".mkv", ".mov", ".m4v"}  # containers that keep H.264 and its timing
MS = Fraction(1, 1000)  # the recorder's timestamps are in milliseconds


@register_sink("record")
class RecorderSink(Sink):
    """Writes every frame it is sent to an H.264 file through PyAV, encoding on its own thread.

    Each frame is stamped with its time in the source, to the millisecond, so the recording
    plays at the source's speed (a file's rate, a camera's capture times) and a frame the pipeline
    dropped is a longer frame, not a jump forward. `fps` is the nominal rate the encoder plans
    for. Frames are never dropped here (the queue blocks when full). `close` flushes the encoder
    and writes the file's index, so the recording is playable after any exit.

    The file is written under a hidden name beside `path` (`.NAME.PID.recording.mp4`) and moved
    into place when closed, even by a run stopping on an error; a recording that itself fails (a
    full disk) is not moved, so it keeps an earlier recording of that name. While it
    records, it holds a lock on `.NAME.lock` (released by the system however the process ends),
    and a second recorder of the same name is refused (POSIX systems; elsewhere not checked).
    """

    def __init__(self, path: Path, size: tuple[int, int], fps: float, crf: int = 20):
        import av

        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise UserError(f"Cannot record to '{self.path}': the folder '{self.path.parent}' "
                            f"does not exist; create it or choose another path.")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.partial = self.path.with_name(f".{self.path.stem}.{os.getpid()}.recording{self.path.suffix}")
        self._lock = _lock_recording(self.path)
        try:
            self.container = av.open(str(self.partial), mode="w")
        except Exception as exc:
            self._unlock()
            raise UserError(f"Cannot write the recording '{self.path}' ({exc}); choose a writable "
                            f"path ending in .mp4, .mkv, .mov or .m4v.") from None
        self.stream = self.container.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = self.stream.time_base = MS
        self.stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        self._last_pts = -1
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import av

        while True:
            item = self._queue.get()
            if item is None:
                break
            if self.error is not None:
                continue
            image, seconds = item
            try:
                frame = av.VideoFrame.from_ndarray(image, format="bgr24")
                frame.pts = self._last_pts = max(round(seconds * 1000), self._last_pts + 1)
                frame.time_base = MS  # (the muxer changes the stream's own on writing the header)
                for packet in self.stream.encode(frame):
                    self.container.mux(packet)
            except Exception as exc:  # disk full, ...: keep draining, report on close
                self.error = exc

    _placed = False  # this run's recording was moved into place

    def send(self, image: np.ndarray, info: FrameInfo) -> None:
        if self.error is not None:
            raise RuntimeError(str(self.error))
        seconds = info.media_time if info.media_time is not None else info.index / float(self.rate)
        self._queue.put((image, seconds))

    def close(self) -> None:
        try:
            try:
                self._queue.put(None)
                self._thread.join()
                for packet in self.stream.encode(None):
                    self.container.mux(packet)
            finally:
                self.container.close()  # writes the index
            if self.error is None and self.partial.exists():  # (no frame came: no file was made)
                try:
                    os.replace(self.partial, self.path)
                    self._placed = True
                except OSError as exc:
                    self.error = exc  # what was recorded stays in self.partial
                    raise
        except Exception as exc:  # disk full, ...: the run reports it
            self.error = self.error or exc
            raise
        finally:
            self._unlock()

    @property
    def written(self) -> bool:
        """Whether the recording exists under its name (some frames came, and all went well)."""
        return self.error is None and self._placed  # (not an earlier take of the same name)

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                os.unlink(lock.name)  # no litter beside the recording
            except OSError:
                pass
            lock.close()


def _lock_recording(path: Path):
    """An open lock file held exclusively while `path` is being recorded; UserError when another
    process holds it. None where the system has no flock."""
    try:
        import fcntl
    except ImportError:
        return None
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        lock = open(lock_path, "a")
    except OSError:
        return None  # the folder's writability is checked elsewhere
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UserError(f"Another run is recording to '{path}' right now; choose another file "
                        f"name.") from None
    return lock
