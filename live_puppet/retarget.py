"""Retargeting: the driver's motion, relative to their neutral face, applied to the portrait's face.

The portrait keeps its own face shape. Per frame:
- head motion: the similarity (rotation, scale, translation) that carries the driver's neutral
  face onto the current one, fitted on landmarks that do not move with expression (Umeyama);
- expression: what is left after undoing that motion, i.e. landmark offsets in the neutral face's
  frame, turned into the portrait's head frame (rotation from MediaPipe's transformation
  matrices) and scaled to the portrait's face size;
- both are applied to the portrait's own landmarks, about the portrait's head centre.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from live_puppet import face_mesh as fm
from live_puppet.face_mesh import eye_openness
from live_puppet.calibration import (RIGID_POINTS, Neutral, NeutralPicker, euler_angles,
                                     matrix_rotation, rigid_frame, rotation_from_euler, umeyama)
from live_puppet.types import FaceState, Portrait, Target

__all__ = ["Retargeter", "RetargetSettings", "OneEuroFilter", "clamp_rotation", "matrix_rotation",
           "umeyama", "RIGID_POINTS"]


def clamp_rotation(r: np.ndarray, max_degrees: float) -> np.ndarray:
    """The same rotation with its angle limited to `max_degrees` (extreme poses tear the image)."""
    vec, _ = cv2.Rodrigues(np.asarray(r, np.float64))
    angle = float(np.linalg.norm(vec))
    limit = math.radians(max_degrees)
    if angle <= limit:
        return r
    out, _ = cv2.Rodrigues(vec * (limit / angle))
    return out


class OneEuroFilter:
    """The 1€ filter (Casiez et al. 2012) on an array: smooth when still, quick when moving."""

    def __init__(self, min_cutoff: float | np.ndarray = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff, dt):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x, np.zeros_like(x), t
            return x
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x


@dataclass
class RetargetSettings:
    """How the driver's motion is carried over."""

    expression_gain: float = 1.0  # multiplier on expression offsets (hotkeys +/-)
    eye_gain: float = 1.0  # multiplier on eye closing (1: the driver's blink closes fully)
    brow_gain: float = 1.0  # extra multiplier on the brows' offsets (fading out around them)
    mouth_gain: float = 1.0  # extra multiplier on the lips' offsets (fading out around them)
    jaw_gain: float = 1.0  # extra multiplier on the chin's offsets (fading out around it)
    gain_falloff: float = 0.12  # how far a feature gain reaches, as a fraction of the face size
    soft_tissue_smoothing: int = 2  # passes of neighbour averaging on cheek/forehead/nose/chin motion
    neutral_frames: int = 5  # first frames with a face the neutral is chosen from (the calmest)
    neutral_keep: int = 3  # how many of the calmest are averaged
    neutral_refine_frames: int = 150  # later frames in which a clearly calmer face replaces it
    max_rotation_deg: float = 35.0  # head rotation limit relative to the neutral
    # Head scale (leaning in or back) limited to 1 ± this: the head grows or shrinks inside the
    # hair and background, which stay; at 1.25 the crown was cut flat and at 0.75 the hair rose
    # into a spike.
    max_scale_change: float = 0.1
    # Head translation limit, as a fraction of the face box, approached softly (tanh): the neck and
    # shoulders stay, so a head carried far stretches the neck (d20.mp4's caller rises by 0.65
    # face heights: with a hard limit of 0.35 Mona's neck grew by 58 px, the astronaut's helmet
    # ring was pulled into an oval). Small shifts pass nearly as they are.
    max_translation: float = 0.2
    # No point moves further than this by expression, in head sizes (the RMS radius of the rigid
    # points, about a third of the face's box): d6.mp4's widest-open mouth reaches 0.62.
    max_expression: float = 1.5
    smoothing_min_cutoff: float = 30.0  # 1€ filter on driver landmarks (Hz); lower = smoother
    expressive_min_cutoff: float = 100.0  # the same for lids, lips, irises and jaw (blinks are fast)
    smoothing_beta: float = 0.02  # 1€ speed coefficient; higher = less lag when moving
    hold_seconds: float = 0.3  # a face lost this long or less keeps its last pose (a blur, a hand)
    ease_seconds: float = 0.5  # ... after which the portrait eases back to its rest pose over this
    # A face back after this long away (the user left and sat down again) makes its place and size
    # the new home: the neutral face is moved and scaled there (its shape and its turn kept: a face
    # is often picked up again while still turned, which must not become "straight ahead").
    rehome_seconds: float = 3.0


# The points each feature gain is centred on.
_GAIN_FEATURES = {
    "brow_gain": np.concatenate([fm.RIGHT_BROW, fm.LEFT_BROW]),
    "mouth_gain": np.concatenate([fm.OUTER_LIPS, fm.INNER_LIPS]),
    "jaw_gain": fm.FACE_OVAL[14:23],  # the chin, between the jaw's corners
}


