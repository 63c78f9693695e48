"""The 478 -> 68 mapping and the coloured sketch: known landmark sets give known pixels."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from live_puppet import sketch
from live_puppet.sketch import PARTS, MEDIAPIPE_TO_IBUG68

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LANDMARKER = SHARED / "models/face_landmarker.task"
DRIVING = SHARED / "data/driving/d19.mp4"


def part(name):
    return next(p for p in PARTS if p.name == name)


def striped_points(size=128):
    """68 points: every part a horizontal line of its own, 12 px apart, x from 20 to 100."""
    pts = np.zeros((68, 2), np.float32)
    for k, p in enumerate(PARTS):
        n = p.stop - p.start
        pts[p.start:p.stop, 0] = np.linspace(20, 100, n)
        pts[p.start:p.stop, 1] = 10 + 12 * k
    return pts


def test_mapping_has_68_distinct_mesh_indices_and_parts_cover_them():
    assert len(MEDIAPIPE_TO_IBUG68) == 68
    assert len(set(MEDIAPIPE_TO_IBUG68)) == 68
    assert all(0 <= i < 468 for i in MEDIAPIPE_TO_IBUG68)  # face mesh, not the iris points
    covered = sorted(i for p in PARTS for i in range(p.start, p.stop))
    assert covered == list(range(68))
    assert MEDIAPIPE_TO_IBUG68[8] == 152  # iBUG 9, the chin
    assert MEDIAPIPE_TO_IBUG68[30] == 4  # iBUG 31, the nose tip


def test_each_part_is_drawn_in_its_colour_on_black():
    img = sketch.draw_sketch(striped_points(), 128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    for k, p in enumerate(PARTS):
        y = 10 + 12 * k
        assert tuple(img[y, 60]) == p.color, p.name  # on the line: exactly the part's colour
        assert not img[y + 5, 20:101].any(), p.name  # 5 px below the line: black
    assert not img[:, :15].any() and not img[:, 106:].any()  # nothing beyond the lines' ends


def test_closed_parts_close_and_open_parts_do_not():
    pts = striped_points()
    # right eye as a 20x10 rectangle (6 points), jaw as an open U
    eye = part("right_eye")
    pts[eye.start:eye.stop] = [(30, 30), (40, 30), (50, 30), (50, 40), (40, 40), (30, 40)]
    jaw = part("jaw")
    xs = np.linspace(60, 120, 17)
    pts[jaw.start:jaw.stop] = np.stack([xs, 100 - 40 * np.sin(np.linspace(0, np.pi, 17))], 1)
    img = sketch.draw_sketch(pts, 128)
    assert tuple(img[35, 30]) == eye.color  # the closing edge from point 42 back to 37
    assert not img[100, 70:110].any()  # no segment from the jaw's last point back to its first


def test_render_sketch_maps_478_landmarks_through_the_crop_box():
    pts68 = striped_points(64) / 2  # the lines in a 64-px source picture
    mesh = np.zeros((478, 3), np.float32)
    mesh[list(MEDIAPIPE_TO_IBUG68), :2] = pts68 + 100  # the picture's face sits at +100, +100
    img = sketch.render_sketch(mesh, (100, 100, 164, 164), 128)
    assert np.array_equal(img, sketch.draw_sketch(striped_points(), 128))


def test_face_box_is_square_around_the_face_and_crop_samples_it():
    pts = np.array([[10, 20], [50, 80]], np.float32)
    x0, y0, x1, y1 = sketch.face_box(pts, scale=1.5, lift=0.0)
    assert x1 - x0 == pytest.approx(90) and y1 - y0 == pytest.approx(90)
    assert (x0 + x1) / 2 == pytest.approx(30) and (y0 + y1) / 2 == pytest.approx(50)
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    assert np.array_equal(sketch.crop_image(image, (10, 5, 30, 25), 20), image[5:25, 10:30])
    outside = sketch.crop_image(image, (-10, -10, 10, 10), 20)
    assert not outside[:10, :10].any()  # beyond the picture is black
    assert np.array_equal(outside[10:, 10:], image[:10, :10])


def test_bad_landmark_counts_are_rejected():
    with pytest.raises(ValueError):
        sketch.to_ibug68(np.zeros((100, 2)))
    with pytest.raises(ValueError):
        sketch.draw_sketch(np.zeros((67, 2)), 64)


@pytest.mark.skipif(not (LANDMARKER.is_file() and DRIVING.is_file()),
                    reason="needs ../shared/models/face_landmarker.task and ../shared/data/driving")
def test_sketch_of_a_tracked_face_has_parts_in_anatomical_order():
    from live_puppet.tracking import Tracker

    ok, frame = cv2.VideoCapture(str(DRIVING)).read()
    assert ok
    with Tracker(LANDMARKER, mode="image") as tracker:
        face = tracker.track(frame)
    assert face is not None
    pts = sketch.to_ibug68(face.landmarks)
    mean_y = {p.name: pts[p.start:p.stop, 1].mean() for p in PARTS}
    assert mean_y["right_brow"] < mean_y["right_eye"] < mean_y["nose_base"] < mean_y["outer_lips"]
    assert pts[36, 0] < pts[45, 0]  # subject's right eye corner is on the image's left
    img = sketch.render_sketch(face.landmarks, sketch.face_box(face.landmarks), 128)
    for p in PARTS:
        assert (img == np.array(p.color, np.uint8)).all(axis=2).any(), p.name
