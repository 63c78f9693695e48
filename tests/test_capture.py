import time

import cv2
import numpy as np
import pytest

from live_puppet.capture import Capture, ImageFolderSource, Source, VideoFileSource, open_source
from live_puppet.errors import UserError
from conftest import numbered_frames, write_video


def drain(capture: Capture) -> list:
    got = []
    while True:
        frame = capture.get(timeout=2.0)
        if frame is None:
            assert capture.finished
            return got
        got.append(frame)


def test_no_realtime_hands_over_every_frame_once_in_order(tmp_path):
    path = write_video(tmp_path / "clip.mp4", numbered_frames(30))
    capture = Capture(VideoFileSource(path), realtime=False).start()
    frames = drain(capture)
    capture.stop()
    assert [f.index for f in frames] == list(range(30))
    levels = [int(f.image.mean()) for f in frames]
    assert all(b > a for a, b in zip(levels, levels[1:]))  # decoded in order, none repeated
    assert capture.frames_dropped == 0
    assert frames[-1].media_time == pytest.approx(29 / 25)


class SlowConsumerSource(Source):
    """A fast live source: 200 frames as quickly as possible."""

    is_live = True
    fps = 1000.0

    def frames(self):
        for i in range(200):
            yield np.full((8, 8, 3), i % 256, np.uint8)
            time.sleep(0.001)


def test_realtime_keeps_only_the_newest_frame_and_counts_drops():
    capture = Capture(SlowConsumerSource(), realtime=True).start()
    got = []
    while True:
        frame = capture.get(timeout=2.0)
        if frame is None:
            break
        got.append(frame.index)
        time.sleep(0.02)  # a consumer slower than the source
    capture.stop()
    assert got == sorted(got)
    assert len(got) < 100  # frames were skipped rather than queued up
    assert capture.frames_dropped + len(got) == 200
    assert got[-1] == 199  # the newest frame is never lost


def test_realtime_paces_a_file_at_its_fps(tmp_path):
    path = write_video(tmp_path / "clip.mp4", numbered_frames(10), fps=25)
    start = time.perf_counter()
    capture = Capture(VideoFileSource(path), realtime=True).start()
    drain(capture)
    capture.stop()
    assert time.perf_counter() - start >= 9 / 25 * 0.9


def test_loop_starts_the_file_over(tmp_path):
    path = write_video(tmp_path / "clip.mp4", numbered_frames(5))
    frames = VideoFileSource(path, loop=True).frames()
    levels = [int(next(frames).mean()) for _ in range(12)]
    assert levels[5] == levels[0] and levels[10] == levels[0]


def test_mirror_flips_frames(tmp_path):
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :5] = 255
    cv2.imwrite(str(tmp_path / "a.png"), img)
    capture = Capture(ImageFolderSource(tmp_path), realtime=False, mirror=True).start()
    frame = capture.get(timeout=2.0)
    capture.stop()
    assert frame.image[:, -5:].min() == 255 and frame.image[:, :5].max() == 0


def test_image_folder_in_name_order_with_numbers_by_value(tmp_path):
    for i in (2, 0, 10, 1):  # unpadded numbers: f10 comes after f2, not after f1
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 8, 3), i * 20, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._f1.png").write_bytes(b"\0\5\26\7")  # macOS's resource file: skipped, not warned of
    levels = [int(img.mean()) for img in ImageFolderSource(tmp_path).frames()]
    assert levels == [0, 20, 40, 200]


def test_an_unreadable_picture_in_a_frame_folder_is_named_once(tmp_path, capsys):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 8, 3), 100, np.uint8))
    (tmp_path / "f1.png").write_text("not a picture")
    frames = list(ImageFolderSource(tmp_path).frames())
    assert len(frames) == 2
    assert capsys.readouterr().err.count("skipped 'f1.png'") == 1


def test_a_clip_damaged_half_way_skips_the_damage_says_so_and_plays_on(tmp_path, capsys):
    # The clip used to end at the damage: more than half of it thrown away where players skip a
    # glitch and go on.
    rng = np.random.default_rng(0)
    path = write_video(tmp_path / "clip.mp4", [rng.integers(0, 255, (128, 128, 3), np.uint8)
                                               for _ in range(50)])
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4000] = bytes(4000)  # a damaged stretch of frames
    path.write_bytes(bytes(data))
    frames = list(VideoFileSource(path).frames())
    assert 45 <= len(frames) < 50
    err = capsys.readouterr().err
    assert "is damaged after frame" in err and "the damaged part is skipped" in err
    looped = VideoFileSource(path, loop=True).frames()
    assert len([f for _, f in zip(range(3 * len(frames)), looped)]) == 3 * len(frames)
    assert capsys.readouterr().err.count("damaged after frame") == 1  # once, not at every pass


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_source(str(tmp_path / "missing.mp4"))
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    with pytest.raises(UserError, match="could not be read as a video"):
        open_source(str(text))
    with pytest.raises(UserError, match="holds no images"):
        open_source(str(_empty(tmp_path)))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_a_camera_that_cannot_open_says_so():
    with pytest.raises(UserError, match="Could not open camera 7"):
        open_source("7")