def smooth_soft_tissue(delta: np.ndarray, passes: int) -> np.ndarray:
    """The expression offsets with the soft tissue's (cheeks, forehead, nose, chin) each averaged
    half-and-half with its mesh neighbours', `passes` times; lips, lids, irises, jaw line and brows
    keep theirs. A grimace squeezes neighbouring cheek points past each other; transferred to a
    face of other proportions that folds the warp over at the face border (Mona Lisa driven by
    d6.mp4: a lobe of cheek out over her hair, 702 folded pixels at frame 96; 97 after 2 passes).
    """
    if passes <= 0:
        return delta
    points, table = fm.soft_tissue()
    valid = (table >= 0)[..., None]
    count = valid.sum(1)
    out = delta.copy()
    for _ in range(passes):
        around = np.where(valid, out[np.maximum(table, 0)], 0.0).sum(1) / count
        out[points] = 0.5 * out[points] + 0.5 * around
    return out


def feature_gains(landmarks: np.ndarray, settings: RetargetSettings) -> np.ndarray:
    """A gain per landmark: each feature's gain on its own points, fading smoothly (Gaussian in
    the distance to the feature, `gain_falloff` face sizes) to 1 away from it, so neighbouring
    points never pull apart."""
    xy = np.asarray(landmarks, np.float64)[:, :2]
    size = float(np.ptp(xy, axis=0).max()) or 1.0
    gains = np.ones(len(xy))
    for name, points in _GAIN_FEATURES.items():
        g = getattr(settings, name)
        if g == 1.0:
            continue
        dist = np.linalg.norm(xy[:, None, :] - xy[None, points, :], axis=2).min(1) / size
        gains += (g - 1.0) * np.exp(-0.5 * (dist / settings.gain_falloff) ** 2)
    return gains


# Inner-lip points facing each other across the mouth: the upper line's and the lower line's; and
# the outer-lip points in front of each (the lips' outer edges, above and below).
_LIP_PAIRS = np.stack([fm.UPPER_INNER_LINE[1:10], fm.INNER_LIPS[11:][::-1]], 1)
_OUTER_PAIRS = np.stack([fm.OUTER_LIPS[1:10], fm.OUTER_LIPS[11:][::-1]], 1)


def keep_lips_uncrossed(landmarks: np.ndarray, rest: np.ndarray) -> None:
    """Where an upper inner-lip point has gone below its partner on the lower lip, the two lips
    are moved apart until they meet, each with its outer edge (in place). Lip motion is carried as
    offsets from the driver's neutral: taken with the lips apart (d3.mp4 starts mid-sentence), a
    driver pressing them shut pushed the portrait's lips through each other, which drew an opening
    with teeth in a closed mouth. (Meeting halfway with the outer edges left where they were
    turned a lip inside out at a high --expression-gain.)"""
    down = rest[152, :2] - rest[fm.UPPER_INNER_LIP, :2]
    down = down / (np.linalg.norm(down) + 1e-9)
    gap = (landmarks[_LIP_PAIRS[:, 1], :2] - landmarks[_LIP_PAIRS[:, 0], :2]) @ down
    crossed = gap < 0
    if crossed.any():
        half = (gap[crossed] / 2)[:, None] * down  # (gap < 0: up the face)
        for lip, sign in ((0, 1.0), (1, -1.0)):  # the upper lip up, the lower one down
            for pairs in (_LIP_PAIRS, _OUTER_PAIRS):
                landmarks[pairs[crossed, lip], :2] += sign * half


def set_eye_opening(landmarks: np.ndarray, rest: np.ndarray, eye: str, fraction: float) -> None:
    """Open the eye of `landmarks` to `fraction` of its opening in `rest` (in place).

    The upper lid closes onto the lower one, as in a blink; the iris follows vertically so it
    never leaves the eye. (Lids meeting a fifth of the way up instead read less shut to MediaPipe
    on painted eyes: blink r over the 15 cross-reenactment pairs 0.81/0.70 against 0.85/0.72.)
    """
    upper, lower, _, iris = fm.LID_PAIRS[eye]
    meet = rest[lower]
    # Keep the transferred sideways/depth motion of the open lids; a shut eye is a line.
    sideways = np.array([1.0, 0.0, 1.0]) * min(fraction, 1.0)
    offset_u = (landmarks[upper] - rest[upper]) * sideways
    offset_l = (landmarks[lower] - rest[lower]) * sideways
    landmarks[upper] = meet + fraction * (rest[upper] - meet) + offset_u
    landmarks[lower] = meet + fraction * (rest[lower] - meet) + offset_l
    mid_y = meet[:, 1].mean()
    landmarks[iris, 1] = mid_y + min(fraction, 1.0) * (landmarks[iris, 1] - mid_y)


