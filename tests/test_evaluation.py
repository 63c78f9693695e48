"""eval and bench: the metrics on cases with known answers, and the commands on ../shared clips."""

import dataclasses
import json
import math
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import DRIVING, PORTRAITS, need
from live_puppet import evaluation as ev
from live_puppet.calibration import euler_angles, rotation_from_euler
from live_puppet.cli import main
from live_puppet.retarget import matrix_rotation
from live_puppet.types import FaceState

# -- image metrics -----------------------------------------------------------------------------


def test_psnr_known_answers():
    gray = np.full((64, 64, 3), 128, np.uint8)
    assert ev.psnr(gray, gray) == ev.PSNR_CAP_DB
    # A uniform error of 5: MSE 25, PSNR = 10 log10(255^2 / 25) = 34.151 dB.
    assert ev.psnr(gray + 5, gray) == pytest.approx(10 * math.log10(255 ** 2 / 25), abs=1e-9)
    # Gaussian noise of sigma 10 (no clipping around 128): about 10 log10(255^2 / 100) = 28.13 dB.
    rng = np.random.default_rng(0)
    noisy = np.clip(np.round(128 + rng.normal(0, 10, (256, 256, 3))), 0, 255).astype(np.uint8)
    assert ev.psnr(noisy, np.full_like(noisy, 128)) == pytest.approx(28.13, abs=0.1)


