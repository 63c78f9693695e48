"""`live-puppet finetune`: the paper's few-shot fine-tuning on 1..K pictures of a new face.

From a meta-learned checkpoint: ê = mean E(x_k, y_k) over the T pictures; ψ' is initialised to P·ê
and then optimised directly together with the generator's weights G'; the discriminator D' starts
from the meta-learned one with its video column replaced by w' = ê (then optimised). Losses are the
meta-learning ones without the embedding-match term. The result is a per-portrait checkpoint
holding the fine-tuned generator, ê and ψ'.

Also here: PSNR of self-reenactment (G(y_t; ψ) against frame t), to measure what fine-tuning buys.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import torch
from torch import Tensor

from live_puppet import sketch
from live_puppet.capture import IMAGE_SUFFIXES
from live_puppet.errors import UserError, is_input, writable_file
from live_puppet.portrait import PICTURE_KINDS
from live_puppet.model import losses as L
from live_puppet.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from live_puppet.training.data import image_to_tensor
from live_puppet.training.train import resolve_device, generator_terms, make_content_loss, \
    set_requires_grad


@dataclass
class FewShots:
    """The T pictures of the new face: images and sketches [T, 3, S, S] in [-1, 1]."""

    images: Tensor
    sketches: Tensor
    boxes: list[tuple[float, float, float, float]]  # each picture's crop box, source pixels
    names: list[str]


def load_shots(paths: list[Path], size: int, landmarker: str | None = None) -> FewShots:
    """Crop each picture around its face and draw its sketch; a picture without a face is an error."""
    from live_puppet.tracking import Tracker, resolve_landmarker_model

    images, sketches, boxes, names = [], [], [], []
    with Tracker(resolve_landmarker_model(landmarker), mode="image") as tracker:
        for path in paths:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise UserError(f"'{path}' could not be read as an image; pass a picture of a face "
                                f"({PICTURE_KINDS}).")
            face = tracker.track(bgr)
            if face is None:
                raise UserError(f"No face was found in '{path}'; use a picture where the face is "
                                f"clearly visible and roughly frontal.")
            box = sketch.face_box(face.landmarks)
            crop = cv2.cvtColor(sketch.crop_image(bgr, box, size), cv2.COLOR_BGR2RGB)
            images.append(image_to_tensor(crop))
            sketches.append(image_to_tensor(sketch.render_sketch(face.landmarks, box, size)))
            boxes.append(tuple(float(v) for v in box))
            names.append(path.name)
    return FewShots(torch.stack(images), torch.stack(sketches), boxes, names)


def collect_pictures(portrait: Path, shots_dir: Path | None, max_shots: int) -> list[Path]:
    """The portrait plus up to max_shots - 1 pictures from shots_dir (sorted by name)."""
    if not portrait.is_file():
        state = "is a folder (more pictures of the face go to --shots)" if portrait.is_dir() \
            else "does not exist"
        raise UserError(f"The portrait '{portrait}' {state}; pass a picture file to --portrait.")
    paths = [portrait]
    if shots_dir is not None:
        if not shots_dir.is_dir():
            raise UserError(f"The shots folder '{shots_dir}' does not exist; pass a folder of "
                            f"pictures of the same face to --shots, or leave it out.")
        extra = sorted(p for p in shots_dir.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() != portrait.resolve())
        if not extra:
            raise UserError(f"The shots folder '{shots_dir}' holds no picture other than the "
                            f"portrait (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); add "
                            f"pictures of the same face to it, or leave --shots out.")
        paths += extra[:max(0, max_shots - 1)]
    return paths


class FineTuner:
    """Fine-tunes copies of G and D (and ψ', w') on the few shots of one person."""

    def __init__(self, ck: Checkpoint, shots_images: Tensor, shots_sketches: Tensor,
                 content: L.ContentLoss, device: torch.device | str = "cpu", seed: int = 0):
        if ck.embedder is None or ck.discriminator is None:
            raise UserError("The checkpoint has no embedder or discriminator (it is already "
                            "fine-tuned on a portrait); pass the meta-learned checkpoint that "
                            "`live-puppet train` wrote.")
        cfg = self.config = ck.config
        self.device = torch.device(device)
        self.images = shots_images.to(self.device)
        self.sketches = shots_sketches.to(self.device)
        embedder = ck.embedder.to(self.device).eval()
        with torch.no_grad():
            self.e_hat = embedder(self.images, self.sketches).mean(0, keepdim=True)
        self.G = copy.deepcopy(ck.generator).to(self.device).train()
        self.D = copy.deepcopy(ck.discriminator).to(self.device).train()
        with torch.no_grad():
            psi0 = self.G.project(self.e_hat)
        self.psi = torch.nn.Parameter(psi0.clone())
        self.w = torch.nn.Parameter(self.e_hat.clone())  # the paper's w' initialised from ê
        self.content = content.to(self.device)
        betas = (cfg.beta1, cfg.beta2)
        g_params = [p for n, p in self.G.named_parameters() if n != "projection"] + [self.psi]
        d_params = [p for n, p in self.D.named_parameters() if n != "W"] + [self.w]
        self.opt_g = torch.optim.Adam(g_params, lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=betas)
        self.rng = random.Random(seed)
        self.steps_done = 0

    def step(self, batch: int = 4) -> dict[str, float]:
        cfg = self.config
        idx = [self.rng.randrange(len(self.images)) for _ in range(batch)]
        real, skt = self.images[idx], self.sketches[idx]
        w = self.w.expand(len(idx), -1)
        set_requires_grad(self.D, False)
        self.w.requires_grad_(False)
        fake = self.G(skt, self.psi.expand(len(idx), -1))
        fake_score, fake_feats = self.D(fake, skt, w=w)
        with torch.no_grad():
            _, real_feats = self.D(real, skt, w=w)
        terms = generator_terms(cfg, self.content, fake, real, fake_score, fake_feats, real_feats)
        g_total = sum(terms.values())
        self.opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_g.step()
        set_requires_grad(self.D, True)
        self.w.requires_grad_(True)
        self.D.W.requires_grad_(False)  # unused in fine-tuning: w' takes its place
        fake = fake.detach()
        for _ in range(cfg.d_steps):
            real_score, _ = self.D(real, skt, w=self.w.expand(len(idx), -1))
            fake_score_d, _ = self.D(fake, skt, w=self.w.expand(len(idx), -1))
            d_total = L.hinge_discriminator_loss(real_score, fake_score_d)
            self.opt_d.zero_grad(set_to_none=True)
            d_total.backward()
            self.opt_d.step()
        self.steps_done += 1
        return {"g_total": float(g_total.detach()), "d_total": float(d_total.detach()),
                "rec_l1": float(L.reconstruction_l1_loss(fake, real))}

    def result(self, source: Checkpoint, extra: dict) -> Checkpoint:
        """The per-portrait checkpoint: fine-tuned G, ê and ψ'."""
        return Checkpoint(config=self.config, generator=self.G.eval().cpu(),
                          e_hat=self.e_hat.detach().cpu(), psi=self.psi.detach().cpu(),
                          step=self.steps_done, kind="portrait", videos=[], extra=extra)


