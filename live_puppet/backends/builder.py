"""From a checkpoint and a portrait to a running engine: crop, embed, fold, compile, cache, load.

    builder = PortraitEngineBuilder("model.safetensors", backend="auto", engine_dir="engines")
    prepared = builder.build(portrait)          # progress bar while it builds
    image = prepared.runner(sketch_nchw)        # (1, 3, R, R) float32 in [-1, 1]

The checkpoint is read lazily: when the engine file for this checkpoint and portrait is already in
the cache, only the checkpoint's hash and its config are needed, and no network runs before the
first frame. The cache key is made of the checkpoint's sha256, the exact embedder input (the
portrait's face crop and its sketch, from which ê is a deterministic function of the checkpoint),
the resolution, precision, backend, library versions and the device name.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from live_puppet import sketch
from live_puppet.backends import Runner, create_backend, resolve_backend
from live_puppet.backends.cache import EngineCache, content_hash, make_key, signer
from live_puppet.config import default_engine_dir
from live_puppet.errors import UserError
from live_puppet.types import Portrait

FOLDING_VERSION = 1  # bump when folding.py changes what a folded generator computes


def rgb_to_tensor(rgb: np.ndarray):
    """H x W x 3 uint8 RGB -> [1, 3, H, W] float32 torch tensor in [-1, 1]."""
    import torch

    return torch.from_numpy(rgb_to_array(rgb))


def rgb_to_array(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB -> [1, 3, H, W] float32 numpy array in [-1, 1]."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    x *= 1.0 / 127.5
    x -= 1.0
    return x[None]


def array_to_bgr(x: np.ndarray) -> np.ndarray:
    """[1, 3, H, W] float in [-1, 1] (RGB) -> H x W x 3 uint8 BGR."""
    img = np.clip((x[0] + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[::-1].transpose(1, 2, 0))


@dataclass
class PortraitInputs:
    """What the embedder sees of a portrait: its square face box, the crop and the crop's sketch."""

    box: sketch.Box
    crop_rgb: np.ndarray  # R x R x 3 uint8
    sketch_rgb: np.ndarray  # R x R x 3 uint8

    @classmethod
    def from_portrait(cls, portrait: Portrait, size: int) -> "PortraitInputs":
        box = sketch.face_box(portrait.face.landmarks)
        crop = cv2.cvtColor(sketch.crop_image(portrait.image, box, size), cv2.COLOR_BGR2RGB)
        return cls(box, crop, sketch.render_sketch(portrait.face.landmarks, box, size))

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.crop_rgb).tobytes())
        h.update(np.ascontiguousarray(self.sketch_rgb).tobytes())
        return h.hexdigest()


@dataclass
class PreparedPortrait:
    """A portrait ready to render: its crop box and its compiled generator."""

    portrait: Portrait
    inputs: PortraitInputs
    size: int  # generator resolution R
    runner: Runner
    backend: str
    key: str
    from_cache: bool
    seconds: float  # wall time of the build (or of loading the cached engine)


