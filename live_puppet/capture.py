"""Capture: sources of driving frames, and the thread that hands over only the newest one.

Sources are plain iterators of BGR images (webcam, video file, folder of images). `Capture` runs one
in a thread. In realtime mode it keeps only the newest frame (latency never builds up; frames the
consumer had no time for are dropped and counted); otherwise every frame is handed over exactly
once, in order.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import re
import queue
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from live_puppet.errors import UserError, warn
from live_puppet.sinks import Letterbox
from live_puppet.types import Frame

MAX_SOURCE_FPS = 240.0  # a rate above this is not a real one (an album cover says 90000): 30 is taken
TRUNCATED_SHARE = 0.9  # a file ending before this share of the duration its header gives is named
AVI_REORDER = 4  # pictures waited for before an AVI's out-of-order times are given out in order
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}  # what counts as a video in a folder


def upright(frame) -> np.ndarray:
    """A decoded video frame (PyAV) as BGR, turned and mirrored as its display matrix says, the way
    FFmpeg's players show it. A phone filming upright stores sideways pictures and a rotation: read
    as stored, the face lies on its side and is not found. A matrix that also mirrors (a selfie
    camera's) was taken for a half turn: the face came out upside down."""
    image = frame.to_ndarray(format="bgr24")
    side = frame.side_data.get("DISPLAYMATRIX")
    matrix = np.frombuffer(bytes(side), np.int32)[:9] if side is not None else None
    theta = round(-(frame.rotation or 0) / 90.0) % 4 * 90  # clockwise turn to show it upright
    # As FFmpeg's autorotate (fftools ffmpeg_filter.c): its transpose / hflip / vflip choices
    # (with OpenCV's flips and turns: numpy's copies cost 10 ms a 1080p frame).
    mirrored_x = matrix is not None and matrix[0] < 0
    mirrored_y = matrix is not None and matrix[4] < 0
    if theta == 90:
        flip = matrix is not None and matrix[3] > 0
        return cv2.transpose(image) if flip else cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if theta == 270:
        flip = matrix is not None and matrix[3] < 0
        return (cv2.flip(cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE), 0) if flip
                else cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE))
    if theta == 180 and matrix is None:
        return cv2.rotate(image, cv2.ROTATE_180)
    if theta == 180 and (mirrored_x or mirrored_y):
        return cv2.flip(image, -1 if mirrored_x and mirrored_y else 1 if mirrored_x else 0)
    if theta == 0 and mirrored_y:
        return cv2.flip(image, 0)
    return image


def natural_order(path: Path) -> tuple:
    """Sort key: numbers by value, so frame2.png comes before frame10.png; case aside, then by the
    name itself (B.jpg and b.jpg, 1.jpg and 01.jpg keep one order whatever the file system)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)], path.name


class Source:
    """A stream of BGR pictures. `is_live` sources are paced by the device itself."""

    is_live = False
    fps = 30.0
    description = "source"
    length: int | None = None  # how many pictures it will give (None: endless or not known)

    def frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def timed_frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        """The pictures with their time in the source in seconds, where the source knows it
        (None: the i-th picture is at i / fps)."""
        for image in self.frames():
            yield image, None

    def request_stop(self) -> None:
        """Ask a `frames()` running in another thread to end soon (e.g. stop retrying a camera)."""

    def close(self) -> None:
        pass


@contextlib.contextmanager
def opencv_quiet():
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


class CameraSource(Source):
    """A webcam by index. A camera that stops delivering is reopened with back-off."""

    is_live = True

    def __init__(self, index: int, size: tuple[int, int] = (640, 480), fps: float = 30.0,
                 max_reopen_wait: float = 5.0):
        self.index = index
        self.size = size
        self.fps = fps
        self.max_reopen_wait = max_reopen_wait
        self.description = f"camera {index}"
        self._stop = threading.Event()
        self._cap = self._open()
        if self._cap is None:
            raise UserError(f"Could not open camera {index}; check that it is connected and not in "
                            f"use by another program, or pass --source VIDEO to drive from a file.")

    def _open(self):
        with opencv_quiet():  # OpenCV logs every backend it tries; our own message says it once
            cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            return None
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        ok, _ = cap.read()
        if not ok:
            cap.release()
            return None
        reported = cap.get(cv2.CAP_PROP_FPS)
        if reported and 1 <= reported <= 240:
            self.fps = float(reported)
        return cap

    def frames(self) -> Iterator[np.ndarray]:
        """The camera's frames; the thread running this owns the device and releases it at the end."""
        wait = 0.25
        lost_at: float | None = None  # when it stopped delivering (None: it delivers)
        try:
            while not self._stop.is_set():
                ok, image = self._cap.read() if self._cap is not None else (False, None)
                if ok:
                    if lost_at is not None:
                        warn(f"{self.description} is back after {time.monotonic() - lost_at:.1f} s.")
                        lost_at = None
                    wait = 0.25
                    yield image
                    continue
                # The camera stopped delivering (unplugged, taken by another program): reopen,
                # backing off (said once, not at every try).
                if lost_at is None:
                    lost_at = time.monotonic()
                    warn(f"{self.description} stopped delivering frames; trying to reopen it (up "
                         f"to every {self.max_reopen_wait:g} s) until it is back or you quit.")
                self._release()
                if self._stop.wait(wait):
                    break  # asked to stop while waiting: do not open the camera again
                wait = min(wait * 2, self.max_reopen_wait)
                self._cap = self._open()
        finally:
            self._release()

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def request_stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._release()  # if frames() never ran (or already ended), this is the only release


