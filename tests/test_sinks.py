import os

import av
import numpy as np
import pytest

from live_puppet.errors import UserError
from live_puppet.sinks import FrameInfo, Letterbox, RecorderSink, VirtualCameraSink


def test_letterbox_keeps_the_aspect_ratio():
    box = Letterbox((576, 1024), (1280, 720))
    out = box(np.full((1024, 576, 3), 200, np.uint8))
    assert out.shape == (720, 1280, 3)
    cols = np.where(out[360, :, 0] > 100)[0]
    assert len(cols) == 405 and abs(cols[0] - (1280 - 405) // 2) <= 1  # 576/1024*720 = 405 wide
    assert out[:, :400].max() == 0


def test_recorder_writes_h264_with_every_frame(tmp_path):
    path = tmp_path / "out.mp4"
    rec = RecorderSink(path, (320, 240), 30)
    for i in range(45):
        rec.send(np.full((240, 320, 3), i * 5, np.uint8), FrameInfo(index=i))
    rec.close()
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert sum(1 for _ in c.decode(stream)) == 45


def test_recorder_keeps_the_source_s_timing_when_frames_were_dropped(tmp_path):
    path = tmp_path / "out.mp4"
    rec = RecorderSink(path, (320, 240), 25)
    kept = [i for i in range(50) if i % 5 != 3]  # every fifth frame dropped upstream
    for i in kept:
        rec.send(np.full((240, 320, 3), i * 5, np.uint8), FrameInfo(index=i, media_time=i / 25))
    rec.close()
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        times = [float(f.pts * f.time_base) for f in c.decode(stream)]
    assert len(times) == len(kept)
    assert times[-1] == pytest.approx(49 / 25, abs=0.005)  # not 39 / 25: it plays at 25 fps


def test_recorder_of_a_camera_faster_than_its_nominal_rate_keeps_real_time(tmp_path):
    path = tmp_path / "cam.mp4"
    rec = RecorderSink(path, (320, 240), 30)  # a camera that delivers 60 fps
    for i in range(120):
        rec.send(np.full((240, 320, 3), i * 2, np.uint8), FrameInfo(index=i, media_time=i / 60))
    rec.close()
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 120
    assert float(frames[-1].pts * frames[-1].time_base) == pytest.approx(119 / 60, abs=0.005)  # not 4.4 s


def test_recorder_into_a_missing_folder_says_so(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RecorderSink(tmp_path / "nope" / "out.mp4", (320, 240), 30)


def test_virtual_camera_gets_frames(fake_vcam):
    sink = VirtualCameraSink((320, 240), 30, backend="fake")
    sink.send(np.zeros((240, 320, 3), np.uint8), FrameInfo(index=0))
    sink.close()
    assert len(fake_vcam.instances[0].frames) == 1 and fake_vcam.instances[0].closed


def test_no_virtual_camera_device_gives_the_setup_command():
    import pyvirtualcam

    class Broken:
        def __init__(self, **kw):
            raise RuntimeError("device not found")

    pyvirtualcam.register_backend("broken", Broken)
    with pytest.raises(UserError, match="(v4l2loopback|OBS)"):
        VirtualCameraSink((320, 240), 30, backend="broken")


def test_preview_without_a_display_says_so_instead_of_aborting(monkeypatch):
    import sys

    from live_puppet.sinks import PreviewSink

    if not sys.platform.startswith("linux"):
        pytest.skip("display detection is Linux-specific")
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="--no-preview"):
        PreviewSink()


def test_a_second_recording_to_the_same_file_is_refused_and_a_failed_one_keeps_the_old(tmp_path):
    path = tmp_path / "take.mp4"
    first = RecorderSink(path, (320, 240), 30)
    with pytest.raises(UserError, match="is recording to"):  # while `first` records (its lock)
        RecorderSink(path, (320, 240), 30)
    for i in range(5):
        first.send(np.full((240, 320, 3), 40 * i, np.uint8), FrameInfo(index=i, media_time=i / 30))
    first.close()
    assert path.is_file() and not list(tmp_path.glob(".take.*"))  # moved into place
    done = path.read_bytes()
    second = RecorderSink(path, (320, 240), 30)
    second.error = OSError(28, "No space left on device")  # the disk filled during the take
    with pytest.raises(RuntimeError, match="No space left"):
        second.send(np.zeros((240, 320, 3), np.uint8), FrameInfo(index=0, media_time=0.0))
    second.close()
    assert path.read_bytes() == done and not second.written  # the earlier take is kept
    third = RecorderSink(path, (320, 240), 30)  # a run that got no frame at all
    third.close()
    assert path.read_bytes() == done and not third.written  # "Done" claimed the earlier take as its own


def test_a_recording_that_got_no_frame_closes_quietly_and_writes_nothing(tmp_path):
    rec = RecorderSink(tmp_path / "empty.mp4", (320, 240), 30)
    rec.close()  # e.g. Ctrl-C while the camera was unplugged
    assert not rec.written and rec.error is None and not (tmp_path / "empty.mp4").exists()


def test_a_recording_that_cannot_be_moved_into_place_is_an_error_not_a_success(tmp_path, monkeypatch):
    """E.g. the earlier take is open in a player on Windows: the frames stay in the hidden file."""
    rec = RecorderSink(tmp_path / "take.mp4", (320, 240), 30)
    rec.send(np.zeros((240, 320, 3), np.uint8), FrameInfo(index=0, media_time=0.0))

    def refused(src, dst):
        raise PermissionError(13, "Permission denied", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(PermissionError):
        rec.close()
    assert not rec.written and rec.error is not None and rec.partial.is_file()


def test_the_progress_bar_says_how_many_frames_were_drawn_when_some_were_dropped():
    # In realtime the bar goes through the source's frames at the source's rate; it read as if
    # all were rendered ("78/78, 22.3 frame/s" where 36 were drawn at 11.3 fps).
    import io

    from live_puppet.sinks import ProgressSink

    shown = io.StringIO()
    bar = ProgressSink(10, file=shown)
    for index in (0, 2, 4, 9):
        bar.send(np.zeros((8, 8, 3), np.uint8), FrameInfo(index=index))
    bar.close()
    last = shown.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "10/10" in last and "drawn 4" in last