class _UnpluggedCamera:
    """cv2.VideoCapture stand-in: delivers two frames, then fails (unplugged) and never reopens."""

    made: list = []

    def __init__(self, index):
        self.first = not _UnpluggedCamera.made
        self.reads_left = 2
        self.released = False
        _UnpluggedCamera.made.append(self)

    def isOpened(self):
        return self.first

    def set(self, *_):
        return True

    def get(self, *_):
        return 30.0

    def read(self):
        if self.reads_left > 0:
            self.reads_left -= 1
            return True, np.zeros((48, 64, 3), np.uint8)
        return False, None

    def release(self):
        self.released = True


def test_quitting_while_the_camera_is_unplugged_is_prompt_and_releases_it(monkeypatch):
    """q (or Ctrl-C) while the camera waits to be reopened: stop at once, reopen nothing, release all."""
    import time

    import live_puppet.capture as capture_module

    _UnpluggedCamera.made = []
    monkeypatch.setattr(capture_module.cv2, "VideoCapture", _UnpluggedCamera)
    source = capture_module.CameraSource(0, max_reopen_wait=5.0)
    capture = Capture(source, realtime=True).start()
    time.sleep(0.6)  # the camera has failed; the source is backing off before reopening
    capture.stop()
    # stopped, not left behind: the join used to time out while the source slept 5 s
    assert not capture._thread.is_alive()
    time.sleep(0.6)  # a thread still running would reopen the camera in this time
    assert all(cam.released for cam in _UnpluggedCamera.made)


def _variable_rate_clip(path):
    """20 frames 40 ms apart, then 20 frames 200 ms apart (as a phone records a dim scene)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 6, np.uint8), format="bgr24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
            t += 40 if i < 20 else 200
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def test_a_variable_frame_rate_clip_keeps_each_frame_s_own_time(tmp_path):
    path = _variable_rate_clip(tmp_path / "vfr.mp4")
    frames = drain(Capture(VideoFileSource(path), realtime=False).start())
    assert len(frames) == 40
    assert frames[18].media_time == pytest.approx(0.72, abs=0.002)  # not 18 x the mean period
    assert frames[-1].media_time == pytest.approx(4.6, abs=0.002)
    looped = [t for _, t in zip(range(80), VideoFileSource(path, loop=True).timed_frames())]
    times = [t for _, t in looped]
    assert all(b > a for a, b in zip(times, times[1:]))  # the second pass follows the first


def _phone_clip(path, upright_picture, rotation, hflip=False):
    """A clip as a phone films upright: pictures stored turned (and mirrored), with a display matrix
    that says how to show them (PyAV's rotation: degrees counter-clockwise)."""
    import av

    stored = np.ascontiguousarray(np.rot90(upright_picture, -round(rotation / 90)))
    stored = np.ascontiguousarray(stored[:, ::-1]) if hflip else stored
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = stored.shape[1], stored.shape[0]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(rotation, hflip=hflip)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_phone_clip_is_shown_upright_as_players_show_it(tmp_path, rotation):
    from skimage import data

    from live_puppet.evaluation import probe_clip

    picture = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[:, 64:448]  # 512 high, 384 wide
    path = _phone_clip(tmp_path / "phone.mp4", picture, rotation)
    frames = list(VideoFileSource(path).frames())
    assert len(frames) == 3 and frames[0].shape == picture.shape
    assert np.abs(frames[0].astype(int) - picture).mean() < 8  # the face stands up, not on its side
    # OpenCV applies the display matrix too: both decoders agree on which way is up.
    ok, seen_by_opencv = cv2.VideoCapture(str(path)).read()
    assert ok and np.abs(seen_by_opencv.astype(int) - frames[0]).mean() < 2
    info = probe_clip(path)
    assert (info.width, info.height) == (384, 512) and info.first_frame.shape == picture.shape


def test_a_mirrored_clip_is_mirrored_back_not_turned_upside_down(tmp_path):
    # A display matrix that only mirrors reads as a half turn (rotation -180): it was turned, and
    # the face came out upside down. (OpenCV does the same; FFmpeg's players mirror it.)
    from skimage import data

    picture = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[:, 64:448]
    path = _phone_clip(tmp_path / "selfie.mp4", picture, 0, hflip=True)
    frame = next(iter(VideoFileSource(path).frames()))
    assert np.abs(frame.astype(int) - picture).mean() < 8


def test_a_camera_that_comes_back_is_said_to_be_back_and_its_loss_said_once(monkeypatch, capsys):
    import live_puppet.capture as capture_module

    class FlakyCamera(_UnpluggedCamera):  # the first delivers two frames then fails; the third works
        def isOpened(self):
            return len(_UnpluggedCamera.made) != 2

        def read(self):
            if len(_UnpluggedCamera.made) >= 3 and self is _UnpluggedCamera.made[-1]:
                return True, np.zeros((48, 64, 3), np.uint8)
            return super().read()

    _UnpluggedCamera.made = []
    monkeypatch.setattr(capture_module.cv2, "VideoCapture", FlakyCamera)
    source = capture_module.CameraSource(0, max_reopen_wait=0.3)
    frames = source.frames()
    got = [next(frames) for _ in range(4)]  # two, the outage (two tries), then the camera again
    source.close()
    err = capsys.readouterr().err
    assert len(got) == 4 and len(_UnpluggedCamera.made) == 3
    assert err.count("stopped delivering frames") == 1  # not once per try
    assert "camera 0 is back after" in err


def test_a_clip_cut_short_says_so(tmp_path, capsys):
    # A download cut off half-way (the header, written first, announces all frames) ended early
    # with no word, and the run said "Done".
    import av

    path = tmp_path / "whole.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # index first
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(60):
            picture = rng.integers(0, 255, (64, 64, 3), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    frames = list(VideoFileSource(tmp_path / "cut.mp4").frames())
    assert 0 < len(frames) < 54
    assert f"ended at {len(frames) / 25:.1f} s of the 2.4 s its header announces" in capsys.readouterr().err


def test_frames_of_another_size_are_fitted_to_the_first_one_s(tmp_path):
    # A folder of pictures of two sizes, a stream whose resolution changes: landmarks are in
    # pixels, so the same face at half the size read as the head jumping up-left and shrinking.
    big = np.zeros((200, 300, 3), np.uint8)
    big[50:150, 100:200] = 255
    cv2.imwrite(str(tmp_path / "f1.png"), big)
    cv2.imwrite(str(tmp_path / "f2.png"), cv2.resize(big, (150, 100), interpolation=cv2.INTER_AREA))
    square = np.zeros((200, 200, 3), np.uint8)  # another shape: fitted inside, not stretched
    square[50:150, 50:150] = 255
    cv2.imwrite(str(tmp_path / "f3.png"), square)
    frames = drain(Capture(ImageFolderSource(tmp_path), realtime=False).start())
    assert [f.image.shape for f in frames] == [(200, 300, 3)] * 3
    assert np.abs(frames[1].image.astype(int) - big).mean() < 3  # the same picture, not a smaller one
    assert np.abs(frames[2].image.astype(int) - big).mean() < 3  # the square stays square, centred


def test_sources_that_are_not_videos_say_what_they_are(tmp_path):
    import av

    with pytest.raises(UserError, match="--source is empty"):
        open_source("  ")  # an unset $VIDEO: not the working folder's pictures
    with pytest.raises(UserError, match="is an address; .* download the clip first"):
        open_source("http://example.com/clip.mp4")
    with pytest.raises(UserError, match="is not a video file \\(a device or a pipe\\)"):
        open_source("/dev/null")
    with pytest.raises(UserError, match="The video '/no/such clip.mp4' does not exist"):
        open_source("file:///no/such%20clip.mp4")  # a local file as an address: a path
    for i in range(3):
        (tmp_path / f"f{i}.png").write_text("not a picture")
    with pytest.raises(UserError, match="None of the 3 pictures in .* can be read"):
        list(ImageFolderSource(tmp_path, loop=True).frames())  # (with --loop it went round forever)
    song = tmp_path / "song.m4a"  # sound with an album cover: a one-frame "video" at 90000 fps
    with av.open(str(song), "w", format="mp4") as container:
        cover = container.add_stream("mjpeg", rate=1)
        cover.width = cover.height = 64
        cover.pix_fmt = "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        for packet in cover.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8),
                                                              format="bgr24")):
            container.mux(packet)
        for packet in cover.encode(None):
            container.mux(packet)
    with pytest.raises(UserError, match="holds no video, only sound \\(its picture is cover art\\)"):
        open_source(str(song))


