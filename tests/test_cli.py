"""End to end: the command a user runs, on real clips, through a fake virtual camera."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import DRIVING, PORTRAITS, ROOT, need, numbered_frames, write_video
from live_puppet.cli import main
from live_puppet.sinks import Sink


def count_frames(path: Path) -> tuple[str, int]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return stream.codec_context.name, sum(1 for _ in c.decode(stream))


def test_mona_lisa_driven_by_d19_through_a_fake_camera_and_a_recording(tmp_path, fake_vcam, landmarker_model):
    portrait = need(PORTRAITS / "mona_lisa.jpg")
    clip = need(DRIVING / "d19.mp4")
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    code = main(["run", "--portrait", str(portrait), "--source", str(clip), "--no-preview",
                 "--no-realtime", "--vcam-backend", "fake", "--max-frames", "90",
                 "--record", str(out), "--stats-json", str(stats)])
    assert code == 0
    cam = fake_vcam.instances[0]
    assert len(cam.frames) == 90 and cam.closed
    assert count_frames(out) == ("h264", 90)
    summary = json.loads(stats.read_text())
    assert summary["frames_out"] == 90 and summary["frames_with_face"] == 90
    for stage in ("capture_wait", "track", "retarget", "render", "sink", "capture_to_sink"):
        assert set(summary["latency_ms"][stage]) == {"median", "p90", "p99"}
    # The camera got the portrait letterboxed into 1280x720, not stretched: black side bars.
    frame = cam.frames[-1].reshape(720, 1280, 3)
    assert frame[:, :300].max() == 0 and frame[:, 500:780].mean() > 30


def test_the_portrait_moves_with_the_driver(tmp_path, landmarker_model):
    """Frames differ from the still portrait where the driver moves, and stay put far away."""
    portrait = need(PORTRAITS / "mona_lisa.jpg")
    clip = need(DRIVING / "d0.mp4")  # strong expressions
    out = tmp_path / "out.mp4"
    assert main(["run", "--portrait", str(portrait), "--source", str(clip), "--no-preview",
                 "--no-vcam", "--no-realtime", "--record", str(out), "--vcam-size", "576x1024"]) == 0
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="bgr24").astype(np.int16) for f in c.decode(video=0)]
    first = frames[0]
    change = [np.abs(f - first).mean(axis=2) for f in frames]
    face = max(float(ch[180:370, 210:380].mean()) for ch in change)
    corner = max(float(ch[-150:, :150].mean()) for ch in change)
    assert face > 4 and corner < 1.5


def run_cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "run_live.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def run_command(*args, timeout=120):
    """`live-puppet COMMAND ...` (eval, train, prepare ...)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "live_puppet", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_clear_line(result, pattern):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("live-puppet: error:")]
    assert len(errors) == 1 and pattern in errors[0], result.stderr


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", numbered_frames(5))


def test_a_headless_run_shows_how_far_through_the_file_it_is(tmp_path, monkeypatch, astronaut, landmarker_model):
    import io

    import live_puppet.sinks as sinks_module
    from live_puppet.sinks import ProgressSink

    shown = io.StringIO()
    monkeypatch.setitem(sinks_module.SINKS, "progress", lambda total: ProgressSink(total, file=shown))
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 12)
    assert main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                 "--no-realtime", "--record", str(tmp_path / "out.mp4")]) == 0
    assert "12/12" in shown.getvalue().splitlines()[-1]
    for realtime, total in (("--no-realtime", "5/5"), ("--realtime", "/12")):
        shown.seek(0)
        shown.truncate(0)
        assert main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                     realtime, "--record", str(tmp_path / "out.mp4"), "--max-frames", "5"]) == 0
        # In realtime, frames are dropped on the way: five out may be more than five of the file.
        assert total in shown.getvalue().splitlines()[-1]


def test_the_done_line_accounts_for_every_frame_read(tmp_path, capsys, astronaut, landmarker_model):
    # "Done: 60 frames out of 64 in, 0 dropped": 4 frames read ahead before --max-frames stopped
    # the run were counted nowhere.
    import re

    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 30)
    assert main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                 "--no-realtime", "--max-frames", "5"]) == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Done")][-1]
    out, read, dropped = map(int, re.search(r"(\d+) frames out of (\d+) in, (\d+) dropped", done).groups())
    unused = re.search(r", (\d+) read ahead unused", done)
    assert out + dropped + (int(unused.group(1)) if unused else 0) == read


