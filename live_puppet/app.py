"""The app: wires capture -> tracking -> retargeting -> engine -> sinks, owns hotkeys and stats.

Stages know nothing of the app; the app knows each stage only through its small interface.
"""

from __future__ import annotations

import math
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from live_puppet.calibration import calibration_path, load_shape, save_neutral
from live_puppet.capture import Capture, open_source
from live_puppet.config import RunConfig, default_calibration_dir
from live_puppet.errors import UserError, say, warn
from live_puppet.portrait import Gallery, list_portraits
from live_puppet.render import create_engine
from live_puppet.retarget import Retargeter, RetargetSettings
from live_puppet.sinks import (FrameInfo, Letterbox, PreviewSink, RecorderSink, Sink,
                               VirtualCameraSink, create_sink)
from live_puppet.stats import Stats
from live_puppet.tracking import FlowStabilizer, Tracker, resolve_landmarker_model
from live_puppet.types import Portrait

HOTKEYS = (
    ("1-9", "select portrait 1-9 of the gallery"),
    ("n / p", "next / previous portrait"),
    ("c", "re-take the neutral face (look at the camera, relaxed)"),
    ("+ / -", "more / less expression"),
    ("o", "landmark overlay on/off"),
    ("f", "fps display on/off"),
    ("m", "mirror the camera on/off (the neutral face is re-taken)"),
    ("r", "reload the gallery folder"),
    ("q / Esc", "quit"),
)


def hotkey_help() -> str:
    return "Hotkeys (preview window): " + "; ".join(f"{k} {v}" for k, v in HOTKEYS)


class _KeepGallery(UserError):
    """A re-read gallery folder that cannot be used: the current gallery stays."""


@dataclass
class _Work:
    """A tracked frame on its way from the tracking thread to the render thread."""

    frame: object
    face: object
    portrait: object
    target: object


@dataclass
class _Clock:
    start: float = 0.0

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


