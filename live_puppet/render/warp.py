"""The `warp` engine: a dense backward warp of the portrait, no weights needed.

The portrait's landmarks and a set of anchor points are moved to their targets; the displacement
(source - target) is interpolated linearly over a Delaunay triangulation of the targets on a
coarse grid, upsampled (the displacement, not the absolute coordinates, so nothing shifts by half
a cell) and applied with one cv2.remap. Over the face the coarse map cannot close a lid two
pixels wide or follow a lip line, so there an exact piecewise-affine map takes over wherever the two
differ by more than a few pixels: fixed triangles (a Delaunay triangulation of the face, eye, brow,
lip and nose outlines on the portrait), each output pixel mapped through its own. Anchors:
- a ring around the face that follows the head rigidly, so hair and ears move with it (under the
  chin it hugs the face, so the neck stays still, and gives way to an opening jaw);
- a wider ring and the image border that stay still, so shoulders and background do not swim.
A mouth opened wider than the portrait's gets a dark interior with a hint of teeth instead of
stretched lips; a closing eye gets its lid's skin and a lash line. Within each open eye the iris
is moved along the eye to follow the gaze. Between each upper lid and its brow the band of skin
keeps part of its height however far the brow comes down; there, and between the lower lip and
the jaw line, the exact map runs through a strip of synthetic points instead of Delaunay's fan of
slivers (see _strips).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from live_puppet import face_mesh as fm
from live_puppet.render.base import Engine, register_engine
from live_puppet.types import Portrait, Target


@dataclass
class WarpSettings:
    grid_step: int = 8  # coarse grid spacing in pixels (the map is interpolated between)
    head_ring: float = 1.45  # ring following the head, as a multiple of the face oval's radius
    head_ring_chin: float = 1.04  # the same ring under the chin: hugs it, so neck and collar stay still
    still_ring: float = 2.4  # ring that stays still, same unit
    border_points: int = 8  # fixed points per image side


@dataclass
class _WarpMesh:
    """What the warp needs of a portrait, computed once."""

    source: np.ndarray  # N x 2 source points: 478 landmarks, head ring, still points
    head_ring: np.ndarray  # K x 2 ring points (portrait pixels) that follow the head
    head_ring_3d: np.ndarray  # K x 3 the same at the depth of their face-oval points (turned so)
    ring_follow: np.ndarray  # K: share of its face-oval point's own motion a ring point also takes
    oval_3d: np.ndarray  # K x 3 the portrait's face-oval landmarks (x, y, depth)
    n_landmarks: int
    roi: tuple[int, int, int, int]  # (x0, y0, x1, y1): outside it the warp is the identity
    grid: np.ndarray  # G x 2 coarse sample positions (pixel centres of the coarse map), image px
    grid_shape: tuple[int, int]  # (gh, gw)
    base_x: np.ndarray  # identity map over the roi, image px
    base_y: np.ndarray
    mouth: "_MouthStyle"
    triangles: np.ndarray  # T x 3 landmark indices over the face, in drawing order (see _face_triangles)
    n_openings: int  # the first n_openings triangles fill the eye and mouth openings
    rims: np.ndarray  # per triangle: 1, 2 or 3 if it touches the right eye's, left eye's or the
    # mouth's opening (a shut lid or closed lips rightly jump across it), else 0
    source_det: np.ndarray  # per triangle: twice its signed area on the portrait
    on_strip: np.ndarray  # per triangle: whether it has a corner on the strips (see _strips)
    exact_source: np.ndarray  # E x 2 the exact map's points on the portrait: the 478 landmarks, then
    # the synthetic points of the strips (upper lids to brows, lower lip to jaw line)
    strip: tuple  # (weights, offsets): the synthetic points are offsets + weights @ landmarks
    bands: list  # per eye: the exact map's points above the upper lid and their heights (_lid_bands)
    lids: list  # per eye: _LidStyle
    irises: list  # per eye whose iris the portrait shows: (eye loop, iris points, their (u, v)
    # in the eye's frame on the portrait: u along the corners' line, v across it, in eye widths,
    # whether it follows the gaze: not a turned head's far eye)
    blurred: np.ndarray | None = None  # the portrait blurred (made on first need): beyond its edge


@dataclass
class _LidStyle:
    eye: str  # "right" | "left" (the subject's)
    loop: np.ndarray  # the eye's outline: landmark indices
    outline_3d: np.ndarray  # ... and the portrait's points there (x, y, depth)
    skin: np.ndarray  # BGR of the upper lid's skin
    rest_opening: float  # the portrait's own lid gap over eye width


@dataclass
class _MouthStyle:
    cavity: np.ndarray  # BGR of the mouth interior
    teeth: np.ndarray  # BGR of the teeth hint
    floor: float  # the picture's darkest tone (its grey's 1st percentile): the cavity's corners
    rest_opening: float  # the portrait's own opening (inner-lip gap / mouth width)


def _ring(landmarks_xy: np.ndarray, factor: float, chin_factor: float | None = None) -> np.ndarray:
    """The face oval grown by `factor` about its centre; below the centre the growth blends to
    `chin_factor` (a head ring hugs the chin so the neck and collar stay still)."""
    oval = landmarks_xy[fm.FACE_OVAL]
    center = oval.mean(0)
    if chin_factor is None:
        return center + (oval - center) * factor
    below = _below_centre(landmarks_xy)[:, None]
    return center + (oval - center) * (factor + (chin_factor - factor) * below)


def _below_centre(landmarks_xy: np.ndarray) -> np.ndarray:
    """Per face-oval point: 0 above the oval's centre, rising to 1 at the bottom of the chin."""
    oval = landmarks_xy[fm.FACE_OVAL]
    return np.clip((oval[:, 1] - oval.mean(0)[1]) / (np.ptp(oval[:, 1]) / 2 + 1e-6), 0, 1)


def _lid_styles(image: np.ndarray, landmarks: np.ndarray) -> list[_LidStyle]:
    styles = []
    xy = landmarks[:, :2]
    for eye, loop in (("right", fm.RIGHT_EYE), ("left", fm.LEFT_EYE)):
        upper, _, corners, _ = fm.LID_PAIRS[eye]
        width = float(np.linalg.norm(xy[corners[0]] - xy[corners[1]]))
        # The skin of the upper lid: a band above its edge, a fifth of the eye's width tall.
        band = np.concatenate([xy[upper], xy[upper][::-1] - [0.0, 0.2 * width]])
        mask = cv2.fillPoly(np.zeros(image.shape[:2], np.uint8), [band.astype(np.int32)], 1)
        skin = np.array(cv2.mean(image, mask=mask)[:3]) if mask.any() else np.full(3, 128.0)
        styles.append(_LidStyle(eye=eye, loop=loop, outline_3d=landmarks[loop].astype(np.float32),
                                skin=skin, rest_opening=fm.eye_openness(landmarks, eye)))
    return styles