def eased_to_rest(target: Target, rest: np.ndarray, weight: float) -> Target:
    """`target` moved towards the portrait's rest pose: weight 1 is the target, 0 the rest pose.

    The expression and the head's motion are eased apart and put together again as __call__ does,
    so that the face stays with the hair and the ring that follow the head's (eased) motion."""
    rest = np.asarray(rest, np.float64)
    center = target.center.astype(np.float64)
    turn = target.rotation.astype(np.float64)
    move = target.translation.astype(np.float64)
    base = center + ((target.landmarks - move - center) @ turn) / target.scale  # expression only
    base = rest + weight * (base - rest)
    rvec, _ = cv2.Rodrigues(turn)
    turn, _ = cv2.Rodrigues(rvec * weight)
    scale = 1.0 + weight * (target.scale - 1.0)
    move = move * weight
    landmarks = center + scale * (base - center) @ turn.T + move
    return Target(landmarks=landmarks.astype(np.float32), rotation=turn.astype(np.float32),
                  scale=scale, translation=move.astype(np.float32), center=target.center,
                  blendshapes=target.blendshapes)


class Retargeter:
    """Turns the driver's FaceState into a Target for the current portrait.

    `stored_shape`: a saved neutral (calibration.load_shape), re-placed on the first face seen.
    `on_neutral`: called with each new neutral (to save it).
    """

    def __init__(self, settings: RetargetSettings | None = None, stored_shape=None, on_neutral=None):
        self.settings = settings or RetargetSettings()
        s = self.settings
        self.neutral: Neutral | None = None
        self.stored_shape = stored_shape
        self.on_neutral = on_neutral
        self._picker = NeutralPicker(window=s.neutral_frames, keep=min(s.neutral_keep, s.neutral_frames),
                                     refine_frames=0 if stored_shape is not None else s.neutral_refine_frames)
        cutoff = np.full((478, 1), s.smoothing_min_cutoff)
        cutoff[fm.expressive_points()] = s.expressive_min_cutoff
        self._filter = OneEuroFilter(cutoff, s.smoothing_beta)
        self._retake = threading.Event()  # set by the hotkey (main thread), acted on per frame
        self._portrait: Portrait | None = None  # the one the _p_ fields below describe
        self._p_center = np.zeros(3)
        self._p_size = 1.0
        self._p_rotation = np.eye(3)
        self._held: tuple[Target, float] | None = None  # the last target and its time
        self._seen_at: float | None = None  # when a face was last seen

    # -- neutral -------------------------------------------------------------------------------
    def retake_neutral(self) -> None:
        """Forget the neutral (and any stored one); the next frames choose a new one.

        Safe to call from another thread (the hotkey): the reset happens at the start of the next
        frame, never in the middle of one."""
        self._retake.set()

    def _forget_neutral(self) -> None:
        self._retake.clear()
        self.neutral = None
        self.stored_shape = None
        self._held = None
        self._picker.reset()
        # (a session started from a saved neutral did not refine it; a neutral taken afresh is)
        self._picker.refine_frames = self.settings.neutral_refine_frames
        self._filter.reset()

    def _adopt(self, neutral: Neutral) -> None:
        self.neutral = neutral
        if self.on_neutral is not None:
            self.on_neutral(neutral)

    def _update_neutral(self, face: FaceState) -> bool:
        """Feed the calibration; False while there is no neutral yet."""
        if self.neutral is None and self.stored_shape is not None:
            shape, act = self.stored_shape
            self.neutral = Neutral.place(shape, face, act)
            return True
        picked = self._picker.offer(face, self.neutral)
        if picked is not None:
            self._adopt(picked)
            self._filter.reset()
        return self.neutral is not None

    @property
    def calibrating(self) -> bool:
        return self.neutral is None or self._retake.is_set()

    # -- portrait ------------------------------------------------------------------------------
    def _use_portrait(self, portrait: Portrait) -> None:
        if self._portrait is portrait:
            return
        self._portrait = portrait
        self._held = None  # another portrait's pose
        self._p_center, self._p_size = rigid_frame(portrait.face.landmarks)
        self._p_rotation = matrix_rotation(portrait.face.matrix)
        self._p_open = {eye: eye_openness(portrait.face.landmarks, eye) for eye in fm.LID_PAIRS}
        self._p_gains = None  # per-landmark feature gains, computed on first use

    def _gains(self, portrait: Portrait) -> np.ndarray:
        s = self.settings
        key = (s.brow_gain, s.mouth_gain, s.jaw_gain, s.gain_falloff)
        if self._p_gains is None or self._p_gains[0] != key:
            self._p_gains = (key, feature_gains(portrait.face.landmarks, s))
        return self._p_gains[1]

    def _portrait_turn(self, driver_now: np.ndarray, driver_neutral: np.ndarray) -> np.ndarray:
        """The rotation (image axes) that turns the portrait's head as the driver's turned from
        their neutral: yaw, pitch and roll offsets added to the portrait's own angles.

        Applying the driver's rotation as it is would mix the axes on a portrait whose head is
        already turned (a driver's nod would partly roll a three-quarter face)."""
        now, rest = np.array(euler_angles(driver_now)), np.array(euler_angles(driver_neutral))
        own = np.array(euler_angles(self._p_rotation))
        return rotation_from_euler(*(own + (now - rest))) @ self._p_rotation.T

    # -- per frame -----------------------------------------------------------------------------
    def __call__(self, face: FaceState | None, portrait: Portrait, timestamp: float) -> Target | None:
        """The portrait's target for this driver face; None while calibrating or with no face."""
        if self._retake.is_set():
            self._forget_neutral()
        self._use_portrait(portrait)
        if face is None:
            return self._without_face(portrait, timestamp)
        away = None if self._seen_at is None else timestamp - self._seen_at
        self._seen_at = timestamp
        if self.neutral is not None and away is not None and away > self.settings.rehome_seconds:
            self.neutral = self.neutral.moved_to(face)
            self._filter.reset()
        if not self._update_neutral(face):
            return None
        s = self.settings
        n = self.neutral
        driver = self._filter(face.landmarks, timestamp)

        # Head motion: the similarity carrying the neutral's rigid points onto the current ones.
        r, scale, t = umeyama(n.landmarks[RIGID_POINTS], driver[RIGID_POINTS])
        # Expression: what remains once that motion is undone, in the neutral's frame.
        undone = (driver - t) @ r / scale
        delta = smooth_soft_tissue(undone - n.landmarks, s.soft_tissue_smoothing)

        # Into the portrait: neutral head frame -> portrait head frame, driver size -> portrait size.
        size_ratio = self._p_size / n.size
        to_portrait = self._p_rotation @ n.rotation.T
        rest = portrait.face.landmarks.astype(np.float64)
        gains = self._gains(portrait)[:, None] * s.expression_gain
        offsets = (delta @ to_portrait.T) * size_ratio * gains
        # Far more than any face does means a broken input (a degenerate neutral), which would
        # otherwise send points far off the canvas.
        reach = np.linalg.norm(offsets, axis=1, keepdims=True)
        limit = s.max_expression * self._p_size
        base = rest + offsets * np.minimum(1.0, limit / np.maximum(reach, 1e-9))
        # Eyes: the driver's lid opening relative to their neutral, applied to the portrait's eye.
        for eye in fm.LID_PAIRS:
            ratio = eye_openness(undone, eye) / max(eye_openness(n.landmarks, eye), 1e-3)
            fraction = float(np.clip(1 - s.eye_gain * (1 - ratio), 0.0, 1.35))
            if self._p_open[eye] < 0.08:  # the portrait's eye is (nearly) shut: leave it
                continue
            set_eye_opening(base, rest, eye, fraction)
        keep_lips_uncrossed(base, rest)

        turn = self._portrait_turn(r @ n.rotation, n.rotation)
        turn = clamp_rotation(turn, s.max_rotation_deg)
        move = (r @ n.center * scale + t) - n.center  # how the neutral's centre moved
        scale = float(np.clip(scale, 1 - s.max_scale_change, 1 + s.max_scale_change))
        move = move * size_ratio
        limit = max(s.max_translation * 2.5 * self._p_size, 1e-6)
        reach = float(np.linalg.norm(move[:2]))  # (in any direction alike: a circle, not a square)
        if reach > 0.0:
            move[:2] *= limit * math.tanh(reach / limit) / reach
        move[2] = 0.0

        center = self._p_center
        landmarks = center + scale * (base - center) @ turn.T + move
        target = Target(landmarks=landmarks.astype(np.float32), rotation=turn.astype(np.float32),
                        scale=scale, translation=move.astype(np.float32),
                        center=center.astype(np.float32), blendshapes=dict(face.blendshapes))
        self._held = (target, timestamp)
        return target

    def _without_face(self, portrait: Portrait, timestamp: float) -> Target | None:
        """No face in this frame: the last pose held for `hold_seconds` (a frame blurred by fast
        motion, a hand passing: the portrait snapped to its rest pose and back), then eased to the
        rest pose over `ease_seconds` (the driver left); None once there."""
        if self._held is None:
            return None
        target, seen = self._held
        s = self.settings
        gone = timestamp - seen
        if gone <= s.hold_seconds:
            return target
        weight = 1.0 - (gone - s.hold_seconds) / max(s.ease_seconds, 1e-6)
        if weight <= 0.0:
            self._held = None
            return None
        return eased_to_rest(target, portrait.face.landmarks, weight)