class App:
    """One live session. `run()` returns when the source ends, q is pressed, or on Ctrl-C."""

    def __init__(self, config: RunConfig, extra_sinks: list[Sink] | None = None):
        """`extra_sinks` are fed alongside the configured ones (evaluation, benchmarks)."""
        self.config = config
        self.stats = Stats()
        self.stop_requested = threading.Event()
        self.interrupted = False  # stopped by Ctrl-C (or SIGTERM/SIGHUP), not by the source's end
        self.stopped_by: int | None = None  # ... the signal's number
        self.output_failure: str | None = None  # set when the only output failed and the run stopped
        self.sinks: list[Sink] = list(extra_sinks or [])
        self.recorder: RecorderSink | None = None
        self.vcam: VirtualCameraSink | None = None
        self.preview: PreviewSink | None = None
        self._closers: list = []

    # -- setup -----------------------------------------------------------------------------------
    def _open(self) -> None:
        c = self.config
        list_portraits(c.portrait)  # a mistyped portrait path is named before the camera opens
        model = resolve_landmarker_model(c.landmarker_model)
        self.source = open_source(c.source, loop=c.loop, camera_size=c.camera_size,
                                  camera_fps=c.camera_fps)
        self._closers.append(self.source.close)
        self.portrait_tracker = Tracker(model, mode="image", num_faces=4)
        self._closers.append(self.portrait_tracker.close)
        self.gallery = Gallery(c.portrait, self.portrait_tracker, size=c.size, max_side=c.max_side)
        self.engine = create_engine(c.engine, **c.engine_options())
        self._closers.append(self.engine.close)
        # Portraits swapped to are loaded and prepared here, off the render thread (a first load
        # stalled the stream 140 ms, 410 under load); the only user of the portrait tracker from
        # now on. Shut down before the tracker is closed (closers run in reverse).
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portrait-loader")
        self._closers.append(lambda: self._loader.shutdown(wait=True, cancel_futures=True))  # (<1 s)
        self.portrait = self._first_portrait()
        self.retargeter = self._make_retargeter()
        self.tracker = Tracker(model, mode="video", num_faces=1)
        self.stabilizer = FlowStabilizer()
        self._closers.append(self.tracker.close)
        self.letterbox = Letterbox(self.portrait.size, c.vcam_size)
        self.realtime = c.realtime if c.realtime is not None else self.source.is_live
        self._open_sinks()
        self.capture = Capture(self.source, realtime=self.realtime, mirror=c.mirror)

    def _make_retargeter(self) -> Retargeter:
        c = self.config
        gains = {f"{name}_gain": value for name, value in c.feature_gains.items()}
        settings = RetargetSettings(expression_gain=c.expression_gain, **gains,
                                    neutral_frames=c.neutral_frames,
                                    neutral_keep=min(3, c.neutral_frames),
                                    neutral_refine_frames=c.neutral_refine_frames,
                                    rehome_seconds=RetargetSettings.rehome_seconds if c.rehome else math.inf)
        if c.calibration is None:
            return Retargeter(settings)
        path = calibration_path(c.calibration, c.calibration_dir or default_calibration_dir())
        stored = None
        if path.exists():
            stored = load_shape(path)
            print(f"Calibration '{c.calibration}' loaded from {path}.", flush=True)

        def save(neutral) -> None:
            try:
                save_neutral(neutral, path)
            except OSError as exc:
                warn(f"could not save the calibration to {path} ({exc.strerror or exc}); it is used "
                     f"for this session only.")
                return
            say(f"Calibration '{c.calibration}' saved to {path}.")

        return Retargeter(settings, stored_shape=stored, on_neutral=save)

    def _first_portrait(self):
        errors = []
        for i in range(len(self.gallery)):
            try:
                portrait = self.gallery.load(i)
            except UserError as err:
                if len(self.gallery) == 1:
                    raise
                errors.append(err)
                warn(f"skipping: {err}")
                continue
            self._prepare(portrait)
            self._shown = self._wanted = i
            return portrait
        raise UserError(f"None of the {len(errors)} pictures in '{self.config.portrait}' can be used "
                        f"(each is listed above); add a portrait with one clear face.")

    def _prepare(self, portrait) -> None:
        self.engine.prepare(portrait)

    def _open_sinks(self) -> None:
        c = self.config
        if c.record:
            # The rate the encoder plans for (the frames carry their own times): a file's own,
            # a camera's nominal one.
            fps = c.vcam_fps if self.source.is_live else self.source.fps
            self.recorder = create_sink("record", c.record, c.vcam_size, fps)
            self.sinks.append(self.recorder)
        if c.vcam:
            try:
                self.vcam = create_sink("vcam", c.vcam_size, c.vcam_fps, c.vcam_backend)
                self.sinks.append(self.vcam)
                print(f"Virtual camera: {self.vcam.device} ({c.vcam_size[0]}x{c.vcam_size[1]} "
                      f"@ {c.vcam_fps:g} fps)", flush=True)
            except UserError as err:
                if not c.preview and not self.sinks:
                    raise
                warn(f"{err} Continuing without it.")
        if c.preview:
            try:
                self.preview = create_sink("preview", c.overlay_landmarks, c.overlay_fps)
                self.sinks.append(self.preview)
                print(hotkey_help(), flush=True)
            except UserError as err:
                if not self.sinks:
                    raise UserError(f"{err} With no virtual camera either there is nowhere to show "
                                    f"the puppet; set up the virtual camera (see the README) or "
                                    f"pass --record FILE.") from None
                warn(f"{err} Continuing without it.")
        if c.progress and self.preview is None:  # no window (not asked for, or none to open)
            self.sinks.append(create_sink("progress", self._frames_to_come()))

    def _frames_to_come(self) -> int | None:
        """The source frames this run will go through, if known: the file's length, capped by
        --max-frames when every frame is rendered (in realtime, frames are dropped on the way)."""
        cap = None if self.realtime else self.config.max_frames
        known = [n for n in (self.source.length, cap) if n is not None]
        return min(known) if known else None

    # -- hotkeys ---------------------------------------------------------------------------------
    def _switch_portrait(self, index: int | None, reload: bool = False) -> None:
        """Load the portrait (`index`, or the one on screen after re-reading the folder) and prepare
        it in the background; the stream switches when it is ready (a neural engine may take
        seconds to build; the current portrait keeps playing). n and p count from the portrait
        asked for last, even while it loads."""
        shown = self.portrait.path
        if index is not None:
            index %= len(self.gallery)
            self._wanted = index

        def load() -> tuple[Portrait, Future, int]:
            at = index
            if reload:
                try:
                    self.gallery.reload()
                except UserError as err:
                    raise _KeepGallery(f"{err} Keeping the current gallery.") from None
                at = self.gallery.paths.index(shown) if shown in self.gallery.paths else 0
            portrait = self.gallery.load(at)
            # (a quick prepare runs here; a slow one, the neural engine's build, runs on the
            # engine's own worker: this thread does not wait for it)
            return portrait, self.engine.prepare_async(portrait), at

        self._pending = self._loader.submit(load)
        self._adopt_pending()

    def _adopt_pending(self) -> None:
        """Switch to the portrait being loaded once it is loaded and prepared."""
        if self._pending is None or not self._pending.done():
            return
        error = self._pending.exception()
        if error is None:
            portrait, prepared, index = self._pending.result()
            if not prepared.done():
                return
            error = prepared.exception()
        self._pending = None
        if isinstance(error, _KeepGallery):
            warn(str(error))
        elif isinstance(error, UserError):
            warn(f"{error} Keeping '{self.portrait.name}'.")
        elif error is not None:  # a bug: the run stops and says so, as it did in the key's handler
            raise error
        if error is not None:
            self._wanted = self._shown
            return
        self.portrait, self._shown = portrait, index
        self._wanted = index
        print(f"Portrait: {self.portrait.name}", flush=True)

    def handle_key(self, key: int) -> None:
        ch = chr(key) if 0 <= key < 256 else ""
        if ch in ("q", "\x1b"):
            self.stop_requested.set()
        elif ch and ch in "123456789":  # (str.isdigit also takes "²", a key on AZERTY keyboards)
            if int(ch) > len(self.gallery):
                warn(f"there is no portrait {ch}: the gallery has {len(self.gallery)}.")
            else:
                self._switch_portrait(int(ch) - 1)
        elif ch == "n":
            self._switch_portrait(self._wanted + 1)
        elif ch == "p":
            self._switch_portrait(self._wanted - 1)
        elif ch == "c":
            self.retargeter.retake_neutral()
            print("Re-taking the neutral face: look at the camera, relaxed.", flush=True)
        elif ch in ("+", "=", "-"):
            s = self.retargeter.settings
            step = -0.1 if ch == "-" else 0.1
            s.expression_gain = round(min(3.0, max(0.0, s.expression_gain + step)), 2)
            print(f"Expression gain {s.expression_gain:g}", flush=True)
        elif ch == "o" and self.preview:
            self.preview.show_landmarks = not self.preview.show_landmarks
        elif ch == "f" and self.preview:
            self.preview.show_fps = not self.preview.show_fps
        elif ch == "m":
            # The tracking thread starts a new neutral on the first frame captured flipped
            # (frames captured before the key are still on their way).
            self.capture.mirror = not self.capture.mirror
        elif ch == "r":
            self._switch_portrait(None, reload=True)

    # -- the loop ----------------------------------------------------------------------------------
    # Two threads share the work so both cores are used: the tracking thread takes frames from the
    # capture thread, tracks and retargets them; the main thread renders and feeds the sinks (GUI
    # calls must stay on the main thread). In realtime the hand-over keeps only the newest tracked
    # frame (with a queue of two, a renderer slower than the camera drew frames 2 behind: 135 ms
    # from capture to sink on one core where the stages took 56); otherwise every frame, in order.

    def _track_loop(self) -> None:
        st = self.stats
        mirrored = self.config.mirror
        try:
            while not self.stop_requested.is_set():
                t0 = time.perf_counter()
                frame = self.capture.get(timeout=0.5)
                if frame is None:
                    if self.capture.finished:
                        break
                    continue
                st.add("capture_wait", time.perf_counter() - t0)
                clock = _Clock(time.perf_counter())
                if frame.mirrored != mirrored:  # hotkey m: a new view of the user
                    mirrored = frame.mirrored
                    self.stabilizer.reset()
                    self.retargeter.retake_neutral()
                face = self.tracker.track(frame.image, int(frame.media_time * 1000))
                face = self.stabilizer(frame.image, face)
                st.add("track", clock.lap())
                portrait = self.portrait
                target = self.retargeter(face, portrait, frame.media_time)
                st.add("retarget", clock.lap())
                self._put(_Work(frame, face, portrait, target))
        except BaseException as exc:
            self._worker_error = exc
        finally:
            self._put(None, force=True)

    def _put(self, item, force: bool = False) -> None:
        if self.realtime and item is not None:  # live: only the newest tracked frame is worth drawing
            while True:
                try:
                    self._work.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self._work.get_nowait()
                        self._stale_dropped += 1
                    except queue.Empty:
                        pass
        while True:
            try:
                self._work.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self.stop_requested.is_set():
                    continue  # the render thread is still taking frames: never drop one
                if not force:
                    return
                try:  # it has stopped: make room for the end marker
                    self._work.get_nowait()
                except queue.Empty:
                    pass

    def _render_step(self, work: "_Work") -> None:
        self._adopt_pending()
        st = self.stats
        clock = _Clock(time.perf_counter())
        image = self.engine.render(work.portrait, work.target)
        st.add("render", clock.lap())
        if work.face is not None:
            st.frames_with_face += 1
        letterbox = self.letterbox
        if letterbox.src_size != work.portrait.size:
            letterbox = self.letterbox = Letterbox(work.portrait.size, self.config.vcam_size)
        out = letterbox(image)
        info = FrameInfo(index=work.frame.index, media_time=work.frame.media_time,
                         fps=st.live_fps(), portrait_name=work.portrait.name,
                         status=self._status(work.face), driver=work.frame.image,
                         driver_face=work.face, target=work.target)
        if work.target is not None and self.preview and self.preview.show_landmarks:
            info.landmarks = work.target.landmarks
        self._send(out, image, info)
        st.add("sink", clock.lap())
        st.add("capture_to_sink", time.perf_counter() - work.frame.timestamp)
        st.frame_out()
        for key in info.keys:
            self.handle_key(key)

    def _status(self, face) -> str:
        if face is None:
            return "no face in view"
        if self.retargeter.calibrating:
            return "calibrating: look at the camera, relaxed"
        return ""

    def _send(self, letterboxed: np.ndarray, image: np.ndarray, info: FrameInfo) -> None:
        for sink in list(self.sinks):
            try:
                sink.send(image if sink.wants_canvas else letterboxed, info)
            except Exception as exc:
                self.sinks.remove(sink)
                self._close_sink(sink)
                if any(s.delivers for s in self.sinks):
                    warn(f"the {sink.name} output failed ({exc}) and was turned off; the others go on.")
                else:  # nothing would see the frames: rendering on would be wasted time
                    warn(f"the {sink.name} output failed ({exc}); it was the only output, so the run stops.")
                    self.output_failure = f"{sink.name}: {exc}"
                    self.stop_requested.set()

    def _close_sink(self, sink: Sink) -> None:
        try:
            sink.close()
        except Exception as exc:
            warn(f"closing the {sink.name} output failed: {exc}")

    def run(self) -> Stats:
        previous = self._install_signal_handlers()
        try:
            self._open()
            self._started = True
            self.capture.start()
            self._loop()
        finally:
            self._shutdown()
            self._restore_signal_handlers(previous)
        for error in (self._worker_error, self.capture_error):
            if error is not None:
                raise error
        return self.stats

    def _loop(self) -> None:
        c = self.config
        self._work: queue.Queue = queue.Queue(maxsize=1 if self.realtime else 2)
        self._tracking = threading.Thread(target=self._track_loop, name="tracking", daemon=True)
        self._tracking.start()
        while True:
            try:
                work = self._work.get(timeout=0.5)
            except queue.Empty:
                if self.stop_requested.is_set() and not self._tracking.is_alive():
                    break
                continue
            if work is None:
                break
            self._render_step(work)
            if c.max_frames is not None and self.stats.frames_out >= c.max_frames:
                break

    capture_error = None
    _stale_dropped = 0  # tracked frames replaced by a newer one before they were drawn (realtime)
    _pending = None  # the Future of the portrait being loaded and prepared for a swap
    _shown = 0  # the gallery position of the portrait on screen
    _wanted = 0  # ... and of the one asked for last (n and p count from it)
    _worker_error = None
    _tracking = None
    _started = False  # set once everything is open and frames start to flow
    _shutting_down = False

    def _shutdown(self) -> None:
        """Finalize the recording, stop the threads and close everything, whatever happened
        (an error, q, Ctrl-C). Signals are ignored from here on: nothing may cut this short."""
        self._shutting_down = True
        self.stop_requested.set()  # also after an error: the tracking thread must not wait on us
        # The outputs first: the recording is finalized before anything that may take a while.
        for sink in self.sinks:
            self._close_sink(sink)
        self.sinks.clear()
        capture = getattr(self, "capture", None)
        if capture is not None:
            capture.stop()
            if isinstance(capture.error, UserError):
                self.capture_error = capture.error
            elif capture.error is not None:
                warn(f"the source failed: {capture.error}")
        # MediaPipe must not be closed under the tracking thread (it crashes or hangs).
        tracking_alive = self._tracking is not None and self._tracking.is_alive()
        if tracking_alive:
            self._tracking.join(timeout=10.0)
            tracking_alive = self._tracking.is_alive()
        if capture is not None:  # counted once the tracking thread hands over no more
            self.stats.frames_in = capture.frames_read
            self.stats.frames_dropped = capture.frames_dropped + self._stale_dropped
        self.stats.finish()
        for close in reversed(self._closers):
            if tracking_alive and getattr(close, "__self__", None) is getattr(self, "tracker", None):
                warn("the tracking thread did not stop; leaving its face tracker open.")
                continue
            try:
                close()
            except Exception as exc:
                warn(f"while closing: {exc}")
        self._closers.clear()

    # -- signals -------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = {}

        def on_signal(signum, _frame):
            if self._shutting_down:  # already closing: let it finish the recording
                say("Still finishing the recording; one moment." if self.config.record else
                    "Still stopping; one moment.", file=sys.stderr)
                return
            if not self._started:  # still starting (a neural engine may build for minutes)
                raise KeyboardInterrupt
            if self.stop_requested.is_set():  # a second Ctrl-C: stop at once (files still closed)
                raise KeyboardInterrupt
            say("\nStopping (finishing the recording) ..." if self.config.record else "\nStopping ...",
                file=sys.stderr)
            self.interrupted = True
            self.stopped_by = signum
            self.stop_requested.set()

        # SIGHUP: the terminal closed (an SSH session dropped); the recording is finalized too.
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, on_signal)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)