def _mouth_style(image: np.ndarray, xy: np.ndarray) -> _MouthStyle:
    lips = cv2.fillPoly(np.zeros(image.shape[:2], np.uint8), [xy[fm.OUTER_LIPS].astype(np.int32)], 1)
    lip_colour = np.array(cv2.mean(image, mask=lips)[:3]) if lips.any() else np.array([60, 60, 120.0])
    face = cv2.fillPoly(np.zeros(image.shape[:2], np.uint8), [xy[fm.FACE_OVAL].astype(np.int32)], 1)
    skin = np.array(cv2.mean(image, mask=face)[:3]) if face.any() else np.array([150, 150, 150.0])
    # Within the picture's own range of tones (1st and 99th percentiles of its grey around the
    # face: not a --size canvas's black bars): a dark picture's teeth glowed at grey 87 in a face of
    # 14, and a washed-out one's mouth was a black hole (27) where nothing was darker than 211.
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    lit = cv2.findNonZero((grey > 0).astype(np.uint8))  # the picture, not a canvas's black bars
    bx, by, bw, bh = cv2.boundingRect(lit) if lit is not None else (0, 0, grey.shape[1], grey.shape[0])
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)  # ... around the face
    grow_x, grow_y = (x1 - x0) / 2, (y1 - y0) / 2
    around = grey[max(by, int(y0 - grow_y)):min(by + bh, int(y1 + grow_y) + 1),
                  max(bx, int(x0 - grow_x)):min(bx + bw, int(x1 + grow_x) + 1)]
    dark, bright = np.percentile(around if around.size else grey, (1, 99))
    cavity = dark + (lip_colour - dark) * 0.22 + np.array([4, 4, 10.0]) * (bright - dark) / 255
    teeth = np.clip(skin * 0.55 + bright * 0.35, 0, 255) * np.array([0.92, 0.97, 1.0])
    width = np.linalg.norm(xy[fm.MOUTH_CORNERS[0]] - xy[fm.MOUTH_CORNERS[1]]) + 1e-6
    gap = np.linalg.norm(xy[fm.UPPER_INNER_LIP] - xy[fm.LOWER_INNER_LIP])
    return _MouthStyle(cavity=cavity, teeth=teeth, floor=float(dark), rest_opening=float(gap / width))