def test_ssim_is_one_on_itself_and_matches_scikit_image(astronaut):
    from skimage.metrics import structural_similarity

    assert ev.ssim(astronaut, astronaut) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    noisy = np.clip(astronaut + rng.normal(0, 20, astronaut.shape), 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(astronaut, (9, 9), 3)
    for other in (noisy, blurred):
        ref = structural_similarity(astronaut, other, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, channel_axis=2, data_range=255)
        assert ev.ssim(astronaut, other) == pytest.approx(ref, abs=1e-6)
        assert ev.ssim(astronaut, other) < 0.9


def test_face_box_grows_by_20_percent_and_stays_in_the_picture():
    assert ev.grow_box((100, 100, 200, 300), (640, 480)) == (90, 80, 210, 320)
    assert ev.grow_box((0, 0, 100, 100), (100, 100)) == (0, 0, 100, 100)


def test_face_scores_see_only_the_face_box():
    truth = np.full((100, 100, 3), 100, np.uint8)
    out = truth.copy()
    out[40:60, 40:60] += 20  # an error inside the box only
    scores = ev.score_image(out, truth, (30, 30, 70, 70))
    assert scores.psnr_face < scores.psnr and scores.ssim_face < scores.ssim
    clean = ev.score_image(out, truth, (0, 0, 20, 20))
    assert clean.psnr_face == ev.PSNR_CAP_DB and clean.ssim_face == pytest.approx(1.0)


# -- motion metrics ----------------------------------------------------------------------------


@pytest.mark.parametrize("angles", [(0, 0, 0), (20, 0, 0), (0, -15, 0), (0, 0, 10), (25, -10, 8)])
def test_head_angles_round_trip_through_mediapipes_matrix(angles):
    r_image = rotation_from_euler(*angles)
    assert euler_angles(r_image) == pytest.approx(angles, abs=1e-9)
    gl = np.diag([1.0, -1.0, -1.0])  # MediaPipe's matrix is in OpenGL axes
    matrix = np.eye(4)
    matrix[:3, :3] = gl @ r_image @ gl * 1.3  # with some scale, as MediaPipe's has
    np.testing.assert_allclose(matrix_rotation(matrix), r_image, atol=1e-9)
    face = FaceState(np.zeros((478, 3), np.float32), {}, matrix.astype(np.float32), (10, 10))
    assert ev.head_angles(face) == pytest.approx(angles, abs=1e-3)


def test_pearson_known_answers():
    x = np.sin(np.linspace(0, 6, 50))
    assert ev.pearson(x, x) == pytest.approx(1.0)
    assert ev.pearson(x, -2 * x + 3) == pytest.approx(-1.0)
    assert ev.pearson(x, np.full(50, 0.3) + 1e-4 * x, still_std=0.01) == 0.0  # does not move
    assert ev.pearson(np.zeros(50), x) is None  # a constant reference says nothing
    assert ev.pearson(x[:2], x[:2]) is None


def test_jitter_known_answers():
    base = np.zeros((478, 2), np.float32)
    steady = [base + t * 3.0 for t in range(6)]  # constant velocity: no acceleration
    assert ev.jitter(steady, [10.0] * 6) == pytest.approx(0.0)
    shaky = [base + np.array([t % 2, 0], np.float32) for t in range(6)]  # +-1 px zigzag
    assert ev.jitter(shaky, [10.0] * 6) == pytest.approx(0.2)  # |1 - 2*0 + 1| / 10
    assert ev.jitter([shaky[0], None, shaky[2], shaky[3]], [10.0] * 4) is None


def _sample(t: float, shift: float = 0.0) -> ev.FaceSample:
    shapes = {k: 0.5 + 0.4 * math.sin(t + i) for i, k in enumerate(ev.KEY_SHAPES)}
    angles = (10 * math.sin(t), 5 * math.cos(t), 3 * math.sin(2 * t))
    xy = np.full((478, 2), 100 + shift + 5 * math.sin(t), np.float32)
    features = {k: 0.3 + 0.05 * math.sin(t + i) for i, k in enumerate(ev.FEATURES)}
    return ev.FaceSample(shapes=shapes, angles=angles, xy=xy, size=50.0, features=features)


def test_an_output_equal_to_its_driver_scores_r_1_and_jitter_ratio_1():
    records = [ev.FrameRecord(i, None, _sample(i * 0.3), _sample(i * 0.3, shift=7.0))
               for i in range(40)]
    m = ev.score_motion(records)
    assert m.expr_r == pytest.approx(1.0) and m.expr_amplitude == pytest.approx(1.0)
    assert set(m.shape_r) == set(ev.KEY_SHAPES)
    assert m.geometry_r == pytest.approx(1.0) and set(m.feature_r) == set(ev.FEATURES)
    assert m.yaw_r == pytest.approx(1.0) and m.pitch_r == pytest.approx(1.0)
    assert m.roll_r == pytest.approx(1.0) and m.pose_r == pytest.approx(1.0)
    assert m.face_found == 1.0 and m.jitter_ratio == pytest.approx(1.0)


def test_a_still_output_scores_r_0_and_lost_faces_are_counted():
    still = _sample(0.0)
    records = [ev.FrameRecord(i, None, _sample(i * 0.3), still if i % 4 else None) for i in range(40)]
    m = ev.score_motion(records)
    assert m.expr_r == 0.0 and m.pose_r == 0.0 and m.expr_amplitude == pytest.approx(0.0, abs=1e-12)
    assert m.face_found == pytest.approx(30 / 40)


def test_geometry_r_sees_landmark_motion_that_a_painting_s_blendshapes_do_not_show():
    """The painting case: the output's mouth narrows and opens with the driver's, but its
    blendshapes rest where they do not respond. expr r is 0, geom r is 1."""
    def painting(t):
        sample = _sample(t)
        return dataclasses.replace(sample, shapes={k: 0.007 for k in ev.KEY_SHAPES})

    m = ev.score_motion([ev.FrameRecord(i, None, _sample(i * 0.3), painting(i * 0.3)) for i in range(40)])
    assert m.expr_r == 0.0 and m.geometry_r == pytest.approx(1.0)


def test_face_features_follow_the_face_not_its_place_size_or_tilt(astronaut_portrait):
    xy = astronaut_portrait.face.xy.astype(np.float64)
    base = ev.face_features(xy)
    angle = math.radians(20)
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = ev.face_features((xy - xy.mean(0)) @ turn.T * 1.7 + (40, -25))
    assert moved == pytest.approx(base, abs=1e-6)
    wider = xy.copy()
    wider[[61, 291]] += np.array([[-4.0, -3.0], [4.0, -3.0]])  # corners out and up: a smile
    smile = ev.face_features(wider)
    assert smile["mouth_width"] > base["mouth_width"] + 0.05
    assert smile["corner_right"] > base["corner_right"] and smile["corner_left"] > base["corner_left"]


def test_contact_sheet_layout():
    assert ev.sheet_indices(1, 40, 8) == [1, 6, 11, 16, 21, 26, 31, 36]
    assert ev.sheet_indices(1, 40, 8, every=10) == [1, 11, 21, 31]
    sheet = ev.ContactSheet([1, 3], tile_height=50)
    for i in range(5):
        sheet.offer(i, np.zeros((100, 100, 3), np.uint8), np.full((200, 100, 3), 200, np.uint8))
    image = sheet.render()
    assert image.shape == (28 + 2 * 50 + 4, 2 * 50 + 4, 3)
    assert image[28 + 50 + 4 + 25, 25].mean() == 200  # an output tile, bottom row


def test_cross_sheets_zoom_on_the_output_face():
    face = np.array([[40, 100], [60, 130]], np.float32)  # a 20 x 30 face box in a 100 x 400 canvas
    assert ev.square_box(face, (100, 400), 2.0) == (20, 85, 80, 145)
    assert ev.square_box(face, (100, 400), 10.0) == (0, 65, 100, 165)  # at most the canvas width
    sheet = ev.ContactSheet([1], tile_height=60, face_zoom=2.0)
    output = np.zeros((400, 100, 3), np.uint8)
    output[85:145, 20:80] = 255  # exactly the zoomed square
    sheet.offer(1, np.zeros((60, 60, 3), np.uint8), output, face)
    tile = sheet.render()[28 + 60 + 4:, :]
    assert tile.shape[:2] == (60, 60) and tile.min() == 255


# -- the commands on real clips ------------------------------------------------------------------


def test_self_reenactment_canvas_lines_up_with_the_ground_truth(tmp_path, landmarker_model):
    """Frame 0 of a self-reenactment by the static engine is the ground truth itself, exactly."""
    from live_puppet.app import App

    clip = ev.probe_clip(need(DRIVING / "d0.mp4"))
    portrait = tmp_path / "frame0.png"
    cv2.imwrite(str(portrait), clip.first_frame)
    task = ev.EvalTask(driving=clip.path, portrait=None, engine="static")
    config = ev.eval_config(task, portrait, clip, ev.EvalOptions(out_dir=tmp_path), max_frames=2)
    sink = ev.EvalSink(ev.FrameScorer(landmarker_model, clip.fps, ground_truth=True), first=0)
    App(config, extra_sinks=[sink]).run()
    assert [r.index for r in sink.records] == [0, 1] and sink.canvas == (clip.width, clip.height)
    assert sink.records[0].image.psnr == ev.PSNR_CAP_DB
    assert sink.records[0].image.ssim == pytest.approx(1.0)
    assert sink.records[1].image.psnr < ev.PSNR_CAP_DB


def test_eval_self_on_d0_warp_follows_and_static_is_the_floor(tmp_path, landmarker_model):
    clip = need(DRIVING / "d0.mp4")  # strong expressions
    out, scores = tmp_path / "out", tmp_path / "scores.json"
    assert main(["eval", "--self", str(clip), "--engine", "warp,static", "--frames", "40",
                 "--out", str(out), "--json", str(scores)]) == 0
    data = json.loads(scores.read_text())
    warp, static = data["results"]
    assert (warp["engine"], static["engine"]) == ("warp", "static")
    assert warp["frames"] == static["frames"] == 40
    assert abs(static["expr_r"]) < 0.2 and static["expr_amplitude"] < 0.1
    assert warp["expr_r"] > 0.6 and warp["expr_amplitude"] > 0.3
    for r in (warp, static):
        assert 15 < r["psnr"] < ev.PSNR_CAP_DB and 0.5 < r["ssim"] < 1.0
        assert r["psnr_face"] < r["psnr"] and r["face_found"] == 1.0
        sheet = cv2.imread(r["contact_sheet"])
        assert sheet is not None and sheet.shape[0] == 28 + 2 * 200 + 4
    assert warp["ssim_face"] > static["ssim_face"]
    assert [s["name"] for s in data["summary"]] == ["mean (warp)", "mean (static)"]


def test_eval_cross_writes_scores_sheet_and_side_by_side_video(tmp_path, landmarker_model, capsys):
    portrait, clip = need(PORTRAITS / "mona_lisa.jpg"), need(DRIVING / "d19.mp4")
    out, scores = tmp_path / "out", tmp_path / "scores.json"
    assert main(["eval", "--portrait", str(portrait), "--driving", str(clip), "--frames", "12",
                 "--max-side", "512", "--video", "--out", str(out), "--json", str(scores)]) == 0
    assert "mona_lisa~d19" in capsys.readouterr().out
    result = json.loads(scores.read_text())["results"][0]
    assert result["mode"] == "cross" and result["psnr"] is None and result["frames"] == 12
    assert result["canvas"] == [288, 512] and result["face_found"] == 1.0
    assert Path(result["contact_sheet"]).is_file()
    with av.open(result["video"]) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape[0] == 480  # driver 480 high, output scaled to it


def test_bench_measures_each_configuration_in_its_own_process(tmp_path, landmarker_model, capsys):
    portrait, clip = need(PORTRAITS / "mona_lisa.jpg"), need(DRIVING / "d19.mp4")
    stats = tmp_path / "bench.json"
    assert main(["bench", "--driving", str(clip), "--portrait", str(portrait), "--engine", "static",
                 "--sizes", "512", "--frames", "15", "--json", str(stats)]) == 0
    printed = capsys.readouterr().out
    assert "load average" in printed and "288x512" in printed
    (result,) = json.loads(stats.read_text())["results"]
    assert result["frames_out"] == 15 and result["canvas"] == [288, 512]
    for stage in ("capture_wait", "track", "retarget", "render", "sink"):
        assert set(result["latency_ms"][stage]) == {"median", "p90", "p99"}
    assert result["fps"] > 0 and result["peak_rss_mb"] > 50


def test_bench_neural_compares_backends_on_random_weights(tmp_path, landmarker_model, capsys):
    """One command, one row per backend, with no trained checkpoint: the generator's own time too."""
    portrait, clip = need(PORTRAITS / "mona_lisa.jpg"), need(DRIVING / "d0.mp4")
    stats = tmp_path / "bench.json"
    assert main(["bench", "--driving", str(clip), "--portrait", str(portrait), "--engine", "neural",
                 "--model-config", "small", "--model-size", "64", "--backend", "torch,onnxruntime",
                 "--sizes", "512", "--frames", "10", "--no-record", "--json", str(stats)]) == 0
    printed = capsys.readouterr().out
    assert "small 64px random" in printed and "generator ms" in printed
    assert "weights are random" in printed and "GFLOP per frame" in printed
    results = json.loads(stats.read_text())["results"]
    assert [r["backend"] for r in results] == ["torch", "onnxruntime"]
    for r in results:
        assert r["spec"]["model_config"] == "small" and r["spec"]["model_size"] == 64
        assert r["frames_out"] == 10 and set(r["latency_ms"]["generate"]) == {"median", "p90", "p99"}
        assert r["latency_ms"]["generate"]["median"] <= r["latency_ms"]["render"]["p99"]


def test_bench_int8_on_a_fresh_checkout_makes_its_calibration_set_from_the_clip(tmp_path, landmarker_model):
    """Without a set, onnxruntime-int8 stopped the run; bench now makes one once from its clip."""
    from live_puppet.backends.calibration import CalibrationSet, ensure_calibration_set

    clip = need(DRIVING / "d0.mp4")
    ensure_calibration_set(tmp_path / "calibration", clip, landmarker_model)
    made = CalibrationSet(tmp_path / "calibration")
    assert len(made) >= 40 and made.files[0].parent.name == "d0"
    ensure_calibration_set(tmp_path / "calibration", need(DRIVING / "d19.mp4"), landmarker_model)
    assert len(CalibrationSet(tmp_path / "calibration").files) == 1  # one set is enough


def test_bench_specs_multiply_only_the_neural_engine():
    base = ev.BenchSpec(engine="warp", driving="d.mp4", portrait="p.jpg", max_side=512)
    models = [{"checkpoint": "s.safetensors", "model_config": "small", "model_size": 256},
              {"checkpoint": "p.safetensors", "model_config": "paper", "model_size": 256}]
    specs = ev.bench_specs(["warp", "neural"], [512], base, backends=["torch", "onnxruntime"],
                           models=models)
    assert [s.title for s in specs] == [
        "warp", "neural small 256px random torch", "neural small 256px random onnxruntime",
        "neural paper 256px random torch", "neural paper 256px random onnxruntime"]
    assert ev.bench_specs(["warp"], [512, 1024], base) == [
        ev.BenchSpec(engine="warp", driving="d.mp4", portrait="p.jpg", max_side=s) for s in (512, 1024)]


def test_a_slow_render_still_sees_every_frame_of_a_file(tmp_path, landmarker_model):
    """Evaluation needs every frame: the app's end-of-stream marker must not push out the last ones."""
    import time

    from live_puppet.app import App
    from live_puppet.config import RunConfig
    from live_puppet.render.base import ENGINES, Engine

    class SlowEngine(Engine):
        def __init__(self, **_):
            pass

        def render(self, portrait, target):
            time.sleep(0.3)  # slower than the tracker: the hand-over queue is full at the end
            return portrait.image

    class Indices(ev.Sink):
        wants_canvas = True

        def __init__(self):
            self.seen = []

        def send(self, image, info):
            self.seen.append(info.index)

    clip = need(DRIVING / "d0.mp4")
    frames = tmp_path / "frames"
    frames.mkdir()
    with av.open(str(clip)) as c:
        for i, frame in zip(range(6), c.decode(video=0)):
            cv2.imwrite(str(frames / f"{i:03d}.png"), frame.to_ndarray(format="bgr24"))
    sink = Indices()
    ENGINES["slow_test"] = SlowEngine
    try:
        App(RunConfig(portrait=frames / "000.png", source=str(frames), realtime=False,
                      engine="slow_test", vcam=False, preview=False), extra_sinks=[sink]).run()
    finally:
        del ENGINES["slow_test"]
    assert sink.seen == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--portrait", "p.jpg"], "--driving"),
    (["eval", "--self", "missing.mp4"], "does not exist"),
    (["eval", "--self", "missing.mp4", "--engine", "nope"], "Unknown engine"),
    (["bench", "--portrait", "p.jpg"], "--driving"),
    (["bench", "--backend", "torch,tensorflow"], "not a list of backends"),
    (["bench", "--driving", "ONE_FRAME", "--portrait", "PORTRAIT"], "has 1 frame; bench needs a clip of 10"),
])
def test_bad_eval_and_bench_arguments_get_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    if "ONE_FRAME" in argv:  # (it printed a row of 0.0 fps and 0.0 ms)
        from conftest import write_video

        argv[argv.index("ONE_FRAME")] = str(write_video(tmp_path / "one.mp4", [np.zeros((64, 64, 3), np.uint8)]))
        argv[argv.index("PORTRAIT")] = str(need(PORTRAITS / "mona_lisa.jpg"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("live-puppet: error:")


def test_an_eval_refused_before_its_first_pair_leaves_no_empty_out_folder(tmp_path, capsys):
    (tmp_path / "not_a_picture.jpg").write_text("not an image")
    sheets = tmp_path / "runs" / "a" / "sheets"
    assert main(["eval", "--portrait", str(tmp_path / "not_a_picture.jpg"), "--driving",
                 str(need(DRIVING / "d0.mp4")), "--frames", "2", "--out", str(sheets)]) == 2
    assert "not an image" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nor the folders made on the way to it


@pytest.mark.parametrize("extra, message", [
    (["--engine", "neural"], "--model-config"),
    (["--engine", "warp", "--model-config", "small"], "add --engine neural"),
    (["--engine", "neural", "--model-config", "small", "--checkpoint", "ck.safetensors"], "not both"),
    (["--engine", "neural", "--model-config", "huge"], "unknown config"),
    (["--engine", "neural", "--model-config", "paper", "--model-size", "100"], "power of two"),
])
def test_bench_neural_argument_errors_are_one_line(extra, message, capsys):
    portrait, clip = need(PORTRAITS / "mona_lisa.jpg"), need(DRIVING / "d0.mp4")
    assert main(["bench", "--driving", str(clip), "--portrait", str(portrait)] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("live-puppet: error:")


class _Captured(BaseException):  # not an Exception: main() reports those and returns
    pass


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_eval_and_bench_honour_feature_gains(command, tmp_path, monkeypatch):
    """--feature-gain reaches the pipeline that eval and bench run, as it does for run."""
    clip = need(DRIVING / "d0.mp4")
    seen = {}

    def capture(_first, options=None, **_):
        seen["gains"] = (options if command == "eval" else _first).feature_gains
        raise _Captured

    monkeypatch.setattr(ev, "run_eval" if command == "eval" else "run_bench_spec", capture)
    args = (["eval", "--self", str(clip), "--out", str(tmp_path)] if command == "eval" else
            ["bench", "--driving", str(clip), "--portrait", str(need(PORTRAITS / "mona_lisa.jpg"))])
    with pytest.raises(_Captured):
        main(args + ["--feature-gain", "brow=2", "--feature-gain", "eye=1.5"])
    assert seen["gains"] == {"brow": 2.0, "eye": 1.5}


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt(), 130),
                                        (ev.UserError("the clip went away"), 2),
                                        (RuntimeError("evaluating d19 failed"), 1)])
