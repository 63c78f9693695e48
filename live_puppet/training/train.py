"""`live-puppet train`: the paper's meta-learning of Embedder, Generator and Discriminator.

One step = one generator/embedder update on a batch of K-shot episodes, then `config.d_steps`
discriminator updates (hinge loss) on the same episodes' real frames and the (detached) generated
ones. The generator's objective is the paper's

    L = L_CNT + w_adv·(-D(x̂, y, i)) + w_fm·L_FM + w_mch·|ê_i - W_i|₁

with W_i detached in that term (W is the discriminator's; it learns from the hinge loss).
When no VGG weight file is given there is no content term, and this project adds
w_l1·|x̂ - x|₁ (a deviation from the paper, said in the log) so that training still learns.

RUN_DIR gets: last.safetensors (resumed from when present), losses.csv, losses.png, samples/*.png.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from live_puppet.errors import UserError, writable_folder
from live_puppet.model import Discriminator, Embedder, Generator, ModelConfig
from live_puppet.model import losses as L
from live_puppet.training.checkpoint import Checkpoint, load_checkpoint, load_vgg_weights, \
    save_checkpoint
from live_puppet.training.data import Episode, EpisodeSampler, PreparedDataset, tensor_to_image

LOG_COLUMNS = ("step", "seconds", "g_total", "d_total", "rec_l1", "adv", "fm", "mch", "content",
               "l1_term", "d_real", "d_fake")


def make_content_loss(config: ModelConfig, vgg19: str | None, vggface: str | None) -> L.ContentLoss:
    """The content loss over whichever VGG weight files the user named (possibly none)."""
    return L.ContentLoss(load_vgg_weights(vgg19, "vgg19") if vgg19 else None,
                         load_vgg_weights(vggface, "vggface") if vggface else None,
                         config.w_vgg19, config.w_vggface)


def generator_terms(config: ModelConfig, content: L.ContentLoss, fake: Tensor, real: Tensor,
                    fake_score: Tensor, fake_feats: list[Tensor], real_feats: list[Tensor]
                    ) -> dict[str, Tensor]:
    """The generator's loss terms shared by meta-learning and fine-tuning (already weighted)."""
    terms = {
        "adv": config.w_adv * L.adversarial_generator_loss(fake_score),
        "fm": config.w_fm * L.feature_matching_loss(real_feats, fake_feats),
    }
    if content.available:
        terms["content"] = content(fake, real)
    elif config.w_l1 > 0:
        terms["l1_term"] = config.w_l1 * L.reconstruction_l1_loss(fake, real)
    return terms


