"""The `neural` engine: the talking-head generator with the portrait folded in, via a Backend.

Per portrait (`prepare`): the square face box of the portrait, ê from the face crop and its sketch,
ψ folded into the generator, compiled by the chosen backend and cached under engines/
(see live_puppet.backends.builder). Per frame (`render`): the target's landmarks are drawn as the
paper's sketch inside that same box, the compiled generator turns it into the face crop, and the
crop is pasted back into the portrait through a soft mask around the old and the new face.

Swapping portraits without stalling the stream:

    engine.prepare_async(new_portrait)     # builds in a background thread, returns a Future
    ... keep calling engine.render(current_portrait, target) ...
    if engine.is_ready(new_portrait): switch to new_portrait

`render` never blocks on a build: for a portrait whose engine is not ready it starts a background
build (if none is running) and returns the portrait at rest until the engine is ready. Prepared
portraits stay loaded (the last few used, never the one on screen), so swapping back is instant.
`close` does not wait for a build in progress (a TensorRT compile can take minutes): builds run on
a daemon thread, so quitting is immediate and a build that finishes after `close` is dropped.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import Future
from pathlib import Path

import cv2
import numpy as np

from live_puppet import sketch
from live_puppet.errors import UserError, warn
from live_puppet.render.base import Engine, register_engine
from live_puppet.types import Portrait, Target

KEEP_PREPARED = 4  # compiled portraits kept in memory for instant swaps
KEEP_TIMINGS = 100_000  # generator times kept (ms per frame, for `live-puppet bench`)


class FacePaster:
    """Pastes a generated face crop back into the portrait through a feathered face mask."""

    def __init__(self, portrait: Portrait, box: sketch.Box, size: int):
        self.size = size
        h, w = portrait.image.shape[:2]
        self.forward = sketch.box_affine(box, size)  # portrait px -> crop px
        self.inverse = cv2.invertAffineTransform(self.forward)
        x0, y0, x1, y1 = box
        # the part of the portrait the crop covers (integer, clipped to the picture)
        self.roi = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
                    min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1))))
        rx0, ry0 = self.roi[:2]
        self.roi_inverse = self.inverse.copy()
        self.roi_inverse[:, 2] -= (rx0, ry0)  # crop px -> roi px
        self.grow = max(2, size // 24)  # mask dilation and feather, crop pixels
        self.rest_mask = self._hull_mask(portrait.face.landmarks)

    def _hull_mask(self, landmarks: np.ndarray) -> np.ndarray:
        pts = self._to_crop(landmarks)
        mask = np.zeros((self.size, self.size), np.uint8)
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255)
        return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                          (2 * self.grow + 1, 2 * self.grow + 1)))

    def _to_crop(self, landmarks: np.ndarray) -> np.ndarray:
        xy = np.asarray(landmarks, np.float64)[:, :2]
        return (xy @ self.forward[:, :2].T + self.forward[:, 2]).astype(np.float32)

    def mask(self, landmarks: np.ndarray) -> np.ndarray:
        """Float32 alpha (size x size, 0..1): the new face and where the old face was, feathered."""
        m = np.maximum(self.rest_mask, self._hull_mask(landmarks))
        k = 2 * self.grow + 1
        return cv2.GaussianBlur(m, (k, k), 0).astype(np.float32) * (1.0 / 255.0)

    def paste(self, image: np.ndarray, face_bgr: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """A copy of `image` with `face_bgr` (crop px) blended in by `alpha` (crop px)."""
        out = image.copy()
        x0, y0, x1, y1 = self.roi
        if x1 <= x0 or y1 <= y0:
            return out
        size = (x1 - x0, y1 - y0)
        face = cv2.warpAffine(face_bgr, self.roi_inverse, size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        a = cv2.warpAffine(alpha, self.roi_inverse, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        region = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = (region + a * (face.astype(np.float32) - region) + 0.5).astype(np.uint8)
        return out


class _BuildWorker:
    """Runs builds one at a time, in order, on a single daemon thread; `submit` returns a Future.

    Not a ThreadPoolExecutor: the interpreter joins those workers at exit (an atexit hook in
    concurrent.futures.thread), so quitting would wait for a running build however it was shut down.
    """

    def __init__(self, name: str):
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule a build after close()")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._jobs.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the Future, like an executor
                future.set_exception(exc)
            else:
                future.set_result(result)
            del job, future, fn, args

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self) -> None:
        """Cancel the builds not started yet; the running one (if any) is not waited for."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
            self._jobs.put(None)  # the thread ends after the build it is running


class _Active:
    """A prepared portrait plus its paster."""

    def __init__(self, prepared, paster: FacePaster):
        self.prepared = prepared
        self.paster = paster


