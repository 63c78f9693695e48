import cv2
import numpy as np
import pytest

from live_puppet import face_mesh as fm
from live_puppet.retarget import (OneEuroFilter, Retargeter, RetargetSettings, clamp_rotation,
                                  matrix_rotation, smooth_soft_tissue, umeyama)
from live_puppet.types import FaceState


def rot(yaw_deg=0.0, pitch_deg=0.0, roll_deg=0.0):
    r, _ = cv2.Rodrigues(np.radians([pitch_deg, yaw_deg, roll_deg]).astype(np.float64))
    return r


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 3))
    r = rot(20, -10, 5)
    dst = 1.3 * src @ r.T + [5, -2, 1]
    r2, s2, t2 = umeyama(src, dst)
    assert np.allclose(r2, r, atol=1e-9) and s2 == pytest.approx(1.3) and np.allclose(t2, [5, -2, 1])


def test_clamp_rotation_limits_the_angle():
    r = clamp_rotation(rot(60), 35)
    angle = np.degrees(np.linalg.norm(cv2.Rodrigues(r)[0]))
    assert angle == pytest.approx(35, abs=1e-6)


def face_from(landmarks, rotation=np.eye(3), blend=None):
    m = np.eye(4)
    gl = np.diag([1.0, -1.0, -1.0])
    m[:3, :3] = gl @ rotation @ gl  # inverse of matrix_rotation's axis change
    return FaceState(landmarks=landmarks.astype(np.float32), blendshapes=blend or {}, matrix=m,
                     image_size=(512, 512))


def drive(retargeter, portrait, faces):
    out = None
    for i, face in enumerate(faces):
        out = retargeter(face, portrait, i / 30)
    return out


def settings():
    # No smoothing in these tests.
    return RetargetSettings(neutral_frames=3, smoothing_min_cutoff=1e6, expressive_min_cutoff=1e6)


def test_matrix_rotation_round_trips_through_the_gl_axes():
    r = rot(15, 5, -3)
    assert np.allclose(matrix_rotation(face_from(np.zeros((478, 3)), r).matrix), r, atol=1e-6)


def test_neutral_driver_leaves_the_portrait_as_it_is(astronaut_portrait):
    rng = np.random.default_rng(1)
    driver = rng.normal(scale=40, size=(478, 3)) + [250, 250, 0]
    target = drive(Retargeter(settings()), astronaut_portrait, [face_from(driver)] * 5)
    assert np.abs(target.landmarks - astronaut_portrait.face.landmarks).max() < 1e-3


def test_open_mouth_and_head_turn_are_carried_over(astronaut_portrait):
    neutral = astronaut_portrait.face.landmarks.astype(np.float64).copy() * 0.8 + [40, 10, 0]
    rt = Retargeter(settings())
    drive(rt, astronaut_portrait, [face_from(neutral)] * 3)
    # The driver drops the jaw: the lower lip and chin go down by a tenth of the face height.
    opened = neutral.copy()
    face_h = np.ptp(neutral[:, 1])
    lower = list(fm.LOWER_INNER_LIP for _ in range(1)) + [17, 152, 14, 87, 317, 178, 402]
    opened[lower, 1] += 0.1 * face_h
    target = rt(face_from(opened), astronaut_portrait, 1.0)
    p = astronaut_portrait.face.landmarks
    gap_before = p[fm.LOWER_INNER_LIP, 1] - p[fm.UPPER_INNER_LIP, 1]
    gap_after = target.landmarks[fm.LOWER_INNER_LIP, 1] - target.landmarks[fm.UPPER_INNER_LIP, 1]
    portrait_h = np.ptp(p[:, 1])
    assert gap_after - gap_before == pytest.approx(0.1 * portrait_h, rel=0.15)
    # The driver turns the head by 20 degrees (about its own centre): the portrait turns too.
    c = neutral.mean(0)
    turned = (neutral - c) @ rot(20).T + c
    target = rt(face_from(turned, rot(20)), astronaut_portrait, 2.0)
    angle = np.degrees(np.linalg.norm(cv2.Rodrigues(target.rotation.astype(np.float64))[0]))
    assert angle == pytest.approx(20, abs=0.5)
    assert abs(target.landmarks[fm.UPPER_INNER_LIP, 1] - p[fm.UPPER_INNER_LIP, 1]) < 0.05 * portrait_h