def set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class MetaLearner:
    """Holds E, G, D and their optimisers; `step(episode)` does one meta-learning update."""

    def __init__(self, config: ModelConfig, embedder: Embedder, generator: Generator,
                 discriminator: Discriminator, content: L.ContentLoss, device: torch.device):
        self.config = config
        self.device = device
        self.E, self.G, self.D = (m.to(device).train() for m in (embedder, generator, discriminator))
        self.content = content.to(device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(list(self.E.parameters()) + list(self.G.parameters()),
                                      lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas)

    def step(self, ep: Episode) -> tuple[dict[str, float], Tensor]:
        """One G/E update and `d_steps` D updates; the logged numbers and the generated images."""
        cfg = self.config
        ep = ep.to(self.device)
        set_requires_grad(self.D, False)
        e_hat = self.E.embed_shots(ep.shots, ep.shot_sketches)
        fake = self.G(ep.sketch, self.G.project(e_hat))
        fake_score, fake_feats = self.D(fake, ep.sketch, video=ep.video)
        with torch.no_grad():
            _, real_feats = self.D(ep.image, ep.sketch, video=ep.video)
        terms = generator_terms(cfg, self.content, fake, ep.image, fake_score, fake_feats,
                                real_feats)
        terms["mch"] = cfg.w_mch * L.embedding_match_loss(
            e_hat, self.D.video_columns(ep.video).detach())
        g_total = sum(terms.values())
        self.opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_g.step()
        set_requires_grad(self.D, True)

        fake = fake.detach()
        for _ in range(cfg.d_steps):
            real_score, _ = self.D(ep.image, ep.sketch, video=ep.video)
            fake_score_d, _ = self.D(fake, ep.sketch, video=ep.video)
            d_total = L.hinge_discriminator_loss(real_score, fake_score_d)
            self.opt_d.zero_grad(set_to_none=True)
            d_total.backward()
            self.opt_d.step()

        log = {k: float(v.detach()) for k, v in terms.items()}
        log.update(g_total=float(g_total.detach()), d_total=float(d_total.detach()),
                   rec_l1=float(L.reconstruction_l1_loss(fake, ep.image)),
                   d_real=float(real_score.detach().mean()),
                   d_fake=float(fake_score_d.detach().mean()))
        return log, fake

    def checkpoint(self, step: int, videos: list[str]) -> Checkpoint:
        return Checkpoint(config=self.config, generator=self.G, embedder=self.E,
                          discriminator=self.D, step=step, kind="meta", videos=videos,
                          optimizer_g=self.opt_g.state_dict(), optimizer_d=self.opt_d.state_dict())


class LossLog:
    """losses.csv (appended across resumes) and its plot losses.png."""

    def __init__(self, run_dir: Path):
        self.csv_path = run_dir / "losses.csv"
        self.png_path = run_dir / "losses.png"

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (written after the checkpoint a resume starts from)."""
        rows = self.rows()
        if not rows or rows[-1]["step"] <= step:
            return
        self._write([r for r in rows if r["step"] <= step])

    def _write(self, rows: list[dict]) -> None:
        with self.csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, LOG_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in LOG_COLUMNS})

    def append(self, row: dict) -> None:
        new = not self.csv_path.is_file()
        with self.csv_path.open("a", newline="") as f:
            w = csv.DictWriter(f, LOG_COLUMNS)
            if new:
                w.writeheader()
            w.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, ""))
                        for k in LOG_COLUMNS})

    def rows(self) -> list[dict]:
        if not self.csv_path.is_file():
            return []
        with self.csv_path.open() as f:
            out = []
            for r in csv.DictReader(f):
                out.append({k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()})
            for r in out:
                r["step"] = int(r["step"])
            return out

    def plot(self) -> Path | None:
        """Write the curves (raw and moving average) to losses.png."""
        rows = self.rows()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = np.array([r["step"] for r in rows])
        panels = [("reconstruction L1 |x̂ - x| (training frames)", ["rec_l1"]),
                  ("generator terms", ["adv", "fm", "mch", "content", "l1_term"]),
                  ("discriminator", ["d_total", "d_real", "d_fake"])]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, (title, keys) in zip(axes, panels):
            for k in keys:
                y = np.array([r.get(k, math.nan) for r in rows], dtype=float)
                if np.all(np.isnan(y)):
                    continue
                window = max(1, len(y) // 50)
                smooth = np.convolve(np.nan_to_num(y), np.ones(window) / window, mode="valid")
                line, = ax.plot(steps, y, alpha=0.25, linewidth=0.8)
                ax.plot(steps[window - 1:], smooth, color=line.get_color(), label=k)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.png_path, dpi=90)
        plt.close(fig)
        return self.png_path


def sample_grid(ep: Episode, fake: Tensor, rows: int = 4) -> np.ndarray:
    """One row per episode: the K shots | target sketch | output | ground truth (RGB uint8)."""
    lines = []
    for b in range(min(rows, fake.shape[0])):
        tiles = [tensor_to_image(s) for s in ep.shots[b]]
        tiles += [tensor_to_image(ep.sketch[b]), tensor_to_image(fake[b]),
                  tensor_to_image(ep.image[b])]
        sep = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        parts = []
        for i, t in enumerate(tiles):
            parts.append(t)
            if i == len(ep.shots[b]) - 1:  # a wide white bar between the shots and the rest
                parts.append(np.full((t.shape[0], 12, 3), 255, np.uint8))
            else:
                parts.append(sep)
        lines.append(np.hstack(parts[:-1]))
        lines.append(np.full((4, lines[-1].shape[1], 3), 255, np.uint8))
    return np.vstack(lines[:-1])


def save_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@dataclass
class TrainOptions:
    """What `live-puppet train` was asked to do."""

    data: Path
    out: Path
    config: str | ModelConfig = "small"  # a preset name, or a ModelConfig (programmatic use)
    steps: int = 1000  # total steps: a resumed run continues up to this
    batch: int = 2  # episodes per step
    shots: int | None = None  # K (default: the config's)
    save_every: int = 250
    sample_every: int = 100
    log_every: int = 1
    vgg19: str | None = None
    vggface: str | None = None
    lr_g: float | None = None  # override the paper's learning rates
    lr_d: float | None = None
    d_steps: int | None = None
    threads: int | None = None
    device: str = "auto"
    seed: int = 0
    holdout: tuple[str, ...] = ()  # clip ids left out of training (for evaluation)


def resolve_device(name: str) -> torch.device:
    """The torch device for --device, checked now (an unknown or absent one fails here, not mid-way)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu.")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError):
        raise UserError(f"--device '{name}' is not a device torch can use here; use --device "
                        f"cpu, or cuda[:N] on a machine with a CUDA GPU.") from None
    return device


class Diverged(UserError):
    """A loss became NaN or infinite: the model is no longer worth saving."""


def run_training(opts: TrainOptions, echo=print) -> Path:
    """Train (or resume) into opts.out; returns the path of the last checkpoint."""
    from tqdm import tqdm

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    device = resolve_device(opts.device)
    created = not Path(opts.out).expanduser().exists()
    run_dir = writable_folder(opts.out, "the training run", "--out")  # before the data: says sooner
    last = run_dir / "last.safetensors"
    try:
        dataset = PreparedDataset(Path(opts.data), exclude=tuple(opts.holdout))
    except UserError:
        if created:  # a mistyped --data leaves no empty run folder behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    resumed = last.is_file()
    if resumed:
        try:
            ck = load_checkpoint(last)
        except UserError as exc:
            raise UserError(f"The run folder's checkpoint cannot be resumed from: {exc} Move "
                            f"'{last}' away to start over, or use a new --out folder.") from None
        if ck.embedder is None or ck.discriminator is None or ck.kind != "meta":
            raise UserError(f"'{last}' is not a meta-learning checkpoint; use an empty --out "
                            f"folder or the run folder of an earlier `train`.")
        if ck.videos != dataset.clip_ids:
            raise UserError(f"'{last}' was trained on other clips ({len(ck.videos)}) than the "
                            f"{len(dataset.clip_ids)} in {opts.data}; resume with the same --data "
                            f"and --holdout, or use a new --out folder.")
        config, step = ck.config, ck.step
        wanted = opts.config if isinstance(opts.config, ModelConfig) else \
            ModelConfig.named(opts.config)
        if wanted.image_size != config.image_size:
            echo(f"note: resuming with the checkpoint's config ({config.image_size} px), "
                 f"not the {wanted.image_size} px of --config")
    else:
        config = opts.config if isinstance(opts.config, ModelConfig) else \
            ModelConfig.named(opts.config)
        step = 0
    overrides = {k: v for k, v in (("lr_g", opts.lr_g), ("lr_d", opts.lr_d),
                                   ("d_steps", opts.d_steps), ("shots", opts.shots))
                 if v is not None}
    config = config.replace(**overrides)
    content = make_content_loss(config, opts.vgg19, opts.vggface)
    if resumed:
        learner = MetaLearner(config, ck.embedder, ck.generator, ck.discriminator, content, device)
        if ck.optimizer_g and ck.optimizer_d:
            learner.opt_g.load_state_dict(ck.optimizer_g)
            learner.opt_d.load_state_dict(ck.optimizer_d)
        for opt, lr in ((learner.opt_g, config.lr_g), (learner.opt_d, config.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr
        echo(f"resuming {last} from step {step}")
    else:
        learner = MetaLearner(config, Embedder(config), Generator(config),
                              Discriminator(config, len(dataset.clips)), content, device)
    if not content.available:
        echo("no --vgg19/--vggface weights: training WITHOUT the content loss; using an L1 "
             f"reconstruction term (weight {config.w_l1}) instead, a deviation from the paper")
    else:
        echo("content loss over: " + ", ".join(
            n for n, m in (("VGG19", content.vgg19), ("VGGFace", content.vggface)) if m))
    smallest = min(c.size for c in dataset.clips)
    if smallest < config.image_size:
        echo(f"note: clips prepared at {smallest} px are upscaled to the model's "
             f"{config.image_size} px; prepare them with --size {config.image_size} for sharper "
             f"training")
    echo(f"{len(dataset.clips)} clips, {sum(c.frames for c in dataset.clips)} frames; "
         f"{config.image_size} px, K={config.shots}, batch {opts.batch}, device {device}, "
         f"lr G/E {config.lr_g:g} D {config.lr_d:g}, {config.d_steps} D steps per G step")

    log = LossLog(run_dir)
    log.truncate_after(step)
    sampler = EpisodeSampler(dataset, config.shots, config.image_size, seed=opts.seed + step)
    start_time = time.time()
    elapsed_before = (log.rows()[-1]["seconds"] if log.rows() else 0.0) if resumed else 0.0

    saved = [step if resumed else None]  # the step last.safetensors holds

    def save(at: int) -> None:
        try:
            save_checkpoint(last, learner.checkpoint(at, dataset.clip_ids))
        except KeyboardInterrupt:  # pressed while writing: the file was completed first
            saved[0] = at
            raise
        saved[0] = at
        log.plot()

    if step >= opts.steps:
        echo(f"already at step {step} >= --steps {opts.steps}; nothing to do")
        return last
    bar = tqdm(total=opts.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    try:
        while step < opts.steps:
            ep = sampler.sample(opts.batch)
            row, fake = learner.step(ep)
            step += 1
            if not all(math.isfinite(row[k]) for k in ("g_total", "d_total")):
                kept = (f"{last} still holds step {saved[0]}" if saved[0] is not None
                        else "no checkpoint was written")
                raise Diverged(f"Training diverged at step {step} (a loss became NaN or "
                               f"infinite); {kept}. Lower --lr-g/--lr-d and run again.")
            row["step"] = step
            row["seconds"] = elapsed_before + time.time() - start_time
            if step % opts.log_every == 0:
                log.append(row)
            bar.update(1)
            bar.set_postfix(rec=f"{row['rec_l1']:.3f}", g=f"{row['g_total']:.2f}",
                            d=f"{row['d_total']:.2f}")
            if step % opts.sample_every == 0 or step == opts.steps:
                save_png(run_dir / "samples" / f"step_{step:07d}.png", sample_grid(ep.to("cpu"),
                                                                                 fake.cpu()))
            if step % opts.save_every == 0:
                save(step)
    except KeyboardInterrupt:
        bar.close()
        if step > (saved[0] or 0):
            save(step)
        echo(f"interrupted: saved step {saved[0]} to {last}" if saved[0] is not None else
             "interrupted before the first step; nothing was saved")
        raise
    except Diverged:
        bar.close()
        raise
    except Exception:  # e.g. a prepared frame gone: keep the steps done since the last save
        bar.close()
        if step > (saved[0] or 0):  # steps done since the last save (none: nothing to keep)
            save(step)
            echo(f"stopped by an error: saved step {step} to {last}")
        raise
    bar.close()
    save(step)
    echo(f"saved step {step} to {last}; losses in {log.csv_path}, plot {log.png_path}")
    return last