def test_an_avi_with_b_frames_plays_evenly(tmp_path):
    # AVI keeps no presentation times for B-frames: the times FFmpeg guesses came out of order and
    # the recording stuttered (frames 1 ms apart, then 120 ms).
    import av

    path = tmp_path / "clip.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)  # B-frames by default
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(30):
            picture = np.full((64, 64, 3), (i * 37) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    frames = drain(Capture(VideoFileSource(path), realtime=False).start())
    times = [f.media_time for f in frames]
    assert len(times) == 30 and np.allclose(np.diff(times), 0.04)


def test_the_camera_is_asked_for_the_size_and_rate_given_on_the_command_line(monkeypatch):
    import live_puppet.capture as capture_module
    from live_puppet.cli import build_parser, config_from_args

    asked = {}

    class Camera(_UnpluggedCamera):
        def set(self, prop, value):
            asked[prop] = value
            return True

    _UnpluggedCamera.made = []
    monkeypatch.setattr(capture_module.cv2, "VideoCapture", Camera)
    args = build_parser().parse_args(["run", "--portrait", "p.jpg", "--camera-size", "1280x720",
                                      "--camera-fps", "60", "--no-progress"])
    config = config_from_args(args)
    assert config.progress is False
    source = open_source(config.source, camera_size=config.camera_size, camera_fps=config.camera_fps)
    next(source.frames())
    source.close()
    cv2 = capture_module.cv2
    assert (asked[cv2.CAP_PROP_FRAME_WIDTH], asked[cv2.CAP_PROP_FRAME_HEIGHT],
            asked[cv2.CAP_PROP_FPS]) == (1280, 720, 60)