def test_a_turned_portrait_nods_about_its_own_angles(astronaut_portrait):
    """A driver's nod makes a three-quarter portrait nod too, not roll: the driver's yaw, pitch and
    roll changes are added to the portrait's own angles."""
    from dataclasses import replace

    from live_puppet.calibration import euler_angles

    own = rot(35)  # the portrait looks 35 degrees to the side
    turned_face = face_from(astronaut_portrait.face.landmarks.astype(np.float64), own)
    portrait = replace(astronaut_portrait, face=turned_face)
    neutral = astronaut_portrait.face.landmarks.astype(np.float64) * 0.8 + [40, 10, 0]
    rt = Retargeter(settings())
    drive(rt, portrait, [face_from(neutral)] * 3)
    c = neutral.mean(0)
    nod = rot(0, 12)
    target = rt(face_from((neutral - c) @ nod.T + c, nod), portrait, 1.0)
    yaw, pitch, roll = euler_angles(target.rotation.astype(np.float64) @ own)
    assert (yaw, pitch, roll) == pytest.approx((35, 12, 0), abs=0.5)
    # Applied as it is, the same nod would have tilted her head in the picture (roll).
    assert abs(euler_angles(nod @ own)[2]) > 5


def test_feature_gains_scale_one_feature_and_fade_out_around_it(astronaut_portrait):
    from live_puppet.retarget import feature_gains

    neutral = astronaut_portrait.face.landmarks.astype(np.float64)
    raised = neutral.copy()
    brows = np.concatenate([fm.RIGHT_BROW, fm.LEFT_BROW])
    raised[brows, 1] -= 6  # the driver raises the brows by 6 px
    moved = {}
    for gain in (1.0, 2.0):
        rt = Retargeter(RetargetSettings(neutral_frames=3, smoothing_min_cutoff=1e6,
                                         expressive_min_cutoff=1e6, brow_gain=gain))
        drive(rt, astronaut_portrait, [face_from(neutral)] * 3)
        target = rt(face_from(raised), astronaut_portrait, 1.0)
        moved[gain] = astronaut_portrait.face.landmarks[brows, 1] - target.landmarks[brows, 1]
    assert moved[2.0].mean() == pytest.approx(2 * moved[1.0].mean(), rel=0.05)
    gains = feature_gains(neutral, RetargetSettings(brow_gain=2.0))
    assert gains[brows].min() > 1.95 and gains[152] == pytest.approx(1.0, abs=0.01)  # the chin
    assert 1.0 < gains[1] < 2.0  # the nose tip, between: a smooth fade, no seam