def test_eval_stopped_in_a_later_pair_keeps_the_pairs_scored(stop, code, tmp_path, landmarker_model,
                                                              monkeypatch, capsys):
    """Ctrl-C during pair 2, or pair 2 failing: pair 1's row and JSON are still written."""
    clip = need(DRIVING / "d19.mp4")
    scores = tmp_path / "scores.json"
    real_task = ev.run_eval_task

    def second_pair_stopped(task, options):
        if task.engine == "static":
            raise stop
        return real_task(task, options)

    monkeypatch.setattr(ev, "run_eval_task", second_pair_stopped)
    assert main(["eval", "--self", str(clip), "--engine", "warp,static", "--frames", "4",
                 "--out", str(tmp_path / "out"), "--json", str(scores)]) == code
    captured = capsys.readouterr()
    assert "d19" in captured.out and "mean (warp)" in captured.out
    assert "only 1 of 2 pairs" in captured.err
    data = json.loads(scores.read_text())
    assert [r["engine"] for r in data["results"]] == ["warp"]
    assert data["complete"] is False and data["pairs_planned"] == 2


def test_eval_with_the_neural_engine_needs_its_checkpoint_before_any_pair(tmp_path, monkeypatch, capsys):
    clip = need(DRIVING / "d19.mp4")
    monkeypatch.setattr(ev, "run_eval_task", lambda *a: pytest.fail("a pair ran before the check"))
    assert main(["eval", "--self", str(clip), "--engine", "warp,neural", "--frames", "4",
                 "--out", str(tmp_path / "out")]) == 2
    assert "needs a trained model" in capsys.readouterr().err