class VideoFileSource(Source):
    """A video file, decoded with PyAV; `loop` starts over at the end."""

    def __init__(self, path: Path, loop: bool = False):
        import av

        self.path = Path(path)
        self.loop = loop
        self.description = self.path.name
        if not self.path.exists():
            raise UserError(f"The video '{self.path}' does not exist; pass an existing video file, "
                            f"a folder of images or a camera index to --source.")
        if not self.path.is_file():
            raise UserError(f"'{self.path}' is not a video file (a device or a pipe); pass a video "
                            f"file, a folder of pictures, or a camera by its index (--source 0).")
        if self.path.suffix.lower() in IMAGE_SUFFIXES:
            raise UserError(f"'{self.path}' is a picture, not a video; pass a video file, a folder "
                            f"of pictures or a camera index to --source.")
        covers_only = False
        try:
            with av.open(str(self.path)) as container:
                moving = [v for v in container.streams.video if not _is_cover_art(v)]
                covers_only = bool(container.streams.video) and not moving
                if not moving:
                    raise ValueError("no video stream")
                stream = moving[0]
                self._stream_index = stream.index
                rate = float(stream.average_rate or stream.base_rate or 0)
                self.fps = rate if 0.1 <= rate <= MAX_SOURCE_FPS else 30.0  # (a time-lapse: 0.5)
                frame_count = int(stream.frames or 0)  # 0: the container does not say
                # AVI keeps no presentation times for B-frames: the times FFmpeg guesses come out of
                # order (1, 4, 3, 5, 2 ...) though the pictures come in order; they are sorted back.
                self._reorder = "avi" in container.format.name.split(",")
                # How long the header says the clip is (None: it does not say).
                if stream.duration and stream.time_base:
                    self.seconds_announced = float(stream.duration * stream.time_base)
                elif container.duration:
                    self.seconds_announced = container.duration / 1_000_000
                else:
                    self.seconds_announced = None
                if next(container.decode(stream), None) is None:
                    raise ValueError("no frame")
        except Exception:
            if covers_only:
                raise UserError(f"'{self.path}' holds no video, only sound (its picture is cover "
                                f"art); pass a video file to --source.") from None
            raise UserError(f"'{self.path}' could not be read as a video; pass a video file "
                            f"(mp4, mov, avi, mkv, webm ...) to --source.") from None
        self.length = frame_count if frame_count > 0 and not loop else None
        self._damage_told = self._short_told = False  # each named once, not at every loop

    def frames(self) -> Iterator[np.ndarray]:
        for image, _ in self.timed_frames():
            yield image

    def timed_frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        """Each frame with its own presentation time, so a clip of variable frame rate (as phones
        record) keeps its timing; a loop's passes follow one another."""
        import av

        offset = 0.0
        while True:
            end = offset
            with av.open(str(self.path)) as container:
                stream = container.streams[self._stream_index]
                stream.thread_type = "AUTO"
                decoded = 0
                first = last = None
                for frame, t in self._timed(self._decoded(container, stream, lambda: decoded)):
                    decoded += 1
                    if t is not None:
                        first = t if first is None else first
                        last = t if last is None else max(last, t)
                        t = offset + t - first  # from 0, whatever the container's start
                        if t < end - 1.0 / self.fps:  # times going back (a joined clip)
                            t = end
                        end = max(end, t + 1.0 / self.fps)
                    yield upright(frame), t
            self._say_if_short(decoded, None if first is None else last - first + 1.0 / self.fps)
            if not self.loop:
                return
            offset = end if end > offset else offset + decoded / self.fps

    def _timed(self, frames):
        """(frame, its time in seconds or None). In an AVI the times of pictures that came in
        order are sorted back: each gets the smallest time not yet given, once a few more are in."""
        if not self._reorder:
            for frame in frames:
                yield frame, frame.time
            return
        waiting: collections.deque = collections.deque()
        times: list[float] = []
        for frame in frames:
            waiting.append(frame)
            if frame.time is not None:
                heapq.heappush(times, frame.time)
            if len(waiting) > AVI_REORDER:
                yield waiting.popleft(), heapq.heappop(times) if times else None
        while waiting:
            yield waiting.popleft(), heapq.heappop(times) if times else None

    def _say_if_short(self, decoded: int, played: float | None) -> None:
        """Name a clip that ends well before the duration its header gives (cut short while copying,
        or damaged so that what follows cannot be decoded)."""
        played = played if played is not None else decoded / self.fps
        announced = self.seconds_announced
        if self._short_told or not announced or played >= TRUNCATED_SHARE * announced - 0.2:
            return
        warn(f"'{self.path.name}' ended at {played:.1f} s of the {announced:.1f} s its header "
             f"announces; the file may be incomplete (cut short while copying or downloading?) or "
             f"damaged.")
        self._short_told = True

    def _decoded(self, container, stream, count):
        """The stream's frames; a damaged packet is skipped (said once), as players do."""
        import av

        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.error.InvalidDataError:
                if not self._damage_told:
                    warn(f"'{self.path.name}' is damaged after frame {count()}; the damaged part is "
                         f"skipped.")
                    self._damage_told = True