@register_engine("neural")
class NeuralEngine(Engine):
    """The few-shot talking-head generator, folded per portrait and compiled by a backend."""

    name = "neural"

    def __init__(self, checkpoint: str | Path | None = None, backend: str = "auto",
                 engine_dir: str | Path | None = None, progress: bool = True,
                 calibration_dir: str | Path | None = None, **_):
        if not checkpoint:
            raise UserError("The neural engine needs a trained model; pass --checkpoint PATH (a "
                            ".safetensors file from `live-puppet train` or `live-puppet finetune`).")
        from live_puppet.backends.builder import PortraitEngineBuilder

        self.builder = PortraitEngineBuilder(checkpoint, backend=backend, engine_dir=engine_dir,
                                             progress=progress, calibration_dir=calibration_dir)
        self.backend = self.builder.backend_name
        self._ready: OrderedDict[Portrait, _Active] = OrderedDict()
        self._pending: dict[Portrait, Future] = {}
        self._lock = threading.Lock()  # guards _ready, _pending, _on_screen
        self._on_screen: Portrait | None = None  # the portrait rendered last: never evicted
        self._worker = _BuildWorker("neural-build")
        # portraits whose build failed: not retried per frame (forgotten with the portrait)
        self._failed: weakref.WeakKeyDictionary[Portrait, str] = weakref.WeakKeyDictionary()
        # wall ms of each frame's generator call alone (no sketch drawing, no pasting)
        self.generate_ms: deque[float] = deque(maxlen=KEEP_TIMINGS)

    # --- preparing -------------------------------------------------------------------------------
    def _build(self, portrait: Portrait) -> _Active:
        prepared = self.builder.build(portrait)
        active = _Active(prepared, FacePaster(portrait, prepared.inputs.box, prepared.size))
        with self._lock:
            if self._worker.closed:  # finished after close(): dropped
                return active
            key = portrait
            self._failed.pop(key, None)  # a retry that worked: evicted later, it may be rebuilt
            self._ready[key] = active
            self._ready.move_to_end(key)
            # least recently used first; never the new one nor the one on screen
            while len(self._ready) > KEEP_PREPARED:
                victim = next((k for k in self._ready if k != key and k != self._on_screen), None)
                if victim is None:
                    break
                del self._ready[victim]
        return active

    def prepare(self, portrait: Portrait) -> None:
        """Build (or load from the cache) this portrait's engine now, blocking."""
        if self._active(portrait, use=True) is not None:
            return
        future = self._pending.get(portrait)
        if future is not None:
            future.result()
            return
        self._build(portrait)

    def prepare_async(self, portrait: Portrait) -> Future:
        """Build this portrait's engine in the background; `render` keeps working meanwhile."""
        with self._lock:
            if self._worker.closed:
                raise RuntimeError("the neural engine is closed")
            if self._lookup(portrait, use=True) is not None:
                done: Future = Future()
                done.set_result(None)
                return done
            if portrait in self._pending:
                return self._pending[portrait]
            future = self._worker.submit(self._build_in_background, portrait)
            self._pending[portrait] = future
            return future

    def _build_in_background(self, portrait: Portrait) -> None:
        try:
            self._build(portrait)
        except Exception as exc:  # the future holds it; the stream goes on
            if self._worker.closed:
                return  # failed after close(): nobody is listening
            self._failed[portrait] = str(exc) if isinstance(exc, UserError) else \
                f"building the neural engine for '{portrait.name}' failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            with self._lock:
                self._pending.pop(portrait, None)

    def _lookup(self, portrait: Portrait, use: bool = False) -> _Active | None:
        """The portrait's prepared engine or None; `use` marks it most recently used. Lock held."""
        active = self._ready.get(portrait)
        if active is None or active.prepared.portrait is not portrait:
            return None
        if use:
            self._ready.move_to_end(portrait)
        return active

    def _active(self, portrait: Portrait, use: bool = False) -> _Active | None:
        with self._lock:
            return self._lookup(portrait, use)

    def is_ready(self, portrait: Portrait) -> bool:
        return self._active(portrait) is not None

    def prepared(self, portrait: Portrait):
        """The PreparedPortrait (backend, cache key, from_cache, build seconds) or None."""
        active = self._active(portrait)
        return active.prepared if active is not None else None

    # --- rendering -------------------------------------------------------------------------------
    def _generate(self, active: _Active, landmarks: np.ndarray) -> np.ndarray:
        from live_puppet.backends.builder import array_to_bgr, rgb_to_array

        prepared = active.prepared
        drawn = rgb_to_array(sketch.render_sketch(landmarks, prepared.inputs.box, prepared.size))
        start = time.perf_counter()
        image = prepared.runner(drawn)
        self.generate_ms.append((time.perf_counter() - start) * 1000.0)
        return array_to_bgr(image)

    def generate(self, portrait: Portrait, landmarks: np.ndarray) -> np.ndarray:
        """The generator's raw output for `landmarks` (portrait px): R x R x 3 uint8 BGR."""
        active = self._active(portrait, use=True)
        if active is None:
            raise RuntimeError(f"portrait '{portrait.name}' is not prepared")
        return self._generate(active, landmarks)

    def render(self, portrait: Portrait, target: Target | None) -> np.ndarray:
        with self._lock:
            self._on_screen = portrait
            active = self._lookup(portrait, use=True)
            closed = self._worker.closed
        if target is None:
            return portrait.image.copy()
        if active is None:
            if not closed and portrait not in self._pending and portrait not in self._failed:
                # (nobody waits for this build: its failure is said here, once)
                self.prepare_async(portrait).add_done_callback(
                    lambda done: self._say_failure(done, portrait))
            return portrait.image.copy()  # at rest until its engine is ready; never blocks
        face = self._generate(active, target.landmarks)
        return active.paster.paste(portrait.image, face, active.paster.mask(target.landmarks))

    def _say_failure(self, done: Future, portrait: Portrait) -> None:
        if not done.cancelled() and done.exception() is not None and portrait in self._failed:
            warn(f"{self._failed[portrait].rstrip('.')}; '{portrait.name}' stays at rest.")

    def close(self) -> None:
        """Release the prepared portraits; a build in progress is not waited for, and dropped."""
        self._worker.shutdown()  # first: a build finishing from now on is dropped (see _build)
        with self._lock:
            self._ready.clear()
            self._pending.clear()