def test_self_reenactment_of_a_clip_starting_without_a_face_says_so(tmp_path, capsys, landmarker_model):
    # Its first frame is the portrait: the error named a deleted temporary picture and gave advice
    # about a portrait the user never passed.
    from conftest import write_video

    clip = write_video(tmp_path / "empty_start.mp4", [np.full((240, 320, 3), 128, np.uint8)] * 12)
    assert main(["eval", "--self", str(clip), "--frames", "10", "--landmarker-model",
                 str(landmarker_model)]) == 2
    err = capsys.readouterr().err
    assert "The first frame of 'empty_start.mp4' shows no face" in err and "live-puppet-eval-" not in err


def test_a_clip_cut_short_is_scored_as_far_as_it_goes(tmp_path, capsys, landmarker_model):
    # "stopped after 72 of 75 frames ...; nothing was scored": 72 good frames thrown away.
    data = need(DRIVING / "d20.mp4").read_bytes()  # (its index comes first: a cut copy still opens)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 12 // 100])
    assert main(["eval", "--self", str(cut), "--frames", "40", "--engine", "warp", "--out",
                 str(tmp_path / "out"), "--json", str(tmp_path / "scores.json"),
                 "--landmarker-model", str(landmarker_model)]) == 0
    assert "its header announces" in capsys.readouterr().err
    scored = json.loads((tmp_path / "scores.json").read_text())["results"][0]["frames"]
    assert 10 <= scored < 40


def test_self_reenactment_checks_the_first_frame_at_the_clip_s_own_size(tmp_path, capsys, astronaut,
                                                                        landmarker_model):
    # The check enlarged a 320x240 frame to 512 px, where a 40 px face passed; the run, at the
    # clip's own size, then failed naming a deleted temporary picture.
    from conftest import write_video

    frame = np.full((240, 320, 3), 128, np.uint8)
    frame[20:225, 60:265] = cv2.resize(astronaut, (205, 205), interpolation=cv2.INTER_AREA)
    clip = write_video(tmp_path / "small.mp4", [frame] * 12)
    assert main(["eval", "--self", str(clip), "--frames", "10", "--landmarker-model",
                 str(landmarker_model)]) == 2
    err = capsys.readouterr().err
    assert "The first frame of 'small.mp4' shows no face big enough" in err and "live-puppet-eval-" not in err