def _is_cover_art(stream) -> bool:
    """A picture attached to a sound file (an album cover), shown as a one-frame video stream."""
    import av

    return bool(stream.disposition & av.stream.Disposition.attached_pic)


class ImageFolderSource(Source):
    """The pictures of a folder, in name order (numbers by value), at a nominal `fps`."""

    def __init__(self, folder: Path, fps: float = 30.0, loop: bool = False):
        self.folder = Path(folder)
        self.fps = fps
        self.loop = loop
        self.description = self.folder.name
        self.paths = sorted((p for p in self.folder.iterdir()  # (not hidden files: macOS's "._x.png")
                             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                            key=natural_order)
        if not self.paths:
            raise UserError(f"The folder '{self.folder}' holds no images (jpg, png, ...); put the "
                            f"driving frames there or pass a video file to --source.")
        self.length = None if loop else len(self.paths)

    def frames(self) -> Iterator[np.ndarray]:
        unreadable: set[Path] = set()
        told = False  # the count of unreadable pictures is said once, not at every loop
        while True:
            for path in self.paths:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is not None:
                    yield image
                elif path not in unreadable:
                    unreadable.add(path)
                    if len(unreadable) <= 3:
                        warn(f"skipped '{path.name}' in the source folder: it is not a readable picture.")
            if len(unreadable) == len(self.paths):  # (with --loop it went round and round)
                raise UserError(f"None of the {len(self.paths)} pictures in '{self.folder}' can be "
                                f"read; put readable JPEG, PNG, WebP, BMP or TIFF frames there.")
            if len(unreadable) > 3 and not told:
                warn(f"{len(unreadable)} pictures in the source folder could not be read and were skipped.")
            told = True
            if not self.loop:
                return


def open_source(spec: str, loop: bool = False, camera_size=(640, 480), camera_fps=30.0) -> Source:
    """A camera index ("0"), a video file or a folder of images."""
    if not spec.strip():  # (an unset $VIDEO): not the working folder's pictures
        raise UserError("--source is empty; pass a camera index, a video file or a folder of pictures.")
    if spec.startswith("file://"):  # a local file given as an address (dragged from a browser)
        from urllib.parse import unquote, urlparse

        spec = unquote(urlparse(spec).path)
    elif "://" in spec:
        raise UserError(f"'{spec}' is an address; live-puppet reads cameras and local files: download "
                        f"the clip first, or pass a camera index to --source.")
    if spec.isdigit():
        return CameraSource(int(spec), size=camera_size, fps=camera_fps)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, loop=loop)
    return VideoFileSource(path, loop=loop)