class PortraitEngineBuilder:
    """Builds (or loads from the cache) the portrait-folded generator for one checkpoint."""

    def __init__(self, checkpoint: str | os.PathLike, backend: str = "auto",
                 engine_dir: str | os.PathLike | None = None,
                 announce: Callable[[str], None] | None = print, progress: bool = True,
                 **backend_options):
        from live_puppet.training.checkpoint import checkpoint_file

        self.checkpoint_path = checkpoint_file(checkpoint)
        self.backend_name = resolve_backend(backend, announce=announce)
        self.backend = create_backend(self.backend_name, **backend_options)
        self.cache = EngineCache(engine_dir if engine_dir is not None else default_engine_dir())
        self.announce = announce
        self.progress = progress
        self.tuned_on: str | None = None  # a fine-tuned checkpoint's portrait (its file name)
        self.config = self._read_config()
        self.size = self.config.image_size
        self._checkpoint = None
        self._lock = threading.Lock()  # one build at a time: export and compile are not reentrant

    # --- the checkpoint, read only when a build needs it -----------------------------------------
    def _read_config(self):
        """The ModelConfig from the checkpoint's metadata, without reading its tensors."""
        from live_puppet.model import ModelConfig

        try:
            from safetensors import safe_open

            with safe_open(str(self.checkpoint_path), framework="pt") as f:
                meta = f.metadata() or {}
                config = ModelConfig.from_json(meta["config"])
            if meta.get("kind") == "portrait":
                self.tuned_on = Path(json.loads(meta.get("extra", "{}")).get("portrait") or "").name
            return config
        except Exception:  # let the checkpoint loader say precisely what is wrong
            self._checkpoint = self._load_checkpoint()
            return self._checkpoint.config

    def _load_checkpoint(self):
        from live_puppet.training.checkpoint import load_checkpoint

        return load_checkpoint(self.checkpoint_path)

    @property
    def checkpoint(self):
        if self._checkpoint is None:
            self._checkpoint = self._load_checkpoint()
        return self._checkpoint

    # --- keys --------------------------------------------------------------------------------------
    def cache_key(self, inputs: PortraitInputs) -> str:
        backend = self.backend
        # (engines that run code when loaded are signed per user: each user's under their own key)
        mine = {"signer": signer()} if backend.loads_code else {}
        return make_key({
            **mine,
            "checkpoint_sha256": content_hash(self.checkpoint_path),
            "portrait_embedding_input": inputs.digest(),
            "resolution": self.size,
            "precision": backend.precision,
            "backend": self.backend_name,
            "versions": backend.versions(),
            "device": backend.device_name(),
            "folding": FOLDING_VERSION,
        })

    # --- building ------------------------------------------------------------------------------------
    def folded_generator(self, inputs: PortraitInputs):
        """The PortraitGenerator for this portrait (ψ from a fine-tuned checkpoint, else P·ê)."""
        from live_puppet.backends.folding import compute_embedding, fold_generator

        ck = self.checkpoint
        if ck.psi is not None:  # a per-portrait checkpoint: ψ was fine-tuned directly
            return fold_generator(ck.generator, psi=ck.psi)
        if ck.embedder is None:
            raise UserError(f"The checkpoint '{self.checkpoint_path}' has neither an embedder nor "
                            f"a fine-tuned ψ; pass a checkpoint from `live-puppet train` or "
                            f"`live-puppet finetune`.")
        e_hat = compute_embedding(ck.embedder, rgb_to_tensor(inputs.crop_rgb),
                                  rgb_to_tensor(inputs.sketch_rgb))
        return fold_generator(ck.generator, e_hat=e_hat)

    def build(self, portrait: Portrait) -> PreparedPortrait:
        """The portrait's engine: from the cache when valid, else built (with a progress bar)."""
        with self._lock:
            return self._build(portrait)

    def _build(self, portrait: Portrait) -> PreparedPortrait:
        from tqdm import tqdm

        start = time.perf_counter()
        if self.tuned_on and portrait.path is not None and portrait.path.name != self.tuned_on \
                and self.announce:
            self.announce(f"note: '{self.checkpoint_path.name}' was fine-tuned on '{self.tuned_on}', "
                          f"so '{portrait.path.name}' gets that face; fine-tune on it with "
                          f"`live-puppet finetune` for its own.")
        inputs = PortraitInputs.from_portrait(portrait, self.size)
        example = rgb_to_tensor(inputs.sketch_rgb)
        key = self.cache_key(inputs)
        backend = self.backend
        steps = ["embedding + folding", f"compiling ({self.backend_name})", "loading"]
        bar = tqdm(total=len(steps), desc=f"neural engine '{portrait.name}'", unit="step",
                   disable=None if self.progress else True,  # (None: on a terminal only)
                   file=sys.stderr, leave=False)
        state = {"module": None}

        def folded():
            if state["module"] is None:
                bar.set_postfix_str(steps[0])
                state["module"] = self.folded_generator(inputs)
                bar.update(1)
            return state["module"]

        def write(tmp: Path) -> None:
            module = folded()
            bar.set_postfix_str(steps[1])
            backend.export(module, example, tmp)
            bar.update(1)

        def load(path: Path | None) -> Runner:
            module = None if backend.artifact_suffix else folded()
            bar.set_postfix_str(steps[2])
            runner = backend.load(module, example, path)
            bar.update(bar.total - bar.n)
            return runner

        try:
            if backend.artifact_suffix:
                runner, from_cache = self.cache.get_or_build(
                    key, backend.artifact_suffix, write, load,
                    meta={"backend": self.backend_name, "portrait": portrait.name,
                          "checkpoint": str(self.checkpoint_path), "resolution": self.size},
                    on_rebuild=self.announce, signed=backend.loads_code)
            else:  # in-process backends: nothing to cache on disk
                runner, from_cache = load(None), False
        finally:
            bar.close()
        return PreparedPortrait(portrait=portrait, inputs=inputs, size=self.size, runner=runner,
                                backend=self.backend_name, key=key, from_cache=from_cache,
                                seconds=time.perf_counter() - start)