def psnr(fake: Tensor, real: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak 1 after mapping to [0, 1])."""
    mse = (((fake.clamp(-1, 1) - real) / 2) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def self_reenactment_psnr(generator, psi: Tensor, images: Tensor, sketches: Tensor,
                          batch: int = 8) -> float:
    """Mean PSNR of G(sketch_t; ψ) against frame t over the given frames."""
    generator.eval()
    values = []
    for i in range(0, len(images), batch):
        y = sketches[i:i + batch]
        out = generator(y, psi.expand(len(y), -1))
        values.append(psnr(out, images[i:i + batch]))
    return float(torch.cat(values).mean())


def run_finetune(checkpoint: Path, portrait: Path, shots_dir: Path | None, out: Path,
                 steps: int, max_shots: int = 8, batch: int = 4, vgg19: str | None = None,
                 vggface: str | None = None, landmarker: str | None = None,
                 threads: int | None = None, device: str = "cpu", echo=print) -> Path:
    """The `finetune` command: load, fine-tune for `steps`, write the per-portrait checkpoint."""
    from tqdm import tqdm

    if steps < 0:
        raise UserError("--steps must be 0 or more.")
    out = writable_file(out, "the fine-tuned model", "--out", [checkpoint, portrait, shots_dir])
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"--out '{out}': the fine-tuned model is a safetensors file; give a name "
                        f"ending in .safetensors.")
    # Ctrl-C saves the model so far; it must not replace a finished model from an earlier run,
    # nor an input (finetune --checkpoint ft.partial.safetensors --out ft.safetensors).
    partial, n = out, 0
    while partial.exists() and (partial == out or is_input(partial, [checkpoint, portrait])):
        n += 1
        partial = out.with_name(f"{out.stem}.partial{'' if n == 1 else n}.safetensors")
    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    ck = load_checkpoint(checkpoint)
    paths = collect_pictures(portrait, shots_dir, max_shots)
    shots = load_shots(paths, ck.config.image_size, landmarker)
    content = make_content_loss(ck.config, vgg19, vggface)
    if not content.available:
        echo("no --vgg19/--vggface weights: fine-tuning WITHOUT the content loss, with an L1 "
             "reconstruction term instead (a deviation from the paper)")
    tuner = FineTuner(ck, shots.images, shots.sketches, content, device)
    before = self_reenactment_psnr(tuner.G, tuner.psi, tuner.images, tuner.sketches)
    extra = {"portrait": str(portrait), "pictures": shots.names, "boxes": shots.boxes,
             "meta_checkpoint": str(checkpoint), "meta_step": ck.step,
             "psnr_on_shots_before": round(before, 3)}
    bar = tqdm(range(steps), desc="finetune", unit="step", dynamic_ncols=True)
    try:
        for _ in bar:
            row = tuner.step(batch)
            if not all(math.isfinite(v) for v in row.values()):
                bar.close()
                raise UserError(f"Fine-tuning diverged at step {tuner.steps_done} (a loss became "
                                f"NaN or infinite); nothing was written. Try fewer --steps, or "
                                f"a checkpoint from earlier in training.")
            bar.set_postfix(rec=f"{row['rec_l1']:.3f}")
    except KeyboardInterrupt:
        bar.close()
        extra["interrupted_at_step"] = tuner.steps_done
        save_checkpoint(partial, tuner.result(ck, extra))
        kept = f" ({out} from before is kept)" if partial != out else ""
        echo(f"interrupted: saved the model fine-tuned for {tuner.steps_done} of {steps} steps "
             f"to {partial}{kept}")
        raise
    bar.close()
    after = self_reenactment_psnr(tuner.G, tuner.psi, tuner.images, tuner.sketches)
    extra["psnr_on_shots_after"] = round(after, 3)
    save_checkpoint(out, tuner.result(ck, extra))
    echo(f"fine-tuned {steps} steps on {len(paths)} picture(s); PSNR on them "
         f"{before:.2f} -> {after:.2f} dB; wrote {out}")
    return Path(out)

