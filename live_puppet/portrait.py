"""Portraits: loading (any JPEG/PNG a user has), validation, face analysis, and the gallery."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from live_puppet.capture import IMAGE_SUFFIXES, natural_order
from live_puppet.errors import UserError
from live_puppet.types import FaceState, Portrait

PORTRAIT_SUFFIXES = IMAGE_SUFFIXES | {".gif", ".jfif"}  # what a gallery folder offers (read by Pillow)
PICTURE_KINDS = "JPEG, PNG, WebP, BMP, TIFF or GIF"  # ... as sentences name them
MIN_FACE_PX = 48  # a face smaller than this (landmark box, canvas pixels) cannot be animated well
MIN_WINDOW_PX = 128  # the smallest window a picture is searched in for a small face
# A smaller picture is enlarged to this long side (at most --max-side): a 160 px photo's 32 px face
# was refused, with advice to crop closer that could not help; the output is enlarged anyway.
MIN_CANVAS_SIDE = 512
MAX_ASPECT = 2.5  # a picture longer than this many times its width (or the reverse) is a strip
# MediaPipe can draw a painted eye's upper lid across its iris (Girl with a Pearl Earring's far eye:
# a lid point 0.74 iris radii below the iris's top, in an eye it reads as wide open, 0.40). A blink
# then carries the iris's top down with the lid: a dark ring in the shut lid. A relaxed or
# downcast eye's lid does cover the iris that deep (the first frames of d18 and d20: 0.45-0.64, at
# openings of 0.14-0.18); in the other eyes of the ../shared portraits and clips it lies at most
# 0.38 radii below the iris's top.
LID_IRIS_OVERLAP_WRONG = 0.45  # an upper-lid point deeper in the iris than this (radii) ...
LID_WIDE_OPEN = 0.3  # ... in an eye at least this open (lid gap / eye width): the lid is misplaced
LID_IRIS_OVERLAP = 0.15  # ... then that lid's points are lifted to this depth at most


MAX_PIXELS = 400_000_000  # larger pictures are refused (Pillow's own limit is 179 MP, a bomb check)


def read_image(path: Path, least_side: int | None = None) -> np.ndarray:
    """A picture as H x W x 3 uint8 BGR: EXIF orientation applied, alpha over white, CMYK, grey ok.

    A JPEG more than twice `least_side` on its long side (a museum's scan) is decoded at 1/2, 1/4
    or 1/8 scale, still `least_side` or more: a 14000 x 14000 scan for a 1024 canvas reads in 0.6 s
    and 0.28 GB instead of 1.6 s and 0.9 GB."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise UserError(f"The portrait '{path}' does not exist; pass the path of a picture "
                        f"({PICTURE_KINDS}) or of a folder of them.")
    with _PILLOW_LIMIT:  # Pillow's own size check (a global) is replaced by MAX_PIXELS meanwhile
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return _decode(path, least_side)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


_PILLOW_LIMIT = threading.Lock()


