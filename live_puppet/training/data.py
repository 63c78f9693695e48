"""The prepared dataset and the meta-learning episodes drawn from it.

An episode for one video: K shots (frames and their sketches) for the embedder and one further
target frame and sketch for the generator, all distinct frames of the same clip.
Tensors are RGB, NCHW, float32 in [-1, 1].
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

import cv2
import numpy as np
import torch
from torch import Tensor

from live_puppet import sketch
from live_puppet.capture import VIDEO_SUFFIXES
from live_puppet.errors import UserError


def image_to_tensor(rgb: np.ndarray) -> Tensor:
    """H x W x 3 uint8 RGB -> [3, H, W] float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0


def tensor_to_image(t: Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> H x W x 3 uint8 RGB."""
    arr = ((t.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class PreparedClip:
    """One clip written by `prepare`."""

    clip_id: str
    root: Path
    size: int  # side of the cached crops
    frames: int

    def frame_rgb(self, j: int, size: int) -> np.ndarray:
        bgr = cv2.imread(str(self.root / "frames" / f"{j:06d}.jpg"), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"The prepared frame {self.root}/frames/{j:06d}.jpg is missing or "
                            f"unreadable; delete {self.root} and run `live-puppet prepare` again.")
        if size != self.size:
            bgr = cv2.resize(bgr, (size, size),
                             interpolation=cv2.INTER_AREA if size < self.size else cv2.INTER_CUBIC)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def sketch_rgb(self, j: int, size: int, landmarks: np.ndarray) -> np.ndarray:
        """The cached sketch at its own size; redrawn from the landmarks at any other size."""
        if size == self.size:
            bgr = cv2.imread(str(self.root / "sketches" / f"{j:06d}.png"), cv2.IMREAD_COLOR)
            if bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return sketch.draw_sketch(landmarks[j] * (size / self.size), size)


class PreparedDataset:
    """All complete clips under a `prepare` output folder, sorted by id (the W column order)."""

    def __init__(self, root: Path, exclude: tuple[str, ...] = ()):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"The data folder '{root}' does not exist; run `live-puppet prepare "
                            f"DATASET_DIR {quote(str(root))}` first.")
        clips = []
        for meta_path in sorted(root.rglob("meta.json")):
            if meta_path.parent.name.endswith(".partial"):
                continue
            try:
                meta = json.loads(meta_path.read_text())
                clip = PreparedClip(str(meta["clip"]), meta_path.parent, int(meta["size"]),
                                    int(meta["frames"]))
            except (OSError, ValueError, KeyError, TypeError):
                raise UserError(f"The prepared clip's {meta_path} is unreadable; delete "
                                f"{meta_path.parent} and run `live-puppet prepare` again.") from None
            clips.append(clip)
        unknown = sorted(set(exclude) - {c.clip_id for c in clips}) if clips else []
        if unknown:
            raise UserError(f"--holdout {unknown[0]} is not a prepared clip in '{root}'; give the id "
                            f"of one (such as {clips[0].clip_id if clips else 'speaker/video/001'}).")
        if clips and all(c.clip_id in exclude for c in clips):
            raise UserError(f"Every prepared clip in '{root}' is held out by --holdout; leave at "
                            f"least one for training.")
        clips = [c for c in clips if c.clip_id not in exclude]
        if not clips:
            if any(p.suffix.lower() in VIDEO_SUFFIXES for p in root.rglob("*")):
                raise UserError(f"'{root}' holds videos, not prepared clips; prepare them first with "
                                f"`live-puppet prepare {quote(str(root))} "
                                f"{quote(root.resolve().name + '-prepared')}` and pass that "
                                f"folder to --data.")
            raise UserError(f"'{root}' holds no prepared clips; run `live-puppet prepare "
                            f"DATASET_DIR {quote(str(root))}` first.")
        self.root = root
        self.clips = sorted(clips, key=lambda c: c.clip_id)
        self._landmarks: dict[str, np.ndarray] = {}

    @property
    def clip_ids(self) -> list[str]:
        return [c.clip_id for c in self.clips]

    def landmarks(self, clip: PreparedClip) -> np.ndarray:
        if clip.clip_id not in self._landmarks:
            self._landmarks[clip.clip_id] = np.load(clip.root / "landmarks.npy")
        return self._landmarks[clip.clip_id]

    def pair(self, clip_index: int, j: int, size: int) -> tuple[Tensor, Tensor]:
        """(frame, sketch) tensors of frame j of clip `clip_index` at `size`."""
        clip = self.clips[clip_index]
        img = image_to_tensor(clip.frame_rgb(j, size))
        skt = image_to_tensor(clip.sketch_rgb(j, size, self.landmarks(clip)))
        return img, skt


@dataclass
class Episode:
    """A batch of episodes: shots [B,K,3,S,S], shot_sketches, image/sketch [B,3,S,S], video [B]."""

    shots: Tensor
    shot_sketches: Tensor
    image: Tensor
    sketch: Tensor
    video: Tensor

    def to(self, device) -> "Episode":
        return Episode(*(t.to(device) for t in (self.shots, self.shot_sketches, self.image,
                                                 self.sketch, self.video)))


class EpisodeSampler:
    """Draws K-shot episodes: a random clip, then K + 1 distinct random frames of it."""

    def __init__(self, dataset: PreparedDataset, shots: int, size: int, seed: int = 0):
        usable = [c for c in dataset.clips if c.frames >= shots + 1]
        if not usable:
            raise UserError(f"No prepared clip has the {shots + 1} frames an episode of {shots} "
                            f"shots needs; lower --shots or prepare longer clips.")
        self.dataset = dataset
        self.shots = shots
        self.size = size
        self.rng = random.Random(seed)
        self.usable = [i for i, c in enumerate(dataset.clips) if c.frames >= shots + 1]

    def sample(self, batch: int) -> Episode:
        shots, shot_sketches, images, sketches, videos = [], [], [], [], []
        for _ in range(batch):
            i = self.rng.choice(self.usable)
            frames = self.rng.sample(range(self.dataset.clips[i].frames), self.shots + 1)
            pairs = [self.dataset.pair(i, j, self.size) for j in frames]
            shots.append(torch.stack([p[0] for p in pairs[:-1]]))
            shot_sketches.append(torch.stack([p[1] for p in pairs[:-1]]))
            images.append(pairs[-1][0])
            sketches.append(pairs[-1][1])
            videos.append(i)
        return Episode(torch.stack(shots), torch.stack(shot_sketches), torch.stack(images),
                       torch.stack(sketches), torch.tensor(videos, dtype=torch.long))