def test_a_recording_that_fails_mid_run_is_an_error_not_done(tmp_path, monkeypatch, capsys, astronaut,
                                                              landmarker_model):
    """Disk full while recording: exit 2 and a sentence, not 'Done ... recording: out.mp4'."""
    from live_puppet.sinks import RecorderSink

    def full_disk(self):
        while self._queue.get() is not None:
            self.error = OSError(28, "No space left on device")

    monkeypatch.setattr(RecorderSink, "_run", full_disk)
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 40)
    stats = tmp_path / "stats.json"
    code = main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                 "--no-realtime", "--record", str(tmp_path / "out.mp4"), "--stats-json", str(stats)])
    captured = capsys.readouterr()
    assert code == 2 and "Done:" not in captured.out
    assert "failed" in captured.err and "No space left on device" in captured.err
    # It was the only output: the run stopped there instead of rendering the clip to nowhere.
    assert "the only output, so the run stops" in captured.err
    assert json.loads(stats.read_text())["frames_out"] < 10


def test_statistics_that_cannot_be_written_do_not_hide_the_run(tmp_path, monkeypatch, capsys, astronaut,
                                                                landmarker_model):
    from live_puppet.stats import Stats

    def full_disk(self, path, extra=None):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(Stats, "write_json", full_disk)
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 5)
    assert main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                 "--no-realtime", "--record", str(tmp_path / "out.mp4"),
                 "--stats-json", str(tmp_path / "stats.json")]) == 0
    captured = capsys.readouterr()
    assert "could not write the statistics" in captured.err and "Done: 5 frames" in captured.out


def test_a_recording_of_a_25_fps_clip_plays_at_25_fps(tmp_path, astronaut, landmarker_model):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 20, fps=25)
    out = tmp_path / "out.mp4"
    assert main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                 "--no-realtime", "--record", str(out)]) == 0
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 20
    assert float(frames[-1].pts * frames[-1].time_base) == pytest.approx(19 / 25, abs=0.005)  # 30 fps: 0.63 s


def test_saved_calibrations_and_engines_share_one_folder_wherever_the_command_runs(
        tmp_path, monkeypatch, astronaut, landmarker_model):
    """Saved neutral faces go to calibration/ beside engines/ (where build-engine writes INT8
    sets), not to a calibration/ of whatever folder the command was started in."""
    from live_puppet.config import default_calibration_dir

    project = tmp_path / "project"
    monkeypatch.setenv("LIVE_PUPPET_ENGINE_DIR", str(project / "engines"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 12)
    assert main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                 "--no-realtime", "--record", str(tmp_path / "out.mp4"), "--calibration", "me"]) == 0
    assert default_calibration_dir() == project / "calibration"
    assert (project / "calibration" / "me.json").is_file()
    assert not (elsewhere / "calibration").exists()