def _decode(path: Path, least_side: int | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError(f"'{path}' is not an image that can be read; pass a {PICTURE_KINDS} "
                        f"portrait.") from None
    with im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise UserError(f"'{path}' is {width}x{height} pixels, more than this tool reads "
                            f"({MAX_PIXELS // 1_000_000} megapixels); scale it down first.")
        try:
            if least_side and im.format == "JPEG" and max(width, height) > 2 * least_side:
                shrink = max(width, height) / least_side
                im.draft("RGB", (max(1, int(width / shrink)), max(1, int(height / shrink))))
            im = ImageOps.exif_transpose(im)
            keyed = im.mode in ("P", "L", "RGB") and "transparency" in im.info  # a transparent colour
            if im.mode in ("RGBA", "LA", "PA") or keyed:
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float grey
                grey = np.asarray(im, np.float64)
                lo, hi = np.percentile(grey, (0.5, 99.5)) if grey.size else (0.0, 1.0)
                grey = np.clip((grey - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
                im = Image.fromarray(grey)
            rgb = np.asarray(im.convert("RGB"))
        except MemoryError:
            raise UserError(f"'{path}' is too large to read with the memory available; scale it "
                            f"down first.") from None
        except Exception:  # whatever the decoder trips on in a broken file
            raise UserError(f"'{path}' is a {im.format or 'picture'} file that is damaged or cut "
                            f"short; use a complete copy of it.") from None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def canvas_scale(image: np.ndarray, size: tuple[int, int] | None, max_side: int) -> float:
    """How much `fit_canvas` scales the picture."""
    h, w = image.shape[:2]
    if size is not None:
        return min(size[0] / w, size[1] / h)
    return min(max_side, max(max(h, w), MIN_CANVAS_SIDE)) / max(h, w)


def fit_canvas(image: np.ndarray, size: tuple[int, int] | None, max_side: int) -> np.ndarray:
    """Resize to the output canvas: `size` (W, H) fitted and padded, or the long side brought
    within MIN_CANVAS_SIDE..`max_side`."""
    h, w = image.shape[:2]
    scale = canvas_scale(image, size, max_side)
    if size is None:
        out_w, out_h = max(2, round(w * scale)) // 2 * 2, max(2, round(h * scale)) // 2 * 2
        if (out_w, out_h) == (w, h):
            return image
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        return cv2.resize(image, (out_w, out_h), interpolation=interp)
    out_w, out_h = size
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (rw, rh), interpolation=interp)
    canvas = np.zeros((out_h, out_w, 3), np.uint8)
    x0, y0 = (out_w - rw) // 2, (out_h - rh) // 2
    canvas[y0:y0 + rh, x0:x0 + rw] = resized
    return canvas


def _shifted(face: FaceState, dx: int, dy: int, image_size: tuple[int, int]) -> FaceState:
    landmarks = face.landmarks.copy()
    landmarks[:, 0] += dx
    landmarks[:, 1] += dy
    return replace(face, landmarks=landmarks, image_size=image_size)


def _window_starts(length: int, side: int) -> list[int]:
    starts = list(range(0, length - side + 1, side // 2))
    return starts if starts[-1] == length - side else starts + [length - side]


def find_face(tracker, image: np.ndarray) -> FaceState | None:
    """The largest face in a picture (tracker in image mode), small ones too.

    MediaPipe's face detector sees the whole picture shrunk to 128 px, so a face of a tenth of a
    wide picture's width is not found at all. Then the picture is searched in overlapping square
    windows, of half and of a quarter of its short side, and the face found is measured again in
    a window fitted around it; a face not found again there is not taken (a window enlarged enough
    shows MediaPipe a "face" in a cat's eye, which the fitted window does not).
    """
    face = tracker.track(image)
    if face is not None:
        return face
    h, w = image.shape[:2]
    size = (w, h)
    for side in (min(h, w) // 2, min(h, w) // 4):
        if side < MIN_WINDOW_PX:
            break
        found = []
        for y0 in _window_starts(h, side):
            for x0 in _window_starts(w, side):
                f = tracker.track(image[y0:y0 + side, x0:x0 + side])
                if f is not None:  # (its matrix's rotation holds for the picture; only that is used)
                    found.append(_shifted(f, x0, y0, size))
        if found:
            best = max(found, key=lambda f: f.face_size())
            x0, y0, x1, y1 = best.bbox()
            half = min(max(x1 - x0, y1 - y0) * 1.5, min(h, w) / 2)
            cx = min(max((x0 + x1) / 2, half), w - half)
            cy = min(max((y0 + y1) / 2, half), h - half)
            left, top = int(round(cx - half)), int(round(cy - half))
            side = int(round(2 * half))
            refined = tracker.track(image[top:top + side, left:left + side])
            if refined is not None:
                return _shifted(refined, left, top, size)
    return None


def lift_lids_off_iris(face: FaceState) -> FaceState:
    """The face with an upper lid drawn across its iris (a point deeper than LID_IRIS_OVERLAP_WRONG
    inside the iris circle of MediaPipe's iris landmarks, in an eye open LID_WIDE_OPEN or more)
    lifted to LID_IRIS_OVERLAP at most, depth measured across the eye line (a tilted head too)."""
    from live_puppet import face_mesh as fm

    landmarks = face.landmarks.copy()
    xy = landmarks[:, :2].astype(np.float64)
    across = xy[263] - xy[33]
    across /= np.linalg.norm(across) + 1e-9
    down = np.array([-across[1], across[0]])  # the face's down, in image axes
    for eye, (upper, _, _, iris) in fm.LID_PAIRS.items():
        if fm.eye_openness(xy, eye) < LID_WIDE_OPEN:  # a relaxed or shut eye: its lid may be low
            continue
        centre = xy[iris[0]]
        radius = float(np.mean(np.linalg.norm(xy[iris[1:]] - centre, axis=1)))
        a, b = (xy[upper] - centre) @ across, (xy[upper] - centre) @ down
        inside = np.abs(a) < radius
        top = -np.sqrt(np.maximum(radius ** 2 - a ** 2, 0.0))
        if not (inside & (b > top + LID_IRIS_OVERLAP_WRONG * radius)).any():
            continue
        deepest = top + LID_IRIS_OVERLAP * radius
        lift = inside & (b > deepest)
        if lift.any():
            landmarks[upper[lift], :2] = (centre + np.outer(a[lift], across)
                                          + np.outer(deepest[lift], down))
    return replace(face, landmarks=landmarks)


def load_portrait(path: Path, tracker, size: tuple[int, int] | None = None,
                  max_side: int = 1024, canvas_flag: str | None = None) -> Portrait:
    """Read a portrait, fit it to the canvas and find its largest face (tracker in image mode).
    `canvas_flag` is the option a face too small on the canvas asks to raise (default: --size or
    --max-side, whichever set it)."""
    path = Path(path)
    # Read big enough for the canvas and for telling whether a larger one would help.
    original = read_image(path, 2 * (max(size) if size is not None else max_side))
    image = fit_canvas(original, size, max_side)
    face = find_face(tracker, image)
    if face is not None and face.face_size() >= MIN_FACE_PX:
        return Portrait(name=path.stem, path=path, image=image, face=lift_lids_off_iris(face))
    # Lost, or made too small, by shrinking the picture to the canvas? Then a bigger canvas helps.
    scale = canvas_scale(original, size, max_side)
    full = find_face(tracker, original) if scale < 1.0 else None
    if full is not None and full.face_size() * scale < MIN_FACE_PX <= full.face_size():
        option = canvas_flag or ("--size" if size is not None else "--max-side")
        h, w = original.shape[:2]
        # A banner or a strip: on a larger canvas the face would still be small in the camera's
        # 16:9 picture, which the whole strip has to fit in.
        todo = ("crop the picture around the face" if max(h, w) > MAX_ASPECT * min(h, w) else
                f"give a larger {option}")
        raise UserError(f"The face in '{path}' is {full.face_size():.0f} pixels across, but only "
                        f"{int(full.face_size() * scale)} at the output canvas's {image.shape[1]}x"
                        f"{image.shape[0]} px (at least {MIN_FACE_PX} needed); {todo}.")
    if face is None:
        raise UserError(f"No face was found in '{path}'; use a portrait where one face is clearly "
                        f"visible and roughly frontal (if it is small in the picture, crop closer "
                        f"around it; if it fills the picture, use one with some space around the "
                        f"head).")
    raise UserError(f"The face in '{path}' is only {int(face.face_size())} pixels across; use a "
                    f"larger image or crop it closer around the face (at least {MIN_FACE_PX} px).")


def check_portraits(paths, landmarker_model, size: tuple[int, int] | None, sides,
                    canvas_flag: str | None = None) -> None:
    """Each portrait usable (a face found, big enough) at each canvas long side: UserError, before
    a long job starts, rather than half-way through it."""
    from live_puppet.tracking import Tracker, resolve_landmarker_model

    with Tracker(resolve_landmarker_model(landmarker_model), mode="image", num_faces=4) as tracker:
        for path in paths:
            for side in sides:
                load_portrait(path, tracker, size, side, canvas_flag=canvas_flag)


def list_portraits(path: Path) -> list[Path]:
    """A file, or the images of a folder in natural name order (2.jpg before 10.jpg, case
    aside): the order hotkeys 1-9, n and p follow."""
    path = Path(path).expanduser()
    if path.is_dir():
        # (not hidden files: macOS leaves "._name.jpg" beside each picture copied to a USB disk)
        files = sorted((p for p in path.iterdir()
                        if p.suffix.lower() in PORTRAIT_SUFFIXES and not p.name.startswith(".")),
                       key=natural_order)
        if not files:
            raise UserError(f"The folder '{path}' holds no portraits ({PICTURE_KINDS}); add some or "
                            f"pass a single image to --portrait.")
        return files
    if not path.exists():
        raise UserError(f"The portrait '{path}' does not exist; pass the path of a picture "
                        f"({PICTURE_KINDS}) or of a folder of them.")
    return [path]


class Gallery:
    """The portraits to choose from (a file, or a folder re-read by `reload`); loads each once."""

    def __init__(self, path: Path, tracker, size=None, max_side=1024):
        self.path = Path(path)
        self.tracker = tracker
        self.size = size
        self.max_side = max_side
        self.paths = list_portraits(self.path)
        self.index = 0
        self._loaded: dict[Path, Portrait] = {}
        self._failed: dict[Path, UserError] = {}  # remembered: a face search can take a second

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Portrait:
        """The portrait at `index` (loading it on first use); raises UserError when unusable."""
        path = self.paths[index % len(self.paths)]
        if path in self._failed:
            raise self._failed[path]
        if path not in self._loaded:
            try:
                self._loaded[path] = load_portrait(path, self.tracker, self.size, self.max_side)
            except UserError as exc:
                self._failed[path] = exc
                raise
        self.index = index % len(self.paths)
        return self._loaded[path]

    def reload(self) -> None:
        """Re-scan the folder (new, removed or edited files) and forget what was loaded."""
        current = self.paths[self.index] if self.paths else None
        self.paths = list_portraits(self.path)
        self._loaded.clear()
        self._failed.clear()
        self.index = self.paths.index(current) if current in self.paths else 0
