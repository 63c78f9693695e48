"""`live-puppet prepare`: videos -> per-clip cached face crops, landmarks and sketches.

Input: a folder of videos in VoxCeleb2's layout (id/video/clip.mp4) or any folder (searched
recursively) of clips. Output, one folder per clip named by its path relative to the input:

    OUT/<clip id>/frames/000000.jpg     face crops, size x size, BGR JPEG
    OUT/<clip id>/sketches/000000.png   the coloured sketch of each crop (RGB content)
    OUT/<clip id>/landmarks.npy         (N, 68, 2) float32 iBUG points in crop pixels
    OUT/<clip id>/mesh.npy              (N, 478, 2) float32 MediaPipe points in crop pixels
    OUT/<clip id>/meta.json             written last: the clip is complete when it exists

Every clip has one crop box (so the head moves inside it, as a live portrait's does). Frames without
a face are dropped; clips with fewer than `MIN_FRAMES` faces are skipped and listed in
OUT/skipped.json. Running again resumes: complete clips and skipped clips are not redone.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from live_puppet import sketch
from live_puppet.capture import VIDEO_SUFFIXES, VideoFileSource
from live_puppet.errors import UserError, writable_folder

MIN_FRAMES = 2  # a clip needs at least a shot and a target
MIN_SIZE, MAX_SIZE = 32, 1024  # the crops' side, px (the models take 128 or 256)


@dataclass(frozen=True)
class ClipSource:
    """One input video and the id it gets in the prepared dataset."""

    clip_id: str  # path relative to the dataset folder, without suffix, '/'-separated
    path: Path


def _readable(path: Path) -> bool:
    """The video opens and gives a first frame (decoded as `run` decodes its source)."""
    try:
        VideoFileSource(path)
    except UserError:
        return False
    return True


def find_clips(dataset_dir: Path) -> list[ClipSource]:
    """Every video under `dataset_dir`, sorted by id."""
    if dataset_dir.is_file():
        raise UserError(f"'{dataset_dir}' is a file; pass the folder that holds the videos.")
    if not dataset_dir.is_dir():
        raise UserError(f"The dataset folder '{dataset_dir}' does not exist; pass a folder of "
                        f"videos (VoxCeleb2's id/video/clip layout or any folder of clips).")
    clips = [ClipSource(p.relative_to(dataset_dir).with_suffix("").as_posix(), p)
             for p in dataset_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
    if not clips:
        raise UserError(f"No videos ({', '.join(sorted(VIDEO_SUFFIXES))}) were found under "
                        f"'{dataset_dir}'; pass a folder that contains clips.")
    return sorted(clips, key=lambda c: c.clip_id)


def clip_box(landmarks: list[np.ndarray], scale: float = 1.8) -> sketch.Box:
    """One square box for the whole clip: the median face box, grown to hold the head's travel."""
    boxes = np.array([sketch.face_box(lm, scale=scale) for lm in landmarks])
    cx = np.median((boxes[:, 0] + boxes[:, 2]) / 2)
    cy = np.median((boxes[:, 1] + boxes[:, 3]) / 2)
    side = np.median(boxes[:, 2] - boxes[:, 0])
    travel = max(np.abs((boxes[:, 0] + boxes[:, 2]) / 2 - cx).max(),
                 np.abs((boxes[:, 1] + boxes[:, 3]) / 2 - cy).max())
    side = min(side + 2 * travel, 1.5 * side)  # keep faces from shrinking too much
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