class Capture:
    """Runs a Source in a thread and hands frames to one consumer.

    realtime=True: files are paced at their fps and only the newest frame is kept (older ones are
    dropped and counted), as with a camera. realtime=False: every frame exactly once, in order.
    """

    def __init__(self, source: Source, realtime: bool, mirror: bool = False):
        self.source = source
        self.realtime = realtime
        self.mirror = mirror
        self.frames_read = 0
        self.frames_dropped = 0
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._latest: Frame | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._finished = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> "Capture":
        self._thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / max(self.source.fps, 1e-3)
        start = time.perf_counter()
        # Every frame at the first one's size: a folder of pictures of several sizes, a stream whose
        # resolution changes (a browser's recording), a camera reopened at another size. Landmarks
        # are in pixels: the same face at another size read as the head jumping and shrinking.
        size, fit = None, None
        try:
            for i, (image, at) in enumerate(self.source.timed_frames()):
                if self._stop.is_set():
                    break
                at = i * period if at is None else at  # the picture's time in the file
                if self.realtime and not self.source.is_live:
                    delay = start + at - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                h, w = image.shape[:2]
                size = size or (w, h)
                if (w, h) != size:
                    if fit is None or fit.src_size != (w, h):
                        fit = Letterbox((w, h), size)  # (as the camera's frame is fitted)
                    image = fit(image)
                mirrored = self.mirror  # read once: the hotkey may flip it meanwhile
                if mirrored:
                    image = cv2.flip(image, 1)
                now = time.perf_counter()
                media_time = now - start if self.source.is_live else at
                frame = Frame(image=image, timestamp=now, index=i, fps=self.source.fps,
                              media_time=media_time, mirrored=mirrored)
                self.frames_read += 1
                if self.realtime:
                    with self._lock:
                        if self._latest is not None:
                            self.frames_dropped += 1
                        self._latest = frame
                        self._lock.notify()
                else:
                    while not self._stop.is_set():
                        try:
                            self._queue.put(frame, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except BaseException as exc:  # surfaced to the consumer by get()
            self.error = exc
        finally:
            with self._lock:
                self._finished = True
                self._lock.notify_all()

    def get(self, timeout: float = 1.0) -> Frame | None:
        """The next frame, or None when the source has ended (or nothing came within `timeout`).

        `finished` tells the two apart.
        """
        if self.realtime:
            with self._lock:
                if self._latest is None and not self._finished:
                    self._lock.wait(timeout)
                frame, self._latest = self._latest, None
                return frame
        deadline = time.perf_counter() + timeout
        while True:
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._finished and self._queue.empty():
                    return None
                if time.perf_counter() > deadline:
                    return None

    @property
    def finished(self) -> bool:
        """The source has ended and every frame has been handed over."""
        with self._lock:
            done = self._finished and self._latest is None
        return done and self._queue.empty()

    def stop(self) -> None:
        self._stop.set()
        self.source.request_stop()  # a camera waiting to reopen stops waiting
        self._thread.join(timeout=2.0)
        self.source.close()