@register_engine("warp")
class WarpEngine(Engine):
    name = "warp"

    def __init__(self, settings: WarpSettings | None = None, **_):
        self.settings = settings or WarpSettings()

    def prepare(self, portrait: Portrait) -> None:
        if "warp" in portrait.extras:
            return
        s = self.settings
        h, w = portrait.image.shape[:2]
        xy = portrait.face.xy.astype(np.float32)
        head = _ring(xy, s.head_ring, s.head_ring_chin)
        still = _ring(xy, s.still_ring)
        n = s.border_points
        t = np.linspace(0, 1, n + 1)[:-1]
        border = np.concatenate([
            np.stack([t * (w - 1), np.zeros_like(t)], 1),
            np.stack([np.full_like(t, w - 1), t * (h - 1)], 1),
            np.stack([(1 - t) * (w - 1), np.full_like(t, h - 1)], 1),
            np.stack([np.zeros_like(t), (1 - t) * (h - 1)], 1),
        ])
        # Still points outside the picture are pulled onto its edge; ones inside the head ring's
        # reach are dropped, so the head always has room to move.
        still = np.clip(still, 0, [w - 1, h - 1])
        fixed = np.concatenate([still, border]).astype(np.float32)
        ring_center = head.mean(0)
        ring_radius = np.linalg.norm(head - ring_center, axis=1).max()
        keep = np.linalg.norm(fixed - ring_center, axis=1) > ring_radius * 1.15
        fixed = _dedupe(fixed[keep], min_dist=4.0)
        source = np.concatenate([xy, head, fixed]).astype(np.float32)

        # Outside the still ring every triangle has three still corners: only the ring's box moves.
        x0, y0 = np.floor(still.min(0)).astype(int) - s.grid_step
        x1, y1 = np.ceil(still.max(0)).astype(int) + s.grid_step + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        rw, rh = x1 - x0, y1 - y0
        gw, gh = max(2, round(rw / s.grid_step)), max(2, round(rh / s.grid_step))
        gx = x0 + (np.arange(gw) + 0.5) * (rw / gw) - 0.5  # where cv2.resize puts cell centres
        gy = y0 + (np.arange(gh) + 0.5) * (rh / gh) - 0.5
        grid = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2).astype(np.float32)
        base_x, base_y = np.meshgrid(np.arange(x0, x1, dtype=np.float32),
                                     np.arange(y0, y1, dtype=np.float32))
        irises = _irises(xy)
        oval_3d = portrait.face.landmarks[fm.FACE_OVAL].astype(np.float32)
        portrait.extras["warp"] = _WarpMesh(
            source=source, head_ring=head.astype(np.float32), n_landmarks=len(xy),
            head_ring_3d=np.concatenate([head, oval_3d[:, 2:]], 1).astype(np.float32),
            ring_follow=_below_centre(xy).astype(np.float32),
            oval_3d=oval_3d,
            roi=(int(x0), int(y0), int(x1), int(y1)), grid=grid,
            grid_shape=(gh, gw), base_x=base_x, base_y=base_y,
            mouth=_mouth_style(portrait.image, xy), lids=_lid_styles(portrait.image, portrait.face.landmarks),
            irises=irises, **_face_triangles(xy, irises))

    @staticmethod
    def _sample(image: np.ndarray, mesh: _WarpMesh, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """The picture at the map's points. Beyond its edge (a head filling the picture turns away
        from it) the blurred picture's edge colours carry on, fading in over EDGE_FADE_PX: its last
        column repeated drew streaks (each row one colour), and a mirror showed a second eye."""
        warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        h, w = image.shape[:2]
        (x_lo, x_hi, _, _), (y_lo, y_hi, _, _) = cv2.minMaxLoc(map_x), cv2.minMaxLoc(map_y)
        if x_lo >= 0 and y_lo >= 0 and x_hi <= w - 1 and y_hi <= h - 1:  # (the usual case: fast)
            return warped
        beyond = np.maximum(np.maximum(-map_x, map_x - (w - 1)), np.maximum(-map_y, map_y - (h - 1)))
        if mesh.blurred is None:
            mesh.blurred = cv2.GaussianBlur(image, (0, 0), EDGE_BLUR * max(h, w))
        filled = cv2.remap(mesh.blurred, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        weight = np.clip(beyond / EDGE_FADE_PX, 0.0, 1.0)[..., None]
        return (warped * (1.0 - weight) + filled * weight).astype(np.uint8)

    def target_points(self, mesh: _WarpMesh, target: Target) -> np.ndarray:
        """Where each source point goes: landmarks to the target, the ring with the head."""
        n, k = mesh.n_landmarks, len(mesh.head_ring)
        dst = mesh.source.copy()
        dst[:n] = target.landmarks[:, :2]
        # Each ring point turns at the depth of its face-oval point, as the hair beside the face
        # does. Turned at the head's pivot (a flat disc) the side rings swung inwards while the
        # cheek they surround swung out: the face crossed its ring and showed dark hair in the
        # cheek (Mona Lisa through d3.mp4's 20 degree turn).
        dst[n:n + k] = target.move_rigid(mesh.head_ring_3d)[:, :2]
        # The ring under the chin also takes the outward part of the chin's own motion (an
        # opening jaw), so the chin never crosses it and folds or tears the skin below.
        rest = target.move_rigid(mesh.oval_3d)[:, :2]  # where the head alone takes the oval
        outward = dst[n:n + k] - rest
        outward /= np.linalg.norm(outward, axis=1, keepdims=True) + 1e-6
        along = np.einsum("kc,kc->k", dst[fm.FACE_OVAL] - rest, outward)
        dst[n:n + k] += (mesh.ring_follow * np.maximum(along, 0.0))[:, None] * outward
        _hold_lid_bands(dst, mesh.bands, 0, n)
        return dst

    def displacement(self, mesh: _WarpMesh, target: Target) -> np.ndarray:
        """roi-sized H x W x 2 map: for each output pixel, the offset to the portrait pixel shown."""
        dst = self.target_points(mesh, target)
        gaze = _irises_to_rest(dst, mesh)
        tri = Delaunay(dst)
        simplex = tri.find_simplex(mesh.grid)
        inside = simplex >= 0
        simplex = np.where(inside, simplex, 0)
        trans = tri.transform[simplex]  # G x 3 x 2
        bary2 = np.einsum("gij,gj->gi", trans[:, :2], mesh.grid - trans[:, 2])
        bary = np.concatenate([bary2, 1 - bary2.sum(1, keepdims=True)], 1)
        verts = tri.simplices[simplex]  # G x 3
        offsets = mesh.source - dst  # N x 2
        disp = np.einsum("gk,gkc->gc", bary, offsets[verts])
        disp[~inside] = 0.0
        gh, gw = mesh.grid_shape
        coarse = disp.reshape(gh, gw, 2).astype(np.float32)
        x0, y0, x1, y1 = mesh.roi
        disp = cv2.resize(coarse, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        exact_dst = _with_strips(dst[:mesh.n_landmarks], mesh.strip)
        _hold_lid_bands(exact_dst, mesh.bands, mesh.n_landmarks, len(exact_dst))
        _exact_face_map(disp, mesh, exact_dst)
        for loop, u_now, u_rest, radius in gaze:
            _turn_eye(disp, mesh, dst[loop], u_now, u_rest, radius)
        return disp

    def render(self, portrait: Portrait, target: Target | None) -> np.ndarray:
        if target is None or not np.isfinite(target.landmarks).all():
            return portrait.image
        self.prepare(portrait)
        mesh: _WarpMesh = portrait.extras["warp"]
        disp = self.displacement(mesh, target)
        map_x = mesh.base_x + disp[..., 0]
        map_y = mesh.base_y + disp[..., 1]
        x0, y0, x1, y1 = mesh.roi
        out = portrait.image.copy()
        out[y0:y1, x0:x1] = self._sample(portrait.image, mesh, map_x, map_y)
        for lid in mesh.lids:
            paint_lid(out, target, lid)
        paint_mouth(out, target.landmarks[:, :2], mesh.mouth)
        return out


# Face points the exact map is built on: outlines of the face, eyes, brows, lips and nose. The
# finer rings of MediaPipe's mesh (a pixel or two apart around a painted eye) would fold over.
_NOSE = np.array([168, 6, 197, 195, 5, 4, 1, 2, 98, 327, 129, 358, 64, 294])
_CHEEKS_FOREHEAD = np.array([50, 280, 205, 425, 123, 352, 151, 9, 108, 337])
_EXACT_POINTS = np.unique(np.concatenate([fm.FACE_OVAL, fm.RIGHT_EYE, fm.LEFT_EYE, fm.RIGHT_BROW,
                                          fm.LEFT_BROW, fm.OUTER_LIPS, fm.INNER_LIPS, _NOSE,
                                          _CHEEKS_FOREHEAD]))
FEATHER_PX = 4.0  # width of the blend from the exact face map into the coarse map at its edge
EXACT_TAKEOVER_PX = 3.0  # difference between the maps (px) from which the exact one is used alone
EXACT_REACH = 0.6  # the exact map counts within this many eye widths of the eyes' and lips' outlines,
EXACT_STRIP_REACH = 1.3  # ... within this many on the strips (lids to brows, lower lip to jaw line),
EXACT_FADE = 0.3  # ... and fades out over this many more (see _near_features)
CLOSING_AREA = 0.85  # an eye counts as closing below this share of the portrait's own eye area


def _face_triangles(xy: np.ndarray, irises: list) -> dict:
    """Fixed triangles around the eyes and mouth: a Delaunay triangulation of the outline points
    (and the centres of the irises the portrait shows, see _irises) on the portrait, with the eye
    and mouth openings first in drawing order (where a closing lid or pressed lips squeeze them to
    nothing, the skin around, drawn later, covers them). Between the upper lids and the brows, and
    between the lower lip and the jaw line, the points are the synthetic rows of _strips."""
    strip = _strips(xy)
    n = len(xy)
    xy = _with_strips(xy.astype(np.float64), strip)
    synthetic = np.arange(n, len(xy))
    idx = np.concatenate([_EXACT_POINTS, [iris[0] for _, iris, _, _ in irises], synthetic]).astype(int)
    simplices = idx[Delaunay(xy[idx]).simplices]
    centroids = xy[simplices].mean(1)
    opening = np.zeros(len(simplices), bool)
    for loop in (fm.RIGHT_EYE, fm.LEFT_EYE, fm.INNER_LIPS):
        poly = xy[loop].astype(np.float32)
        opening |= np.array([cv2.pointPolygonTest(poly, (float(c[0]), float(c[1])), False) > 0
                             for c in centroids])
    # Only the triangles around the eyes and lips: elsewhere the coarse map, built on all 478
    # points, is the better one (these triangles are large, and bend visibly at their edges).
    near = np.isin(simplices, np.concatenate([fm.RIGHT_EYE, fm.LEFT_EYE, fm.INNER_LIPS, fm.OUTER_LIPS])).any(1)
    # The strips too, up to their top rows: from there to the brows the coarse map (a lowered
    # brow's own points often cross one another, and triangles spanning them turn over).
    on_strip = np.isin(simplices, synthetic).any(1)
    brow = np.isin(simplices, np.concatenate([fm.RIGHT_BROW, fm.LEFT_BROW])).any(1)
    near = (near | on_strip) & ~(on_strip & brow)
    simplices, opening = simplices[near], opening[near]
    triangles = np.concatenate([simplices[opening], simplices[~opening]]).astype(np.int32)
    rims = np.zeros(len(triangles), np.int8)
    for label, loop in enumerate((fm.RIGHT_EYE, fm.LEFT_EYE, fm.INNER_LIPS), 1):
        rims[np.isin(triangles, loop).any(1)] = label
    return {"triangles": triangles, "n_openings": int(opening.sum()), "rims": rims,
            "source_det": _signed_det(xy[triangles, :2]), "exact_source": xy.astype(np.float32),
            "strip": strip, "bands": _lid_bands(xy), "on_strip": (triangles >= n).any(1)}


# ----------------------------------------------------------------------------------------------
# Between the upper lids and the brows. There Delaunay's triangles are a fan of long slivers from
# each brow point down to several lid points. When the band is squeezed (the brows lowered while
# the eyes widen, as in d6.mp4's frown; on a portrait whose brows sit low, as Mona Lisa's, the
# transferred brow motion takes them down past the lid) the slivers turn over or pile onto the lid,
# the exact map drops or tears them and patches in the coarse map, and a painted crease along the
# lid comes out as a jagged, torn line. So (1) the band keeps at least LID_BAND_FLOOR of its height
# on the portrait (in both maps), and (2) the exact map covers it with a strip of synthetic
# points: rows at STRIP_ROWS of the way from each upper lid point to its partner on the brow's
# lower edge (at the same share of the lid's and the brow's length), the partners following the
# brow's motion smoothed to a straight-line fit along the brow.
# ----------------------------------------------------------------------------------------------
LID_BAND_FLOOR = 0.5  # least share of its height on the portrait the band above an upper lid keeps
LID_BAND_KNEE = 0.15  # the hold eases in from LID_BAND_FLOOR + LID_BAND_KNEE (shares of the height)
STRIP_ROWS = (1 / 3, 2 / 3)
_BROW_LOWER = {"right": fm.RIGHT_BROW[:4:-1], "left": fm.LEFT_BROW[:4:-1]}  # outer end to inner
# Under the mouth the same fan runs from the lower lip to the chin, and an opening jaw bent the
# painted crease under the lip into lobes (Mona Lisa driven by d6.mp4, #58): a strip there too.
_LOWER_LIP = np.append(fm.OUTER_LIPS[10:], fm.OUTER_LIPS[0])  # corner to corner
_CHIN = fm.FACE_OVAL[13:24]  # the jaw line under the mouth, in the same direction


def _upper_lid(xy: np.ndarray, eye: str) -> tuple:
    """An upper lid's points from corner to corner (outer to inner), its origin (the outer
    corner), the unit vectors along the corners' line and across it (towards the brow), and the
    eye's width."""
    upper, _, corners, _ = fm.LID_PAIRS[eye]
    lid = np.concatenate([[corners[0]], upper, [corners[1]]])
    origin = xy[corners[0]].astype(np.float64)
    axis = xy[corners[1]] - origin
    width = float(np.linalg.norm(axis)) + 1e-6
    along = axis / width
    up = np.array([along[1], -along[0]]) * (1.0 if eye == "right" else -1.0)  # the right eye runs left to right
    return lid, origin, along, up, width


def _heights(xy: np.ndarray, points: np.ndarray, frame: tuple) -> np.ndarray:
    """How far `points` are above the upper lid of `xy` (`frame`: _upper_lid of it), in eye
    widths across the corners' line (beyond the corners: above the corner)."""
    lid, origin, along, up, width = frame
    lid_u, lid_v = (xy[lid] - origin) @ along / width, (xy[lid] - origin) @ up / width
    order = np.argsort(lid_u)
    rel = points - origin
    return rel @ up / width - np.interp(rel @ along / width, lid_u[order], lid_v[order])


def _arc(points: np.ndarray) -> np.ndarray:
    """Per point of a polyline: its share of the polyline's length from the first point."""
    run = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    return run / (run[-1] + 1e-9)


def _strip(xy: np.ndarray, line: np.ndarray, far: np.ndarray, smooth: bool) -> tuple:
    """Synthetic points at STRIP_ROWS of the way from each point of `line` to its partner on the
    polyline `far` (at the same share of their lengths), as (weights, offsets) over the landmarks:
    on the portrait and in every target they are offsets + weights @ landmarks. The partners
    follow `far`'s motion where they sit, or (`smooth`) its motion fitted to a straight line."""
    line_at, far_at = _arc(xy[line]), _arc(xy[far])
    fit = np.linalg.pinv(np.stack([np.ones_like(far_at), far_at], 1))  # a line through far's motion
    rows, offsets = [], []
    for point, at in zip(line, line_at):
        j = int(np.clip(np.searchsorted(far_at, at) - 1, 0, len(far) - 2))
        t = float(np.clip((at - far_at[j]) / (far_at[j + 1] - far_at[j]), 0.0, 1.0))
        partner = (1 - t) * xy[far[j]] + t * xy[far[j + 1]]  # on the portrait
        if smooth:
            motion = np.array([1.0, at]) @ fit  # weights of far's points' motion there
        else:
            motion = np.zeros(len(far))
            motion[j], motion[j + 1] = 1 - t, t
        for share in STRIP_ROWS:
            row = np.zeros(len(xy))
            row[far] = share * motion
            row[point] += 1 - share
            rows.append(row)
            offsets.append(share * (partner - motion @ xy[far]))
    return np.array(rows).reshape(-1, len(xy)), np.array(offsets).reshape(-1, 2)


def _strips(xy: np.ndarray) -> tuple:
    """The synthetic points between the upper lids and the brows (whose own points often cross
    one another: their motion is fitted to a line), then between the lower lip and the chin."""
    xy = xy.astype(np.float64)
    parts = [_strip(xy, _upper_lid(xy, eye)[0], _BROW_LOWER[eye], smooth=True) for eye in ("right", "left")]
    parts.append(_strip(xy, _LOWER_LIP, _CHIN, smooth=False))
    return np.concatenate([w for w, _ in parts]), np.concatenate([o for _, o in parts])


def _with_strips(points: np.ndarray, strip: tuple) -> np.ndarray:
    """The landmarks `points` followed by the synthetic points they place."""
    weights, offsets = strip
    return np.concatenate([points, (offsets + weights @ points.astype(np.float64)).astype(points.dtype)])


def _lid_bands(points: np.ndarray) -> list:
    """Per eye: the exact map's points (landmarks and synthetic ones, not the eye's own) in the
    band above its upper lid on the portrait, and their heights there (eye widths)."""
    skip = np.concatenate([fm.RIGHT_EYE, fm.LEFT_EYE, fm.RIGHT_IRIS, fm.LEFT_IRIS])
    bands = []
    for eye in ("right", "left"):
        frame = _upper_lid(points, eye)
        _, origin, along, _, width = frame
        u = (points - origin) @ along / width
        height = _heights(points, points, frame)
        inside = (u > -0.3) & (u < 1.3) & (height > 0.02) & (height < 1.5)
        inside[skip] = False
        idx = np.flatnonzero(inside)
        bands.append((eye, idx, height[idx]))
    return bands


def _hold_lid_bands(dst: np.ndarray, bands: list, lo: int, hi: int) -> None:
    """Move the band points lo..hi of `dst` (in place) up to LID_BAND_FLOOR of their height on the
    portrait above the upper lid where they came lower, easing in smoothly."""
    f, k = LID_BAND_FLOOR, LID_BAND_KNEE
    for eye, idx, rest in bands:
        mine = (idx >= lo) & (idx < hi)
        idx, rest = idx[mine], rest[mine]
        frame = _upper_lid(dst, eye)
        share = _heights(dst, dst[idx].astype(np.float64), frame) / rest
        held = np.where(share >= f + k, share, np.where(share <= f - k, f, f + (share - f + k) ** 2 / (4 * k)))
        _, _, _, up, width = frame
        dst[idx] += ((held - share) * rest * width)[:, None] * up


def _signed_det(corners: np.ndarray) -> np.ndarray:
    """Per triangle (T x 3 x 2 corners): the determinant of [x; y; 1], twice its signed area."""
    return np.linalg.det(np.concatenate([corners.transpose(0, 2, 1), np.ones((len(corners), 1, 3))], 1))


def _exact_face_map(disp: np.ndarray, mesh: _WarpMesh, dst: np.ndarray) -> None:
    """Blend into `disp`, over the face, the exact piecewise-affine map of the fixed triangles.

    Each output pixel is mapped through its own triangle. Where the target folds the mesh over
    (a lip corner pushed across its neighbours), triangles overlap and the map would tear: such
    pixels, found by rasterizing the triangles in two orders and comparing, keep the coarse map."""
    x0, y0, x1, y1 = mesh.roi
    tri = mesh.triangles
    p = dst[tri].astype(np.float64)  # T x 3 x 2 target corners
    q = mesh.exact_source[tri].astype(np.float64)  # ... and where they come from
    a = np.concatenate([p.transpose(0, 2, 1), np.ones((len(tri), 1, 3))], 1)  # T x 3 x 3
    det = np.linalg.det(a)
    src_det = mesh.source_det
    # A triangle the target turned over has no sensible map; one squeezed flat covers nothing.
    ok = (det * src_det > 0) & (np.abs(det) > 1e-3)
    affine = np.zeros((len(tri), 2, 3))
    affine[ok] = q.transpose(0, 2, 1)[ok] @ np.linalg.inv(a[ok])  # target (x, y, 1) -> source
    bx0, by0 = np.maximum(np.floor(p.reshape(-1, 2).min(0)).astype(int) - 1, (x0, y0))
    bx1, by1 = np.minimum(np.ceil(p.reshape(-1, 2).max(0)).astype(int) + 2, (x1, y1))
    if bx1 <= bx0 or by1 <= by0:
        return
    corners = np.round((p - (bx0, by0)) * 16).astype(np.int32)
    affine = affine.astype(np.float32)

    def rasterize(order: np.ndarray) -> np.ndarray:
        owner = np.full((by1 - by0, bx1 - bx0), -1, np.int32)
        for k in order:
            cv2.fillConvexPoly(owner, corners[k], int(k), shift=4)
        return owner

    def mapped(owner: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """The exact displacement at pixels (xs, ys) of the box, through their owners."""
        m = affine[owner]
        return np.stack([m[..., 0, 0] * xs + m[..., 0, 1] * ys + m[..., 0, 2] - xs,
                         m[..., 1, 0] * xs + m[..., 1, 1] * ys + m[..., 1, 2] - ys], -1)

    # The openings go first in both orders: where a shut lid covers one, the lid wins either way.
    n = mesh.n_openings
    openings, skin = np.flatnonzero(ok[:n]), n + np.flatnonzero(ok[n:])
    owner = rasterize(np.concatenate([openings, skin]))
    owner_r = rasterize(np.concatenate([openings[::-1], skin[::-1]]))
    ys, xs = np.nonzero(owner >= 0)
    if len(ys) == 0:
        return
    gx, gy = (xs + bx0).astype(np.float32), (ys + by0).astype(np.float32)
    own, own_r = owner[ys, xs], owner_r[ys, xs]
    exact = mapped(own, gx, gy)
    # Where an eye closes, the lid above and the one below meet along a line across which the map
    # rightly jumps; so do the lips around the mouth's opening. Such jumps are not tears: conflicts
    # between two triangles of the same rim are kept exact while that eye is clearly narrower than
    # the portrait's own, and always around the mouth. (A wide-open eye's rim can fold: a tear.)
    closing = np.array([False, True, True, True])  # by rim label; 0: not on a rim
    for label in (1, 2):
        inside = mesh.rims[:n] == label
        closing[label] = (np.abs(det[:n][inside]).sum()
                          < CLOSING_AREA * np.abs(src_det[:n][inside]).sum())
    c = np.flatnonzero(own != own_r)
    rims_a, rims_b = mesh.rims[own[c]], mesh.rims[own_r[c]]
    jump = np.linalg.norm(exact[c] - mapped(own_r[c], gx[c], gy[c]), axis=-1) > 0.75
    torn = np.zeros(owner.shape, np.uint8)
    torn[ys[c], xs[c]] = jump & ~((rims_a == rims_b) & closing[rims_a])
    good = (owner >= 0) & ~cv2.dilate(torn, np.ones((3, 3), np.uint8)).astype(bool)
    # Feathered into the coarse map over a few pixels, so that the two meet without a step.
    feather = cv2.distanceTransform(good.astype(np.uint8), cv2.DIST_L2, 3)[ys, xs] / FEATHER_PX
    iy, ix = ys + by0 - y0, xs + bx0 - x0
    coarse = disp[iy, ix]
    # Where the two maps agree within a few pixels the coarse one is kept: it averages landmark
    # noise that the exact map would show. Where they part (a lid closing, a lip line) the exact
    # one takes over.
    w = (np.clip(feather, 0, 1) * np.clip(np.linalg.norm(exact - coarse, axis=-1) / EXACT_TAKEOVER_PX, 0, 1))[:, None]
    w = w * _near_features(mesh, dst, xs + bx0, ys + by0, (bx0, by0, bx1, by1))[:, None]
    disp[iy, ix] = w * exact + (1 - w) * coarse


def _near_features(mesh: _WarpMesh, dst: np.ndarray, gx: np.ndarray, gy: np.ndarray,
                   box: tuple[int, int, int, int]) -> np.ndarray:
    """How much the exact map may count at pixels (gx, gy): fully within EXACT_REACH eye widths of
    an eye's or the lips' outline, and within EXACT_STRIP_REACH on the strips above the lids and
    under the lip, fading out over EXACT_FADE (also from the strips' edges, so that the weight
    never jumps where a strip's triangle meets another). Its triangles reaching out to the cheeks
    are large; in a big turn they shear, and their edge left a rectangular step in the cheek (Mona
    Lisa through d3.mp4's 20 degree turn, frames 256-272), where the dense coarse map bends
    smoothly."""
    bx0, by0, bx1, by1 = box
    loops = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
    for loop in (fm.RIGHT_EYE, fm.LEFT_EYE, fm.INNER_LIPS, fm.OUTER_LIPS):
        cv2.fillPoly(loops, [np.round(dst[loop] - (bx0, by0)).astype(np.int32)], 1)
    strips = np.zeros_like(loops)
    for corners in dst[mesh.triangles[mesh.on_strip]]:
        cv2.fillConvexPoly(strips, np.round(corners - (bx0, by0)).astype(np.int32), 1)
    eye_width = max((np.linalg.norm(dst[33] - dst[133]) + np.linalg.norm(dst[263] - dst[362])) / 2, 1.0)
    at = (gy - by0, gx - bx0)
    away = cv2.distanceTransform(1 - loops, cv2.DIST_L2, 3)[at] / eye_width
    off_strip = cv2.distanceTransform(1 - strips, cv2.DIST_L2, 3)[at] / eye_width
    near = np.clip((EXACT_REACH - away) / EXACT_FADE, 0.0, 1.0)
    on_strips = np.clip((EXACT_STRIP_REACH - away) / EXACT_FADE, 0.0, 1.0) * \
        np.clip(1.0 - off_strip / EXACT_FADE, 0.0, 1.0)
    return np.maximum(near, on_strips)


# ----------------------------------------------------------------------------------------------
# Gaze. Within an open eye the iris moves along the line between the corners; the eye's other
# maps (coarse, exact) cannot show it (a painted iris is a few pixels across and the fan of
# triangles around it folds), so they are built with the irises where the portrait has them, and
# the eye's opening is then re-mapped along that line, piecewise linearly: the white on the side
# the iris moves to is squeezed, the other side stretched, the corners stay.
# ----------------------------------------------------------------------------------------------
GAZE_LIMIT = 0.22  # furthest the iris centre may come to a corner, in eye widths
GAZE_DEAD = 0.03  # smaller gaze shifts (eye widths) are MediaPipe's iris noise, not shown
FAR_EYE = 0.8  # an eye narrower than this share of the other is a turned head's far eye: no gaze


def _eye_frame(xy: np.ndarray, loop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An eye's origin (its first corner) and axis (to the other corner)."""
    return xy[loop[0]], xy[loop[8]] - xy[loop[0]]


def _to_eye(points: np.ndarray, origin: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """(u, v) of points in an eye's frame: along and across the corners' line, in eye widths."""
    rel = points - origin
    return np.stack([rel @ axis, rel @ np.array([-axis[1], axis[0]])], -1) / float(axis @ axis)


def _from_eye(uv: np.ndarray, origin: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Points at (u, v) in an eye's frame (the inverse of _to_eye)."""
    return origin + uv[..., :1] * axis + uv[..., 1:] * np.array([-axis[1], axis[0]])


def _irises(xy: np.ndarray) -> list:
    """Per eye of the portrait that shows its iris: (eye loop, iris points, their (u, v), whether
    it follows the gaze).

    A turned head's far eye keeps its iris where it is painted: the tracked outline fits it
    loosely, so the painted eye reaches past it and a shifted iris tears at the outline (Girl with
    a Pearl Earring, whose far eye is 0.72 of the near one's width)."""
    eyes = []
    pairs = ((fm.RIGHT_EYE, fm.RIGHT_IRIS), (fm.LEFT_EYE, fm.LEFT_IRIS))
    widths = [float(np.linalg.norm(_eye_frame(xy, loop)[1])) for loop, _ in pairs]
    for (loop, iris), width in zip(pairs, widths):
        inside = cv2.pointPolygonTest(xy[loop].astype(np.float32), tuple(map(float, xy[iris[0]])), True)
        if inside > 1.0:  # an iris on the eye's rim (a turned head's far eye) is left alone
            eyes.append((loop, iris, _to_eye(xy[iris], *_eye_frame(xy, loop)), width >= FAR_EYE * max(widths)))
    return eyes


def _irises_to_rest(dst: np.ndarray, mesh: _WarpMesh) -> list:
    """Slide each iris of `dst` along its eye back to where the portrait has it (in place; its
    height in the eye, which follows a closing lid, is kept). Return per eye where the gaze moved:
    (loop, u of the target's iris centre, u of the portrait's, the iris radius in u)."""
    turns = []
    for loop, iris, uv, gaze in mesh.irises:
        origin, axis = _eye_frame(dst, loop)
        if float(axis @ axis) < 4.0:
            continue
        now = _to_eye(dst[iris], origin, axis)
        u_rest = float(uv[0, 0])
        u_now = float(np.clip(now[0, 0], min(GAZE_LIMIT, u_rest), max(1 - GAZE_LIMIT, u_rest)))
        dst[iris] = _from_eye(np.stack([uv[:, 0], now[:, 1]], -1), origin, axis)
        shift = float(np.sign(u_now - u_rest)) * max(abs(u_now - u_rest) - GAZE_DEAD, 0.0)
        radius = float(np.abs(uv[1:, 0] - u_rest).max())
        if shift != 0.0 and gaze:
            turns.append((loop, u_rest + shift, u_rest, radius))
    return turns


def _turn_eye(disp: np.ndarray, mesh: _WarpMesh, eye: np.ndarray, u_now: float, u_rest: float,
              radius: float) -> None:
    """Re-map the target eye opening (`eye`: its loop's target points) so that the iris, at u_rest
    in the map so far, shows at u_now: the iris is shifted whole, the white on either side of it
    squeezed or stretched, the corners stay; the shift fades out towards the lids."""
    x0, y0, x1, y1 = mesh.roi
    bx0, by0 = np.maximum(np.floor(eye.min(0)).astype(int) - 1, (x0, y0))
    bx1, by1 = np.minimum(np.ceil(eye.max(0)).astype(int) + 2, (x1, y1))
    if bx1 - bx0 < 3 or by1 - by0 < 2:
        return
    inside = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
    cv2.fillPoly(inside, [np.round((eye - (bx0, by0)) * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    # Full shift from a pixel inside the lids on, fading to none on them.
    fade = np.clip(cv2.distanceTransform((inside > 127).astype(np.uint8), cv2.DIST_L2, 3), 0, 1.0)
    fade *= inside.astype(np.float32) / 255.0
    gy, gx = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
    origin, axis = eye[0], eye[8] - eye[0]
    u = np.clip(_to_eye(np.stack([gx, gy], -1), origin, axis)[..., 0], 0.0, 1.0)
    r = max(0.0, min(radius, u_now - 0.02, u_rest - 0.02, 0.98 - u_now, 0.98 - u_rest))
    u_from = np.interp(u, [0.0, u_now - r, u_now + r, 1.0], [0.0, u_rest - r, u_rest + r, 1.0])
    qx = (gx + (u_from - u) * axis[0]).astype(np.float32)
    qy = (gy + (u_from - u) * axis[1]).astype(np.float32)
    at_q = cv2.remap(disp, qx - x0, qy - y0, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    turned = np.stack([qx + at_q[..., 0] - gx, qy + at_q[..., 1] - gy], -1)
    region = disp[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
    region += fade[..., None] * (turned - region)


def _dedupe(points: np.ndarray, min_dist: float) -> np.ndarray:
    kept: list[np.ndarray] = []
    for p in points:
        if all(np.linalg.norm(p - q) >= min_dist for q in kept):
            kept.append(p)
    return np.array(kept, np.float32).reshape(-1, 2)


EDGE_BLUR = 0.01  # beyond the picture's edge: its colours blurred by this share of its long side
EDGE_FADE_PX = 6.0  # ... fading in over this many pixels past the edge
MOUTH_OPEN_START = 0.04  # extra opening (gap / mouth width beyond the portrait's) where the cavity starts
MOUTH_OPEN_RAMP = 0.10  # ... and how much more until it is fully shown
# A portrait whose lips are this far apart (gap / mouth width) shows its own teeth or interior;
# the warp stretches that, which looks right until the opening is OWN_OPEN_START times the
# portrait's (fully dark OWN_OPEN_RAMP times further). Then only the middle of the opening gets
# the dark cavity; the portrait's own teeth stay along the lips.
OWN_INTERIOR = 0.08
OWN_OPEN_START = 1.8
OWN_OPEN_RAMP = 0.5


TEETH_STRENGTH = 0.85  # opacity of the teeth hint in an open mouth
UPPER_TEETH = 0.12  # how far the upper teeth show under the upper lip, in mouth widths
LOWER_TEETH = 0.05  # the same for the lower teeth over the lower lip
TEETH_FADE = 0.04  # the teeth's soft edge towards the cavity, in mouth widths


LID_PAINT_START = 0.6  # an eye closed below this share of the portrait's opening gets lid skin
LID_PAINT_RAMP = 0.5  # ... fully shown this much further closed
LID_COVER = 0.15  # how far the lid skin reaches beyond the portrait's eye outline (its size)
LASH_WIDTH = 0.06  # the lash line along a shut lid, in eye widths


def paint_lid(out: np.ndarray, target: Target, lid: _LidStyle) -> None:
    """Give a closing eye the look of a lid: its skin's tone over the portrait's eye where it is no
    longer open (a painted white or iris often reaches past the tracked outline and would show
    under a shut lid; the picture's own texture is kept) and a dark lash line along the upper
    lid's edge."""
    xy = target.landmarks[:, :2]
    upper = fm.LID_PAIRS[lid.eye][0]
    closed = (LID_PAINT_START - fm.eye_openness(xy, lid.eye) / max(lid.rest_opening, 1e-3)) / LID_PAINT_RAMP
    strength = float(np.clip(closed, 0.0, 1.0))
    if strength <= 0.0:
        return
    eye = target.move_rigid(lid.outline_3d)[:, :2]  # the portrait's eye, where the head took it
    eye = eye.mean(0) + (eye - eye.mean(0)) * (1 + LID_COVER)
    origin, axis = _eye_frame(xy, lid.loop)  # its first corner, and the line to the other
    width = float(np.linalg.norm(axis))
    h, w = out.shape[:2]
    x0, y0 = np.maximum(np.floor(eye.min(0)).astype(int) - 4, 0)
    x1, y1 = np.minimum(np.ceil(eye.max(0)).astype(int) + 5, (w, h))
    if x1 - x0 < 3 or y1 - y0 < 3 or width < 2:
        return
    cover = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(cover, [np.round((eye - (x0, y0)) * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    cover = cv2.GaussianBlur(cover.astype(np.float32) / 255, (0, 0), max(0.7, 0.08 * width)) * strength
    still_open = np.zeros_like(cover)  # ... but not where the eye is still open
    cv2.fillPoly(still_open, [np.round((xy[lid.loop] - (x0, y0)) * 4).astype(np.int32)], 1.0, shift=2)
    cover *= 1 - cv2.GaussianBlur(still_open, (0, 0), 0.7)
    lash = np.zeros_like(cover)
    # The lash line: a parabola through the upper lid's edge, in the eye's frame (the tracked
    # points of a shut painted eye zigzag by a pixel or two).
    edge = np.concatenate([xy[lid.loop[:1]], xy[upper], xy[lid.loop[8:9]]])
    uv = _to_eye(edge, origin, axis)
    u = np.linspace(0.0, 1.0, 17)
    edge = _from_eye(np.stack([u, np.polyval(np.polyfit(uv[:, 0], uv[:, 1], 2), u)], -1), origin, axis) - (x0, y0)
    cv2.polylines(lash, [np.round(edge * 4).astype(np.int32)], False, 1.0,
                  max(1, round(LASH_WIDTH * width)), cv2.LINE_AA, shift=2)
    lash = cv2.GaussianBlur(lash, (0, 0), 0.6) * strength
    region = out[y0:y1, x0:x1].astype(np.float32)
    skin = region - cv2.GaussianBlur(region, (0, 0), max(1.0, 0.1 * width)) + lid.skin
    skin += lash[..., None] * (lid.skin * 0.35 - skin)
    out[y0:y1, x0:x1] = np.clip(region + cover[..., None] * (skin - region), 0, 255).astype(np.uint8)


def _by_x(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y of a lip line, ordered by x (for np.interp)."""
    order = np.argsort(points[:, 0])
    return points[order, 0], points[order, 1]


def paint_mouth(out: np.ndarray, xy: np.ndarray, style: _MouthStyle) -> None:
    """Fill the target mouth opening (beyond the portrait's own) with a cavity and teeth hint; a
    portrait that shows its own teeth keeps them along the lips, with the cavity between."""
    width = np.linalg.norm(xy[fm.MOUTH_CORNERS[0]] - xy[fm.MOUTH_CORNERS[1]]) + 1e-6
    gap = np.linalg.norm(xy[fm.UPPER_INNER_LIP] - xy[fm.LOWER_INNER_LIP])
    own = style.rest_opening >= OWN_INTERIOR
    if own:
        strength = (gap / width / style.rest_opening - OWN_OPEN_START) / OWN_OPEN_RAMP
    else:
        strength = (gap / width - style.rest_opening - MOUTH_OPEN_START) / MOUTH_OPEN_RAMP
    if strength <= 0:
        return  # parted lips, or the portrait's own interior stretched: the warp looks right
    strength = min(float(strength), 1.0)
    poly = xy[fm.INNER_LIPS]
    x0, y0 = np.floor(poly.min(0)).astype(int) - 4
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 5
    h, w = out.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    local = (poly - [x0, y0]).astype(np.float32)
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillPoly(mask, [np.round(local * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, gap * 0.06))
    # Where each pixel sits in the opening, in the mouth's own frame (x along the line between the
    # corners, so a tilted head tilts the interior with it): t = 0 on the upper inner lip, 1 on
    # the lower one; u = 0 at the centre, 1 at the corners.
    left, right = xy[fm.MOUTH_CORNERS[0]], xy[fm.MOUTH_CORNERS[1]]
    centre = (left + right) / 2
    ax = (right - left) / width  # unit vector along the mouth
    ay = np.array([-ax[1], ax[0]])  # ... and across it
    if np.dot(xy[fm.LOWER_INNER_LIP] - xy[fm.UPPER_INNER_LIP], ay) < 0:
        ay = -ay  # pointing from the upper lip to the lower one
    to_mouth = lambda pts: np.stack([(pts - centre) @ ax, (pts - centre) @ ay], -1)  # noqa: E731
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    px = to_mouth(np.stack([gx, gy], -1))
    top = np.interp(px[..., 0], *_by_x(to_mouth(xy[fm.UPPER_INNER_LINE])))
    bottom = np.interp(px[..., 0], *_by_x(to_mouth(xy[fm.LOWER_INNER_LINE])))
    below_upper = (px[..., 1] - top) / width  # depth under the upper lip, in mouth widths
    above_lower = (bottom - px[..., 1]) / width
    u = np.abs(px[..., 0]) / (width / 2)
    shade = 1.0 - 0.45 * np.clip(u, 0, 1) ** 2
    if own:  # the portrait's teeth, stretched, along the lips; the cavity between them
        keep = style.rest_opening / 2
        mask = mask * np.clip((below_upper - keep) / TEETH_FADE, 0, 1) \
            * np.clip((above_lower - keep) / TEETH_FADE, 0, 1)
        colour = style.floor + (style.cavity - style.floor)[None, None, :] * shade[..., None]
    else:
        # Teeth: a band of fixed height under the upper lip (and a thinner, fainter one over the
        # lower), fading towards the corners, where the cavity is darkest. Lips just parted show
        # teeth across the whole gap; the dark cavity appears between the rows as the jaw drops.
        rows = np.maximum(np.clip((UPPER_TEETH - below_upper) / TEETH_FADE, 0, 1),
                          0.5 * np.clip((LOWER_TEETH - above_lower) / TEETH_FADE, 0, 1))
        teeth_w = rows * np.clip((0.75 - u) / 0.3, 0, 1) * TEETH_STRENGTH
        cavity = style.floor + (style.cavity - style.floor)[None, None, :] * shade[..., None]
        colour = cavity * (1 - teeth_w[..., None]) + style.teeth * teeth_w[..., None]
    alpha = (mask * strength)[..., None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = (region * (1 - alpha) + colour * alpha).astype(np.uint8)