def test_expression_gain_scales_the_expression_and_the_limits_hold_the_head(astronaut_portrait):
    from live_puppet.calibration import rigid_frame

    neutral = astronaut_portrait.face.landmarks.astype(np.float64) * 0.8 + [40, 10, 0]
    p = astronaut_portrait.face.landmarks
    opened = neutral.copy()
    opened[[14, 17, 152, 87, 317, 178, 402], 1] += 0.1 * np.ptp(neutral[:, 1])
    drop = {}
    for gain in (1.0, 2.0):  # --expression-gain (and hotkeys + and -)
        rt = Retargeter(RetargetSettings(neutral_frames=3, smoothing_min_cutoff=1e6,
                                         expressive_min_cutoff=1e6, expression_gain=gain))
        drive(rt, astronaut_portrait, [face_from(neutral)] * 3)
        drop[gain] = rt(face_from(opened), astronaut_portrait, 1.0).landmarks[17, 1] - p[17, 1]
    assert drop[1.0] > 5 and drop[2.0] == pytest.approx(2 * drop[1.0], rel=0.05)
    # A 60 degree turn is held at max_rotation_deg; a move by two face widths approaches
    # max_translation (the neck stays), while a small shift passes nearly as it is.
    c = neutral.mean(0)
    target = rt(face_from((neutral - c) @ rot(60).T + c, rot(60)), astronaut_portrait, 2.0)
    angle = np.degrees(np.linalg.norm(cv2.Rodrigues(target.rotation.astype(np.float64))[0]))
    assert angle == pytest.approx(rt.settings.max_rotation_deg, abs=0.5)
    width = np.ptp(neutral[:, 0])
    target = rt(face_from(neutral + [2 * width, 0, 0]), astronaut_portrait, 3.0)
    face_box = np.ptp(p[:, 0])
    limit = rt.settings.max_translation * face_box
    assert 0.6 * limit < target.translation[0] <= 1.1 * limit
    target = rt(face_from(neutral + [0.03 * width, 0, 0]), astronaut_portrait, 4.0)
    assert target.translation[0] == pytest.approx(0.03 * np.ptp(p[:, 0]), rel=0.1)
    # softly: a move as long as the limit gives tanh(1) of it, in any direction alike
    reach = rt.settings.max_translation * 2.5 * rigid_frame(p)[1]  # (the limit, in portrait px)
    for direction in ([1.0, 0.0], [0.6, 0.8]):
        shift = np.array([*direction, 0.0]) * reach * width / np.ptp(p[:, 0])
        target = rt(face_from(neutral + shift), astronaut_portrait, 5.0)
        assert np.linalg.norm(target.translation[:2]) == pytest.approx(np.tanh(1.0) * reach, rel=0.05)


def test_lips_pressed_after_a_neutral_with_parted_lips_close_and_do_not_cross(astronaut_portrait):
    # The neutral was taken mid-sentence (lips apart); pressing them shut is then a closing motion
    # larger than the portrait's own opening: its lips must meet, not pass through each other.
    p = astronaut_portrait.face.landmarks.astype(np.float64)
    upper, lower = fm.INNER_LIPS[1:10], fm.INNER_LIPS[11:][::-1]  # facing pairs across the mouth
    neutral = p.copy()
    neutral[lower, 1] += 0.06 * np.ptp(p[:, 1])  # the lower lip further down than the portrait's
    pressed = p.copy()
    pressed[lower, 1] = p[upper, 1]  # shut
    rt = Retargeter(settings())
    drive(rt, astronaut_portrait, [face_from(neutral)] * 3)
    target = rt(face_from(pressed), astronaut_portrait, 1.0).landmarks
    gaps = target[lower, 1] - target[upper, 1]
    assert gaps.min() >= -0.1  # (crossed by 5 px before: an opening drawn in a closed mouth)


def test_a_still_face_with_tracking_noise_gives_a_stiller_portrait(astronaut_portrait):
    # The 1 euro filter at the default settings: MediaPipe's jitter on a still face is calmed (the
    # seeded noise makes the figures below exact).
    rng = np.random.default_rng(0)
    neutral = astronaut_portrait.face.landmarks.astype(np.float64)
    rt = Retargeter(RetargetSettings(neutral_frames=3))
    noisy, out = [], []
    for i in range(60):
        face = neutral + np.concatenate([rng.normal(scale=1.0, size=(478, 2)), np.zeros((478, 1))], 1)
        target = rt(face_from(face), astronaut_portrait, i / 30)
        if i >= 10 and target is not None:
            noisy.append(face[:, :2])
            out.append(target.landmarks[:, :2])
    calm = np.setdiff1d(np.arange(478), fm.expressive_points())  # (lids and lips: barely filtered)
    frame_to_frame = lambda xs: float(np.abs(np.diff(np.array(xs)[:, calm], axis=0)).mean())  # noqa: E731
    # 0.34 of the driver's jitter; 0.42 without the filter (the rigid fit and the soft-tissue
    # smoothing alone); 1 for a portrait copying the noise
    assert frame_to_frame(out) < 0.38 * frame_to_frame(noisy)