def test_bad_inputs_get_one_line_and_exit_code_2(tmp_path, clip, astronaut, landmarker_model):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    assert_one_clear_line(run_cli("--portrait", str(text), "--source", str(clip), "--no-vcam",
                                  "--no-preview"), "is not an image")
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((400, 400, 3), 120, np.uint8))
    assert_one_clear_line(run_cli("--portrait", str(wall), "--source", str(clip), "--no-vcam",
                                  "--no-preview"), "No face was found")
    assert_one_clear_line(run_cli("--portrait", str(tmp_path / "missing.jpg"), "--source", str(clip),
                                  "--no-vcam", "--no-preview"), "does not exist")
    # ... named before the camera is tried (there is none here), and --debug is taken after run's options
    assert_one_clear_line(run_cli("--portrait", str(tmp_path / "missing.jpg"), "--no-vcam", "--debug"),
                          "The portrait")
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    assert_one_clear_line(run_cli("--portrait", str(face), "--source", str(tmp_path / "gone.mp4"),
                                  "--no-vcam", "--no-preview"), "does not exist")
    assert_one_clear_line(run_cli("--portrait", str(face), "--source", str(face), "--no-vcam",
                                  "--no-preview"), "is a picture, not a video")
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(clip.read_bytes())
    assert_one_clear_line(run_cli("--portrait", str(face), "--source", str(copy), "--no-vcam",
                                  "--no-preview", "--record", str(copy)), "would be overwritten")
    assert copy.read_bytes() == clip.read_bytes()  # the input is untouched
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"a trained model")
    assert_one_clear_line(run_cli("--portrait", str(face), "--source", str(clip), "--no-vcam",
                                  "--no-preview", "--engine", "neural", "--checkpoint", str(model),
                                  "--stats-json", str(model)), "would be overwritten")
    for command in (["eval", "--self", str(copy), "--frames", "3", "--json", str(copy)],
                    ["bench", "--driving", str(copy), "--portrait", str(face), "--json", str(face)]):
        assert_one_clear_line(run_command(*command), "would be overwritten")
    assert model.read_bytes() == b"a trained model" and copy.read_bytes() == clip.read_bytes()
    assert_one_clear_line(run_cli("--portrait", str(face), "--source", str(clip), "--no-vcam",
                                  "--no-preview", "--landmarker-model", str(tmp_path)), "is a folder")
    small = run_command("bench", "--driving", str(clip), "--portrait", str(face), "--sizes", "128,256")
    assert_one_clear_line(small, "give a larger --sizes")  # bench has no --max-side
    assert_one_clear_line(run_cli("--portrait", str(face), "--source", str(clip), "--no-vcam",
                                  "--no-preview", "--record", str(tmp_path / "o.webm")),
                          "record to a file ending in")
    odd = run_cli("--portrait", str(face), "--vcam-size", "321x239")
    assert odd.returncode == 2 and "both sides must be even" in odd.stderr
    for option, value, says in (("--calibration", "", "not a usable calibration name"),
                                ("--vcam-fps", "500", "between 1 and 240"),
                                ("--vcam-fps", "nan", "above 0")):
        refused = run_cli("--portrait", str(face), option, value)
        assert refused.returncode == 2 and says in refused.stderr.splitlines()[-1], refused.stderr
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:600])  # cut short: no frame can be decoded
    assert_one_clear_line(run_cli("--portrait", str(face), "--source", str(broken), "--no-vcam",
                                  "--no-preview"), "could not be read as a video")
    not_a_model = run_cli("--portrait", str(face), "--source", str(clip), "--no-vcam", "--no-preview",
                          "--landmarker-model", str(face))
    assert_one_clear_line(not_a_model, "could not be loaded as a MediaPipe face landmarker model")
    assert "delete" not in not_a_model.stderr  # it is the user's own file (here, their photo)
    bad_gallery = tmp_path / "bad_gallery"
    bad_gallery.mkdir()
    (bad_gallery / "a.jpg").write_text("not a picture")
    cv2.imwrite(str(bad_gallery / "b.png"), np.full((300, 300, 3), 120, np.uint8))
    all_bad = run_cli("--portrait", str(bad_gallery), "--source", str(clip), "--no-vcam", "--no-preview")
    assert_one_clear_line(all_bad, "None of the 2 pictures")  # not only the first one's fault
    assert "a.jpg" in all_bad.stderr and "b.png" in all_bad.stderr
    bad_gain = run_cli("--portrait", str(face), "--feature-gain", "nose=2")
    assert bad_gain.returncode == 2 and "Traceback" not in bad_gain.stderr
    assert "'nose=2' is not FEATURE=GAIN" in bad_gain.stderr.splitlines()[-1]


def test_feature_gains_reach_the_retargeter():
    from live_puppet.app import App
    from live_puppet.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--portrait", "p.jpg", "--feature-gain", "brow=1.4",
                                      "--feature-gain", "eye=0.8"])
    settings = App._make_retargeter(type("Stub", (), {"config": config_from_args(args)})()).settings
    assert (settings.brow_gain, settings.eye_gain, settings.mouth_gain) == (1.4, 0.8, 1.0)