class ClipPreparer:
    """Tracks one clip's frames and writes its cached crops, landmarks and sketches."""

    def __init__(self, landmarker_model: Path, size: int, every: int, max_frames: int | None):
        self.landmarker_model = landmarker_model
        self.size = size
        self.every = every
        self.max_frames = max_frames

    def _frames(self, source: VideoFileSource):
        """(index, picture) of every `every`-th frame, decoded as `run` decodes its source: turned
        upright as the clip's header says, damaged stretches skipped."""
        kept = 0
        for index, frame in enumerate(source.frames()):
            if index % self.every == 0:
                yield index, frame
                kept += 1
                if self.max_frames is not None and kept >= self.max_frames:
                    break

    def _track(self, clip: ClipSource, source: VideoFileSource) -> tuple[list[int], list[np.ndarray]]:
        from live_puppet.tracking import Tracker

        fps, total = source.fps, source.length or 0
        expected = (total + self.every - 1) // self.every
        if self.max_frames is not None:
            expected = min(expected, self.max_frames)
        indices, marks = [], []
        with Tracker(self.landmarker_model, mode="video") as tracker:
            for index, frame in tqdm(self._frames(source), desc=f"  track {clip.clip_id}",
                                     total=expected or None,
                                     leave=False, unit="frame",
                                     disable=None):  # a nested bar: on a terminal only
                face = tracker.track(frame, int(index * 1000 / fps))
                if face is not None:
                    indices.append(index)
                    marks.append(face.landmarks[:, :2].copy())
        return indices, marks

    def prepare(self, clip: ClipSource, out_dir: Path) -> int:
        """Write the clip; the number of frames kept (0 when it was skipped)."""
        try:
            source = VideoFileSource(clip.path)  # opened once: tracked, then read again to write
        except UserError:
            return 0
        fps = source.fps
        indices, marks = self._track(clip, source)
        if len(indices) < MIN_FRAMES:
            return 0
        box = clip_box(marks)
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "frames").mkdir(parents=True)
        (tmp / "sketches").mkdir()
        wanted = dict(zip(indices, range(len(indices))))
        mesh = np.stack([sketch.to_crop(m, box, self.size) for m in marks])
        ibug = np.stack([sketch.to_ibug68(m) for m in mesh])
        for index, frame in self._frames(source):
            j = wanted.get(index)
            if j is None:
                continue
            crop = sketch.crop_image(frame, box, self.size)
            drawn = sketch.draw_sketch(ibug[j], self.size)
            for path, image, params in ((tmp / "frames" / f"{j:06d}.jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95]),
                                        (tmp / "sketches" / f"{j:06d}.png",
                                         cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [])):
                if not cv2.imwrite(str(path), image, params):  # OpenCV says only False
                    raise OSError(errno.ENOSPC, f"OpenCV could not write {path.name}; is the disk full?")
        np.save(tmp / "landmarks.npy", ibug.astype(np.float32))
        np.save(tmp / "mesh.npy", mesh.astype(np.float32))
        meta = {"clip": clip.clip_id, "source": str(clip.path), "size": self.size,
                "frames": len(indices), "source_frames": indices, "fps": fps,
                "box": [float(v) for v in box]}
        (tmp / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
        return len(indices)


def prepare_dataset(dataset_dir: Path, out_dir: Path, size: int = 256, every: int = 1,
                    max_frames: int | None = None, landmarker: str | None = None) -> dict:
    """Prepare every clip not yet prepared; returns counts {prepared, resumed, skipped, frames}."""
    from live_puppet.tracking import resolve_landmarker_model

    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size {size}: use the model's image size, 128 for the small model or "
                        f"256 for the paper's (between {MIN_SIZE} and {MAX_SIZE} px).")
    if every < 1:
        raise UserError("--every must be 1 or more (keep every N-th frame).")
    clips = find_clips(dataset_dir)
    model = resolve_landmarker_model(landmarker)
    out_dir = writable_folder(out_dir, "the prepared dataset", "OUT_DIR")
    skipped_path = out_dir / "skipped.json"
    skipped = set(json.loads(skipped_path.read_text())) if skipped_path.is_file() else set()
    preparer = ClipPreparer(model, size, every, max_frames)
    counts = {"prepared": 0, "resumed": 0, "skipped": 0, "unreadable": 0, "frames": 0}
    for clip in tqdm(clips, desc="prepare", unit="clip", disable=None):  # (on a terminal only)
        target = out_dir / clip.clip_id
        if (target / "meta.json").is_file():
            counts["resumed"] += 1
            continue
        if clip.clip_id in skipped:  # found without a face by an earlier run
            counts["skipped"] += 1
            tqdm.write(f"skipped {clip.clip_id}: fewer than {MIN_FRAMES} frames with a face, found "
                       f"by an earlier run (remove it from {skipped_path.name} to try again)")
            continue
        if not _readable(clip.path):  # not remembered as skipped: a fixed file is taken next time
            counts["unreadable"] += 1
            tqdm.write(f"skipped {clip.clip_id}: '{clip.path}' cannot be read as a video")
            continue
        try:
            kept = preparer.prepare(clip, target)
        except OSError as exc:
            todo = "free some space" if exc.errno == errno.ENOSPC else "check that it can be written"
            raise UserError(f"Could not write the prepared clip {clip.clip_id} to '{out_dir}' "
                            f"({exc.strerror or exc}); {todo} and run prepare again (the clips done "
                            f"are kept).") from None
        if kept == 0:
            skipped.add(clip.clip_id)
            skipped_path.write_text(json.dumps(sorted(skipped)))
            counts["skipped"] += 1
            tqdm.write(f"skipped {clip.clip_id}: fewer than {MIN_FRAMES} frames with a face")
        else:
            counts["prepared"] += 1
            counts["frames"] += kept
    return counts