def test_a_quick_blink_is_not_smoothed_away(astronaut_portrait):
    """With the default smoothing, a lid that shuts in one frame shuts the portrait's lid in that
    frame (a 4 Hz filter on every point closed it only about halfway)."""
    from live_puppet.retarget import eye_openness

    rt = Retargeter(RetargetSettings(neutral_frames=3))
    neutral = astronaut_portrait.face.landmarks.astype(np.float64)
    drive(rt, astronaut_portrait, [face_from(neutral)] * 10)
    closed = neutral.copy()
    closed[[246, 161, 160, 159, 158, 157, 173]] = closed[[7, 163, 144, 145, 153, 154, 155]]
    target = rt(face_from(closed), astronaut_portrait, 10 / 30)
    rest = eye_openness(astronaut_portrait.face.landmarks, "right")
    assert eye_openness(target.landmarks, "right") < 0.15 * rest


def test_retake_neutral_uses_the_next_frames(astronaut_portrait):
    rt = Retargeter(settings())
    base = astronaut_portrait.face.landmarks.astype(np.float64)
    drive(rt, astronaut_portrait, [face_from(base)] * 3)
    smiling = base.copy()
    smiling[[61, 291], 1] -= 8
    assert np.abs(rt(face_from(smiling), astronaut_portrait, 1).landmarks - base).max() > 5
    rt.retake_neutral()
    assert rt(face_from(smiling), astronaut_portrait, 2) is None  # calibrating again
    target = drive(rt, astronaut_portrait, [face_from(smiling)] * 3)
    assert np.abs(target.landmarks - base).max() < 1e-3


def test_pressing_c_while_a_frame_is_being_retargeted_takes_effect_on_the_next_frame(astronaut_portrait):
    """The hotkey runs on the main thread while the tracking thread is inside a frame; the reset
    must not land half-way through the frame's filtering (it crashed the app on a hotkey)."""
    rt = Retargeter(settings())
    base = astronaut_portrait.face.landmarks.astype(np.float64)
    drive(rt, astronaut_portrait, [face_from(base)] * 3)

    def alpha_with_a_keypress(cutoff, dt):  # the key press arrives mid-filter
        rt.retake_neutral()
        return OneEuroFilter._alpha(cutoff, dt)

    rt._filter._alpha = alpha_with_a_keypress
    assert rt(face_from(base), astronaut_portrait, 1) is not None  # this frame finishes as it began
    assert rt.calibrating
    del rt._filter._alpha
    assert rt(face_from(base), astronaut_portrait, 2) is None  # the next one starts calibrating


def test_one_euro_filter_calms_a_still_signal_and_follows_a_jump():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    rng = np.random.default_rng(2)
    noisy = [f(np.array([100.0 + rng.normal(scale=1.0)]), i / 30)[0] for i in range(60)]
    assert np.std(noisy[30:]) < 0.5
    for i in range(60, 70):
        out = f(np.array([160.0]), i / 30)[0]
    assert out > 155


def test_a_blink_closes_the_portrait_eyes_fully_and_they_reopen(astronaut_portrait):
    from live_puppet.retarget import eye_openness

    rt = Retargeter(settings())
    neutral = astronaut_portrait.face.landmarks.astype(np.float64) * 0.9 + [20, 30, 0]
    drive(rt, astronaut_portrait, [face_from(neutral)] * 3)
    closed = neutral.copy()
    for upper, lower in (([246, 161, 160, 159, 158, 157, 173], [7, 163, 144, 145, 153, 154, 155]),
                         ([466, 388, 387, 386, 385, 384, 398], [249, 390, 373, 374, 380, 381, 382])):
        closed[upper] = closed[lower]  # upper lids down on the lower ones
    target = rt(face_from(closed), astronaut_portrait, 1.0)
    for eye in ("left", "right"):
        assert eye_openness(astronaut_portrait.face.landmarks, eye) > 0.15
        assert eye_openness(target.landmarks, eye) < 0.02
    reopened = rt(face_from(neutral), astronaut_portrait, 2.0)
    assert np.abs(reopened.landmarks - astronaut_portrait.face.landmarks).max() < 1e-3