# Ctrl-C; the terminal closing; `kill`. A --loop run has no end to stop before: Ctrl-C is how it ends.
@pytest.mark.parametrize("sig, loop", [(signal.SIGINT, False), (signal.SIGHUP, False),
                                       (signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signal_mid_run_leaves_a_playable_recording(sig, loop, tmp_path, landmarker_model):
    portrait = need(PORTRAITS / "mona_lisa.jpg")
    clip = need(DRIVING / "d3.mp4")
    out = tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_live.py"), "--portrait", str(portrait),
                             "--source", str(clip), "--realtime", "--no-vcam", "--no-preview",
                             "--record", str(out)] + (["--loop"] if loop else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    def recorded() -> int:  # the recording is written under a hidden name until it is complete
        return sum(p.stat().st_size for p in tmp_path.glob(".out.*.recording.mp4"))

    deadline = time.time() + 60
    while time.time() < deadline and recorded() < 20000:
        time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == (0 if loop else 128 + sig), stderr  # a file not played to its end: `&& next` stops
    assert "Traceback" not in stderr
    # not taken for a whole run:
    assert ("Done (stopped by a signal before the source's end)" in stdout) == (not loop)
    codec, n = count_frames(out)
    assert codec == "h264" and n > 5


class KeysAt(Sink):
    """A sink that presses keys at given frames (as the preview would) and notes each frame's portrait."""

    wants_canvas = True

    def __init__(self, keys: dict[int, str]):
        self.keys, self.names, self.statuses = keys, [], []

    def send(self, image, info):
        self.names.append(info.portrait_name)
        self.statuses.append(info.status)
        if info.index in self.keys:
            info.keys.append(ord(self.keys[info.index]))


def test_hotkeys_swap_portraits_and_retake_the_neutral(tmp_path, astronaut, landmarker_model):
    """Pressing 2 in the preview switches to the gallery's second portrait, 3 (of two) does nothing;
    c re-takes the neutral."""
    from live_puppet.app import App
    from live_puppet.config import RunConfig

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    cv2.imwrite(str(gallery / "a.png"), astronaut)
    cv2.imwrite(str(gallery / "b.png"), cv2.flip(astronaut, 1))
    driving = write_video(tmp_path / "drive.mp4", [astronaut] * 30)

    # there is no third portrait: 3 changes nothing; + + - is one step more expression
    keys = KeysAt({10: "2", 15: "3", 20: "c", 26: "+", 27: "+", 28: "-"})
    app = App(RunConfig(portrait=gallery, source=str(driving), realtime=False, vcam=False,
                        preview=False), extra_sinks=[keys])
    app.run()
    assert keys.names[:11] == ["a"] * 11 and keys.names[-1] == "b"
    # c: the frames after it calibrate afresh (the portrait waits at rest), then it goes on
    calibrating = [i for i, s in enumerate(keys.statuses) if s.startswith("calibrating")]
    assert calibrating and min(i for i in calibrating if i > 5) in (21, 22)
    assert not keys.statuses[-1].startswith("calibrating")
    assert app.retargeter.settings.expression_gain == 1.1


def test_a_swap_to_a_wider_portrait_fills_the_camera_s_frame_to_its_own_shape(tmp_path, astronaut,
                                                                              landmarker_model):
    """The camera's picture is letterboxed per portrait: after a swap from a square portrait to a
    wide one, the wide one is not squeezed into the square one's bars."""
    from live_puppet.app import App
    from live_puppet.config import RunConfig

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    cv2.imwrite(str(gallery / "a.png"), astronaut)  # 512 x 512
    cv2.imwrite(str(gallery / "b.png"), cv2.copyMakeBorder(astronaut, 0, 0, 200, 200, cv2.BORDER_REFLECT))
    driving = write_video(tmp_path / "drive.mp4", [astronaut] * 30)

    class Camera(KeysAt):
        wants_canvas = False  # what the virtual camera gets
        frames: dict = {}

        def send(self, image, info):
            super().send(image, info)
            self.frames[info.index] = (info.portrait_name, image.copy())

    camera = Camera({5: "2"})
    App(RunConfig(portrait=gallery, source=str(driving), realtime=False, vcam=False, preview=False,
                  vcam_size=(1280, 720)), extra_sinks=[camera]).run()
    (name_a, before), (name_b, after) = camera.frames[2], camera.frames[29]
    assert (name_a, name_b) == ("a", "b") and before.shape == after.shape == (720, 1280, 3)
    assert before[:, :200].max() == 0  # a square picture: bars at the sides
    assert after[:, 100:200].mean() > 30  # the wide one reaches there: its own letterbox


def test_a_saved_calibration_is_reused_at_the_next_start(tmp_path, astronaut, landmarker_model):
    """--calibration NAME: the first run takes the neutral face and saves it; the next run starts
    animating at its first frame instead of calibrating again."""
    from live_puppet.app import App
    from live_puppet.config import RunConfig

    cv2.imwrite(str(tmp_path / "portrait.png"), astronaut)
    driving = write_video(tmp_path / "drive.mp4", [astronaut] * 12)
    statuses = []
    for run in range(2):
        keys = KeysAt({})
        App(RunConfig(portrait=tmp_path / "portrait.png", source=str(driving), realtime=False,
                      vcam=False, preview=False, calibration="me", calibration_dir=tmp_path / "cal"),
            extra_sinks=[keys]).run()
        statuses.append(keys.statuses)
        if run == 0:
            assert (tmp_path / "cal" / "me.json").is_file()
    assert statuses[0][0].startswith("calibrating")  # first run: the neutral face is taken
    assert not any(s.startswith("calibrating") for s in statuses[1])  # next: reused at once


def test_a_second_ctrl_c_while_closing_still_finalizes_the_recording(tmp_path, monkeypatch, landmarker_model):
    """Ctrl-C, then Ctrl-C again while the app is shutting down: the recording must still play."""
    from live_puppet import capture as capture_module
    from live_puppet.app import App
    from live_puppet.config import RunConfig
    from live_puppet.sinks import Sink

    portrait = need(PORTRAITS / "mona_lisa.jpg")
    clip = need(DRIVING / "d3.mp4")
    out = tmp_path / "out.mp4"

    class CtrlC(Sink):
        def send(self, image, info):
            if info.index == 20:
                os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C

    stop = capture_module.Capture.stop

    def impatient_stop(self):
        os.kill(os.getpid(), signal.SIGINT)  # pressed again while the app closes
        stop(self)

    monkeypatch.setattr(capture_module.Capture, "stop", impatient_stop)
    app = App(RunConfig(portrait=portrait, source=str(clip), realtime=False, vcam=False,
                        preview=False, record=out), extra_sinks=[CtrlC()])
    app.run()
    codec, n = count_frames(out)
    assert codec == "h264" and n >= 20
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_mirroring_takes_the_new_neutral_from_mirrored_frames_only(tmp_path, astronaut, landmarker_model):
    """Pressing m flips the camera; the neutral re-taken after it must not mix in frames captured
    before the flip (a user sitting off-centre saw the puppet jump sideways to its limit)."""
    from live_puppet.app import App
    from live_puppet.config import RunConfig
    from live_puppet.sinks import Sink

    # The user sits left of centre: 200 px of wall on their right.
    offcentre = cv2.copyMakeBorder(astronaut, 0, 0, 0, 200, cv2.BORDER_REPLICATE)
    driving = write_video(tmp_path / "drive.mp4", [offcentre] * 45)

    class PressM(Sink):
        def __init__(self):
            self.moves = []

        def send(self, image, info):
            if info.target is not None:
                self.moves.append(float(np.abs(info.target.translation[:2]).max()))
            if info.index == 10:
                info.keys.append(ord("m"))

    keys = PressM()
    cv2.imwrite(str(tmp_path / "portrait.png"), astronaut)
    app = App(RunConfig(portrait=tmp_path / "portrait.png", source=str(driving), realtime=False, vcam=False, preview=False,
                        neutral_refine_frames=0), extra_sinks=[keys])
    app.run()
    assert app.retargeter.neutral is not None
    assert max(keys.moves[-10:]) < 2.0  # a still user, a still puppet (was 59 px: the clamp)


def test_a_failing_render_closes_the_face_tracker_only_after_the_tracking_thread_stopped(
        tmp_path, astronaut, monkeypatch, landmarker_model):
    """Closing MediaPipe under a thread that is still tracking crashes (segfault) or hangs."""
    import time as time_module

    from live_puppet.app import App
    from live_puppet.config import RunConfig
    from live_puppet.render.warp import WarpEngine
    from live_puppet.tracking import Tracker

    cv2.imwrite(str(tmp_path / "portrait.png"), astronaut)
    driving = write_video(tmp_path / "drive.mp4", [astronaut] * 30)
    calls = {"render": 0}
    closed_while_tracking = []
    render, track, close = WarpEngine.render, Tracker.track, Tracker.close

    def failing_render(self, portrait, target):
        calls["render"] += 1
        if calls["render"] == 5:
            raise RuntimeError("engine failure")
        return render(self, portrait, target)

    def slow_track(self, image, timestamp_ms=None):
        if self.mode == "video":
            time_module.sleep(0.1)  # the tracking thread is busy when the render fails
        return track(self, image, timestamp_ms)

    def watched_close(self):
        if self.mode == "video":
            closed_while_tracking.append(app._tracking.is_alive())
        close(self)

    monkeypatch.setattr(WarpEngine, "render", failing_render)
    monkeypatch.setattr(Tracker, "track", slow_track)
    monkeypatch.setattr(Tracker, "close", watched_close)
    app = App(RunConfig(portrait=tmp_path / "portrait.png", source=str(driving), realtime=False,
                        vcam=False, preview=False, record=tmp_path / "out.mp4"))
    with pytest.raises(RuntimeError, match="engine failure"):
        app.run()
    assert closed_while_tracking == [False]
    assert count_frames(tmp_path / "out.mp4") == ("h264", 4)  # the frames before it, playable


def test_a_failing_output_is_turned_off_and_the_others_go_on(tmp_path, astronaut, capsys, landmarker_model):
    from live_puppet.app import App
    from live_puppet.config import RunConfig

    class Unplugged(Sink):
        name = "window"

        def send(self, image, info):
            if info.index == 5:
                raise OSError("display gone")

    cv2.imwrite(str(tmp_path / "portrait.png"), astronaut)
    driving = write_video(tmp_path / "drive.mp4", [astronaut] * 30)
    app = App(RunConfig(portrait=tmp_path / "portrait.png", source=str(driving), realtime=False,
                        vcam=False, preview=False, record=tmp_path / "out.mp4"), extra_sinks=[Unplugged()])
    app.run()
    assert count_frames(tmp_path / "out.mp4") == ("h264", 30)  # the whole clip, not 5 frames
    assert "the window output failed (display gone) and was turned off" in capsys.readouterr().err


def test_ctrl_c_while_starting_up_stops_at_once(tmp_path, astronaut, monkeypatch, landmarker_model):
    """Ctrl-C during a long start (a neural engine building) must not wait for it to finish."""
    import time as time_module

    from live_puppet.app import App
    from live_puppet.config import RunConfig

    cv2.imwrite(str(tmp_path / "portrait.png"), astronaut)
    driving = write_video(tmp_path / "drive.mp4", [astronaut] * 10)

    def long_build(self, portrait):
        os.kill(os.getpid(), signal.SIGINT)  # the user gives up waiting
        time_module.sleep(2.0)

    monkeypatch.setattr(App, "_prepare", long_build)
    app = App(RunConfig(portrait=tmp_path / "portrait.png", source=str(driving), realtime=False,
                        vcam=False, preview=False))
    with pytest.raises(KeyboardInterrupt):
        app.run()
    assert app.stats.frames_out == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_other_commands_refuse_bad_outputs_and_inputs_before_doing_any_work(tmp_path, clip, astronaut,
                                                                           landmarker_model):
    """eval / train / prepare: an output that cannot be written, or one bad portrait among good
    ones, is one sentence before the first pair or step (found at the end, the work was lost)."""
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = tmp_path / "sheets"
    bad_out = run_command("eval", "--portrait", str(face), "--driving", str(clip), "--frames", "2",
                      "--out", str(a_file))
    assert_one_clear_line(bad_out, "is a file")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    cv2.imwrite(str(mixed / "a.png"), astronaut)
    cv2.imwrite(str(mixed / "b.png"), np.full((300, 300, 3), 120, np.uint8))
    assert_one_clear_line(run_command("eval", "--portrait", str(mixed), "--driving", str(clip),
                                  "--frames", "2", "--out", str(out)), "No face was found")
    assert not list(out.glob("*.png"))  # refused before the first pair ran
    nan_gain = run_command("eval", "--portrait", str(face), "--driving", str(clip), "--expression-gain", "nan")
    assert nan_gain.returncode == 2 and "'nan' is not a gain between 0 and 3" in nan_gain.stderr
    tiny = run_command("eval", "--portrait", str(face), "--driving", str(clip), "--max-side", "5")
    assert tiny.returncode == 2 and "--max-side: must be 128 or more, got 5" in tiny.stderr  # not "no face"
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((300, 300, 3), 120, np.uint8))
    # bench checks the portrait before it starts a process per configuration
    assert_one_clear_line(run_command("bench", "--portrait", str(wall), "--driving", str(clip),
                                      "--frames", "10"), "No face was found")
    few = run_command("bench", "--portrait", str(face), "--driving", str(clip), "--frames", "3")
    assert few.returncode == 2 and "10 or more for a measurement" in few.stderr  # 3 timed warm-up only
    assert_one_clear_line(run_command("train", "--data", str(tmp_path), "--out", str(a_file), "--steps", "1"),
                          "is a file")
    assert_one_clear_line(run_command("prepare", str(clip), str(tmp_path / "prepared")), "is a file")
    assert_one_clear_line(run_command("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                      "--steps", "1", "--device", "banana"), "is not a device")


def test_train_given_raw_videos_or_a_broken_prepared_clip_says_what_to_do(tmp_path, clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "talk.mp4").write_bytes(clip.read_bytes())
    raw = run_command("train", "--data", str(videos), "--out", str(tmp_path / "run"), "--steps", "1")
    assert_one_clear_line(raw, f"prepare them first with `live-puppet prepare {videos} videos-prepared`")
    assert not (tmp_path / "run").exists()  # no empty run folder left behind by the mistake
    broken = tmp_path / "prepared" / "talk"
    broken.mkdir(parents=True)
    (broken / "meta.json").write_text('{"clip": "talk", "size"')  # damaged on disk
    assert_one_clear_line(run_command("train", "--data", str(tmp_path / "prepared"), "--out",
                                      str(tmp_path / "run"), "--steps", "1"), "is unreadable; delete")


def test_prepare_says_when_no_clip_could_be_read(tmp_path, landmarker_model):
    """A folder whose only 'video' is not one: not 'no face' with exit 0, but one sentence."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "fake.mp4").write_bytes(bytes(range(256)) * 20)
    result = run_command("prepare", str(videos), str(tmp_path / "prepared"))
    assert_one_clear_line(result, "1 unreadable")
    assert not (tmp_path / "prepared" / "skipped.json").exists()  # a fixed file is taken next time


def test_a_new_recording_may_go_into_the_gallery_folder_but_not_over_its_pictures(tmp_path):
    from live_puppet.errors import UserError, writable_file

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "mona.jpg").write_bytes(b"a picture")
    assert writable_file(gallery / "take1.mp4", "the recording", "--record", [gallery]) == \
        gallery / "take1.mp4"
    with pytest.raises(UserError, match="one of the inputs"):
        writable_file(gallery / "mona.jpg", "the recording", "--record", [gallery])
    with pytest.raises(UserError, match="is a folder"):
        writable_file(gallery, "the recording", "--record", [gallery])


def test_a_one_frame_run_with_an_unused_checkpoint(tmp_path, astronaut, landmarker_model, capsys):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 5)
    assert main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                 "--no-realtime", "--max-frames", "1", "--checkpoint", str(tmp_path / "ck.safetensors")]) == 0
    captured = capsys.readouterr()
    assert "--checkpoint is for the neural engine" in captured.err  # not silently ignored
    assert "the frames go nowhere; add --record FILE" in captured.err  # no camera, window or file
    assert "--camera-size" not in captured.err
    assert main(["run", "--portrait", str(face), "--source", str(clip), "--no-preview", "--no-vcam",
                 "--no-realtime", "--max-frames", "1", "--camera-fps", "60"]) == 0
    assert "--camera-size and --camera-fps are for a webcam" in capsys.readouterr().err
    done = [line for line in captured.out.splitlines() if line.startswith("Done:")]
    assert done and done[0].startswith("Done: 1 frame out of") and "fps" not in done[0]


def test_first_use_with_a_cache_folder_that_cannot_be_made_is_one_sentence(tmp_path, monkeypatch):
    from live_puppet import tracking
    from live_puppet.errors import UserError

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.delenv(tracking.ENV_VAR, raising=False)
    monkeypatch.setattr(tracking, "user_cache_dir", lambda: blocker / "live-puppet")
    with pytest.raises(UserError, match="Cannot create the folder .* --landmarker-model"):
        tracking.resolve_landmarker_model()


def test_when_the_only_output_fails_the_run_stops_and_says_so(tmp_path, astronaut, landmarker_model, capsys):
    from live_puppet.app import App
    from live_puppet.config import RunConfig
    from live_puppet.sinks import Sink

    class BrokenCamera(Sink):
        name = "camera"

        def send(self, image, info):
            raise OSError("the device went away")

    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 40)
    app = App(RunConfig(portrait=face, source=str(clip), realtime=False, vcam=False, preview=False),
              extra_sinks=[BrokenCamera()])
    stats = app.run()
    assert app.output_failure == "camera: the device went away"
    assert stats.frames_out < 10  # not the whole clip rendered to nowhere
    assert "it was the only output, so the run stops" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path, astronaut):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut)
    clip = write_video(tmp_path / "talk.mp4", [astronaut] * 3)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_live.py"), "--portrait", str(face), "--source",
                             str(clip), "--no-vcam", "--no-preview", "--no-realtime"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout.close()  # as `| head -0` would
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr and "unexpected error" not in stderr


def test_live_use_draws_the_newest_tracked_frame_not_a_stale_one():
    # With a hand-over queue of two that never dropped, a renderer slower than the camera drew
    # frames two behind (135 ms from capture to sink on one core, where the stages took 56 ms).
    import queue

    from live_puppet.app import App

    app = App.__new__(App)  # only the hand-over is exercised
    app.realtime = True
    app._work = queue.Queue(maxsize=1)
    for item in ("frame 1", "frame 2", "frame 3"):
        app._put(item)
    assert app._work.get_nowait() == "frame 3" and app._stale_dropped == 2


def test_a_day_long_run_keeps_an_hour_of_latency_samples_not_all():
    from live_puppet.stats import KEEP_SAMPLES, Stats

    stats = Stats()
    for i in range(KEEP_SAMPLES + 5000):
        stats.add("render", 0.010 if i < 5000 else 0.020)  # the first samples were faster
    assert len(stats.samples["render"]) == KEEP_SAMPLES
    assert stats.summary()["latency_ms"]["render"]["median"] == 20.0


def test_a_portrait_swap_loads_off_the_render_thread(tmp_path, astronaut, landmarker_model, monkeypatch):
    # The first load of a portrait ran in the key's handler: the stream stalled 140 ms (410 ms
    # under load) at each first swap. Now frames of the current portrait keep coming meanwhile:
    # here b's load waits until frame 20 has been drawn.
    import threading

    import live_puppet.portrait as portrait_module
    from live_puppet.app import App
    from live_puppet.config import RunConfig

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    cv2.imwrite(str(gallery / "a.png"), astronaut)
    cv2.imwrite(str(gallery / "b.png"), cv2.flip(astronaut, 1))
    cv2.imwrite(str(gallery / "c.png"), astronaut)
    driving = write_video(tmp_path / "drive.mp4", [astronaut] * 60)
    real_load = portrait_module.load_portrait
    drawn = threading.Event()

    def held_load(path, *args, **kwargs):
        if path.name == "b.png":
            assert drawn.wait(timeout=30)  # the stream must go on, or this never comes
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(portrait_module, "load_portrait", held_load)

    class Keys(KeysAt):
        def send(self, image, info):
            super().send(image, info)
            if info.index == 20:
                drawn.set()

    keys = Keys({5: "2", 6: "n"})  # n while b loads: counts from b, not from a
    App(RunConfig(portrait=gallery, source=str(driving), realtime=False, vcam=False, preview=False),
        extra_sinks=[keys]).run()
    assert keys.names[:21] == ["a"] * 21
    assert keys.names[-1] == "c"