def test_calmest_frames_become_the_neutral_and_a_saved_one_is_reused(astronaut_portrait, tmp_path):
    from live_puppet.calibration import calibration_path, load_shape, save_neutral

    base = astronaut_portrait.face.landmarks.astype(np.float64)
    smiling = base.copy()
    smiling[[61, 291], 1] -= 8
    saved = []
    rt = Retargeter(RetargetSettings(neutral_frames=4, neutral_keep=1, smoothing_min_cutoff=1e6,
                                     expressive_min_cutoff=1e6),
                    on_neutral=saved.append)
    frames = [face_from(smiling, blend={"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9})] * 3
    frames.append(face_from(base, blend={"mouthSmileLeft": 0.0}))
    drive(rt, astronaut_portrait, frames)
    assert np.allclose(rt.neutral.landmarks, base)  # the relaxed face, not the first (smiling) one
    path = calibration_path("me", tmp_path)
    save_neutral(saved[-1], path)
    # Next session: the user sits elsewhere (shifted, smaller); the stored shape is re-placed there.
    elsewhere = base * 0.8 + [30, 10, 0]
    rt2 = Retargeter(settings(), stored_shape=load_shape(path))
    target = rt2(face_from(elsewhere), astronaut_portrait, 0.0)
    assert target is not None  # no calibration wait
    assert np.abs(target.landmarks - astronaut_portrait.face.landmarks).max() < 0.5


def test_a_neutral_retaken_in_a_session_started_from_a_saved_one_is_still_refined(astronaut_portrait):
    # c pressed while smiling: as at any first calibration, a calmer face soon after replaces it
    base = astronaut_portrait.face.landmarks.astype(np.float64)
    smiling = {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9}
    from live_puppet.calibration import Neutral

    stored = (Neutral.from_faces([face_from(base)]).shape(), 0.0)  # as load_shape gives it
    rt = Retargeter(RetargetSettings(neutral_frames=3, neutral_keep=1, smoothing_min_cutoff=1e6,
                                     expressive_min_cutoff=1e6), stored_shape=stored)
    drive(rt, astronaut_portrait, [face_from(base)])
    rt.retake_neutral()
    drive(rt, astronaut_portrait, [face_from(base, blend=smiling)] * 4)
    smiling_neutral = rt.neutral
    assert smiling_neutral is not None and smiling_neutral.activity > 0.5
    drive(rt, astronaut_portrait, [face_from(base)] * 2)
    assert rt.neutral.activity < smiling_neutral.activity  # the relaxed face took its place


def test_a_calmer_face_passing_by_does_not_move_the_neutral_home(astronaut_portrait):
    """Refinement takes a clearly calmer face in the neutral's place, not one sliding out of the
    frame (on d0 with the face slid 190 px aside, Mona stayed 59 px off after the user was back)."""
    from live_puppet.calibration import NeutralPicker, rigid_frame

    base = astronaut_portrait.face.landmarks.astype(np.float64)
    _, size = rigid_frame(base)
    smiling = {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9}
    picker = NeutralPicker(window=3, keep=1)
    neutral = None
    for _ in range(3):
        neutral = picker.offer(face_from(base, blend=smiling), neutral) or neutral
    aside = base + [3 * size, 0, 0]
    assert picker.offer(face_from(aside), neutral) is None  # calmer, but elsewhere
    calmer = picker.offer(face_from(base), neutral)  # calmer, in place
    assert calmer is not None and calmer.activity < neutral.activity


def test_no_input_sends_the_face_off_the_canvas(astronaut_portrait):
    """A broken driver face (lips thrown 10,000 px away), or a neutral collapsed to a point, gives
    a target near the portrait's face, not points far off the canvas (the warp hung on those)."""
    from live_puppet import face_mesh as fm
    from live_puppet.render.warp import WarpEngine

    base = astronaut_portrait.face.landmarks.astype(np.float64)
    thrown = base.copy()
    thrown[fm.OUTER_LIPS, 1] += 10_000
    rt = Retargeter(settings())
    target = drive(rt, astronaut_portrait, [face_from(base)] * 3 + [face_from(thrown)])
    x0, y0, x1, y1 = astronaut_portrait.face.bbox()
    reach = np.abs(target.landmarks[:, :2] - base[:, :2]).max()
    assert reach < max(x1 - x0, y1 - y0)  # within a face size of where it was (not 10,000 px)
    collapsed = Retargeter(settings(), stored_shape=(np.zeros((478, 3)), 0.5))
    target = collapsed(face_from(base), astronaut_portrait, 0.0)
    assert np.isfinite(target.landmarks).all() and np.abs(target.landmarks).max() < 4 * 512
    assert WarpEngine().render(astronaut_portrait, target).shape == astronaut_portrait.image.shape


def test_a_calibration_file_that_is_not_a_face_is_refused_not_animated(astronaut_portrait, tmp_path):
    """A stored shape of zeros used to load and turn the warp's map into NaNs (the run hung)."""
    import json

    from live_puppet.calibration import FORMAT, load_shape
    from live_puppet.errors import UserError

    good = {"format": FORMAT, "activity": 0.5, "shape": np.zeros((478, 3)).tolist()}
    for name, data in (("zeros", good), ("list", [1, 2]), ("null", None),
                       ("nan", {**good, "activity": float("nan")})):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(UserError, match="damaged or not a live-puppet calibration"):
            load_shape(path)


def test_flow_stabilizer_keeps_a_still_face_still_and_follows_a_real_move(astronaut):
    """MediaPipe-like jitter on a still picture is removed; a real shift of the picture is followed."""
    from live_puppet.tracking import FlowStabilizer

    rng = np.random.default_rng(3)
    true = np.stack(np.meshgrid(np.linspace(180, 320, 22), np.linspace(90, 250, 22)), -1).reshape(-1, 2)
    true = np.concatenate([true, np.zeros((len(true), 1))], 1)[:478]
    stab = FlowStabilizer()
    out = []
    for i in range(30):
        noisy = true + np.concatenate([rng.normal(scale=2.0, size=(478, 2)), np.zeros((478, 1))], 1)
        face = face_from(noisy)
        out.append(stab(astronaut, face).landmarks[:, :2])
    spread_in = 2.0
    spread_out = np.std(np.array(out[10:]), axis=0).mean()
    assert spread_out < spread_in / 4
    shifted = np.roll(astronaut, 6, axis=1)  # the whole picture moves 6 px right
    moved = stab(shifted, face_from(true + [6, 0, 0])).landmarks[:, :2]
    assert np.median(moved[:, 0] - out[-1][:, 0]) == pytest.approx(6, abs=1.0)


def test_flow_stabilizer_keeps_a_one_frame_blink(astronaut):
    """A blink lasting one frame reaches the puppet whole: lids follow MediaPipe, not the flow.

    (The flow cannot see a lid close; with a 0.7 share of MediaPipe, d6.mp4's one-frame blink kept
    half its lid gap.)
    """
    from live_puppet.tracking import FlowStabilizer

    true = np.stack(np.meshgrid(np.linspace(180, 320, 22), np.linspace(90, 250, 22)), -1).reshape(-1, 2)
    true = np.concatenate([true, np.zeros((len(true), 1))], 1)[:478]
    upper = fm.LID_PAIRS["left"][0]
    stab = FlowStabilizer()
    for _ in range(5):
        stab(astronaut, face_from(true))
    blink = true.copy()
    blink[upper, 1] += 10.0  # the upper lid drops 10 px for one frame
    out = stab(astronaut, face_from(blink)).landmarks
    assert np.abs(out[upper, 1] - true[upper, 1]).min() > 9.5


def test_squeezed_cheek_points_are_smoothed_so_the_mesh_does_not_fold(astronaut_portrait):
    """Cheek points pushed past each other (as a grimace squeezes them) fold the face mesh; the
    soft-tissue smoothing unfolds it, while a motion shared by the whole face is kept as it is."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    edges = {(min(c.start, c.end), max(c.start, c.end)) for c in C.FACE_LANDMARKS_TESSELATION}
    around = {}
    for a, b in edges:
        around.setdefault(a, set()).add(b)
        around.setdefault(b, set()).add(a)
    triangles = np.array(sorted({tuple(sorted((a, b, c))) for a, b in edges for c in around[a] & around[b]}))

    def folded(points):
        a, b, c = (points[triangles[:, k], :2] for k in range(3))
        area = lambda a, b, c: (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # noqa: E731
        r = rest[triangles[:, 0], :2], rest[triangles[:, 1], :2], rest[triangles[:, 2], :2]
        return int(((area(a, b, c) * area(*r)) <= 0).sum())

    rest = astronaut_portrait.face.landmarks.astype(np.float64)
    soft, _ = fm.soft_tissue()
    spacing = np.median(np.linalg.norm(rest[triangles[:, 0], :2] - rest[triangles[:, 1], :2], axis=1))
    delta = np.zeros_like(rest)
    delta[soft, :2] = np.random.default_rng(0).normal(scale=spacing, size=(len(soft), 2))
    before = folded(rest + delta)
    after = folded(rest + smooth_soft_tissue(delta, RetargetSettings().soft_tissue_smoothing))
    assert before > 50 and after < before / 2
    shift = np.tile([3.0, -2.0, 0.5], (478, 1))  # the whole face moving together
    assert np.allclose(smooth_soft_tissue(shift, 2), shift)


def calibrated_with_a_turn(portrait, yaw_deg):
    """A retargeter calibrated on the portrait's own face, and that face turned by `yaw_deg`."""
    neutral = portrait.face.landmarks.astype(np.float64).copy()
    c = neutral.mean(0)
    rt = Retargeter(settings())
    drive(rt, portrait, [face_from(neutral)] * 3)
    return rt, neutral, face_from((neutral - c) @ rot(yaw_deg).T + c, rot(yaw_deg))


def test_a_face_lost_for_a_moment_keeps_its_pose_then_eases_back_to_rest(astronaut_portrait):
    # A frame blurred by fast motion has no face: the portrait snapped to its rest pose and back.
    rt, _, turned = calibrated_with_a_turn(astronaut_portrait, 20)
    posed = rt(turned, astronaut_portrait, 1.0)
    rest = astronaut_portrait.face.landmarks

    def away(t):  # how far from the rest pose, as a share of the pose's
        target = rt(None, astronaut_portrait, t)
        if target is None:
            return 0.0
        return np.abs(target.landmarks - rest).mean() / np.abs(posed.landmarks - rest).mean()

    s = rt.settings
    assert away(1.0 + 1 / 30) == pytest.approx(1.0)  # one frame without a face: held
    assert away(1.0 + s.hold_seconds) == pytest.approx(1.0)
    halfway = away(1.0 + s.hold_seconds + s.ease_seconds / 2)
    assert 0.3 < halfway < 0.7  # easing back
    assert away(1.0 + s.hold_seconds + s.ease_seconds + 0.01) == 0.0  # at rest: the driver left
    again = rt(turned, astronaut_portrait, 3.0)  # back: posed at once
    assert np.abs(again.landmarks - posed.landmarks).max() < 1e-3


def test_leaning_in_or_back_grows_or_shrinks_the_head_a_little_where_it_is(astronaut_portrait):
    # The head grows inside hair and background that stay: at 1.25 its crown was cut flat, at 0.75
    # the hair rose into a spike; and the scale's limit moved the head off (the centre's motion
    # was computed with the limited scale).
    neutral = astronaut_portrait.face.landmarks.astype(np.float64).copy() * 0.8 + [40, 10, 0]
    rt = Retargeter(settings())
    drive(rt, astronaut_portrait, [face_from(neutral)] * 3)
    from live_puppet.calibration import rigid_frame

    c, _ = rigid_frame(neutral)  # the head's centre
    rest = astronaut_portrait.face.landmarks
    p_centre, _ = rigid_frame(rest)
    for lean in (1.5, 0.6):
        target = rt(face_from(c + (neutral - c) * lean), astronaut_portrait, 1.0 + lean)
        assert abs(target.scale - 1.0) <= 0.1 + 1e-6
        shift = np.abs(rigid_frame(target.landmarks)[0][:2] - p_centre[:2]).max()
        assert shift < 0.02 * np.ptp(rest[:, 1])  # the head stays where it is


def test_a_driver_back_after_a_while_somewhere_else_is_at_home_there(astronaut_portrait):
    # The user left and sat down again further back and to the side: the portrait stayed smaller
    # and shifted until they pressed c.
    neutral = astronaut_portrait.face.landmarks.astype(np.float64).copy()
    rt = Retargeter(settings())
    drive(rt, astronaut_portrait, [face_from(neutral)] * 3)
    elsewhere = (neutral - neutral.mean(0)) * 0.8 + neutral.mean(0) + [60, 20, 0]
    for t in np.arange(1.0, 5.0, 0.5):  # away
        rt(None, astronaut_portrait, t)
    target = rt(face_from(elsewhere), astronaut_portrait, 5.0)
    assert np.abs(target.landmarks - astronaut_portrait.face.landmarks).max() < 1.0
    assert target.scale == pytest.approx(1.0)
    # Gone for a moment only: a move is a move.
    moved = rt(face_from(elsewhere + [30, 0, 0]), astronaut_portrait, 5.5)
    assert moved.translation[0] > 10


def test_easing_back_to_rest_keeps_the_face_on_the_moving_head(astronaut_portrait):
    # The landmarks were eased in a straight line while the head's rotation (which the hair and the
    # ring follow) was eased along its arc: mid-way the face slid against the hair by up to 12 px.
    from live_puppet.retarget import eased_to_rest

    neutral = astronaut_portrait.face.landmarks.astype(np.float64).copy()
    c = neutral.mean(0)
    rt = Retargeter(settings())
    drive(rt, astronaut_portrait, [face_from(neutral)] * 3)
    rolled = (neutral - c) @ rot(roll_deg=30).T * 1.1 + c
    posed = rt(face_from(rolled, rot(roll_deg=30)), astronaut_portrait, 1.0)
    half = eased_to_rest(posed, astronaut_portrait.face.landmarks, 0.5)
    rest = astronaut_portrait.face.landmarks.astype(np.float64)
    centre = half.center.astype(np.float64)
    rigid = centre + half.scale * (rest - centre) @ half.rotation.astype(np.float64).T + half.translation
    assert np.abs(half.landmarks - rigid)[:, :2].max() < 1.0  # the rest face carried by the eased pose


def test_a_driver_back_still_turned_does_not_make_that_turn_straight_ahead(astronaut_portrait):
    # Re-homing copied the returning face's turn: looking at the camera then turned the portrait
    # the other way until c was pressed.
    rt, neutral, turned = calibrated_with_a_turn(astronaut_portrait, 25)
    for t in np.arange(1.0, 5.0, 0.5):  # away
        rt(None, astronaut_portrait, t)
    back_turned = rt(turned, astronaut_portrait, 5.0)
    straight = rt(face_from(neutral), astronaut_portrait, 5.5)
    angle = lambda target: np.degrees(np.linalg.norm(cv2.Rodrigues(target.rotation.astype(np.float64))[0]))  # noqa: E731
    assert angle(back_turned) == pytest.approx(25, abs=1.0) and angle(straight) < 1.0
