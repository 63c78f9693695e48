"""The `prepare`, `train` and `finetune` subcommands, registered on the CLI's subparsers.

Each handler takes the parsed args and returns the exit code; bad input raises UserError, which the
CLI prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from live_puppet.errors import UserError


def cmd_prepare(args: argparse.Namespace) -> int:
    from live_puppet.training.prepare import prepare_dataset

    counts = prepare_dataset(Path(args.dataset_dir), Path(args.out_dir), size=args.size,
                             every=args.every, max_frames=args.max_frames,
                             landmarker=args.landmarker_model)
    print(f"prepared {counts['prepared']} clip(s) ({counts['frames']} frames), "
          f"{counts['resumed']} already done, {counts['skipped']} skipped (no face), "
          f"{counts['unreadable']} unreadable; output in {args.out_dir}")
    if counts["prepared"] + counts["resumed"] == 0:
        raise UserError(f"No clip in '{args.dataset_dir}' could be prepared ({counts['skipped']} "
                        f"without a face in enough frames, {counts['unreadable']} unreadable); "
                        f"pass videos of one talking face each.")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from live_puppet.training.train import TrainOptions, run_training

    opts = TrainOptions(data=Path(args.data), out=Path(args.out), config=args.config,
                        steps=args.steps, batch=args.batch, shots=args.shots,
                        save_every=args.save_every, sample_every=args.sample_every,
                        vgg19=args.vgg19, vggface=args.vggface, lr_g=args.lr_g, lr_d=args.lr_d,
                        d_steps=args.d_steps, threads=args.threads, device=args.device,
                        seed=args.seed, holdout=tuple(args.holdout or ()))
    try:
        run_training(opts)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from live_puppet.training.finetune import run_finetune

    run_finetune(Path(args.checkpoint), Path(args.portrait),
                 Path(args.shots) if args.shots else None, Path(args.out), steps=args.steps,
                 max_shots=args.max_shots, batch=args.batch, vgg19=args.vgg19,
                 vggface=args.vggface, landmarker=args.landmarker_model, threads=args.threads,
                 device=args.device)
    return 0


def register(subparsers) -> None:
    """Add `prepare`, `train` and `finetune` to an argparse subparsers object."""
    from live_puppet.cli import non_negative_int as _non_negative, positive_float, \
        positive_int as _positive

    p = subparsers.add_parser(
        "prepare", help="cache face crops, landmarks and sketches of a folder of videos",
        description="Turn a folder of talking-head videos (VoxCeleb2's id/video/clip layout or "
                    "any folder of clips) into per-clip face crops, landmarks and sketches. "
                    "Resumable: finished clips are kept.")
    p.add_argument("dataset_dir", help="folder of videos (searched recursively)")
    p.add_argument("out_dir", help="where the prepared clips go")
    p.add_argument("--size", type=_positive, default=256,
                   help="side of the cached crops in pixels (default 256; 128 suffices for "
                        "--config small)")
    p.add_argument("--every", type=_positive, default=1, help="keep every N-th frame (default 1)")
    p.add_argument("--max-frames", type=_positive, default=None,
                   help="at most this many frames per clip (default all)")
    p.add_argument("--landmarker-model", default=None, help="path of face_landmarker.task")
    p.set_defaults(func=cmd_prepare)

    t = subparsers.add_parser(
        "train", help="meta-learn the talking-head model on prepared clips",
        description="Meta-learning of Embedder, Generator and Discriminator (Zakharov et al. "
                    "2019) on K-shot episodes. Resumes from OUT/last.safetensors when present.")
    t.add_argument("--data", required=True, help="folder written by `prepare`")
    t.add_argument("--out", required=True, help="run folder (checkpoint, losses, samples)")
    t.add_argument("--config", choices=("small", "paper"), default="small",
                   help="model size: small (128 px, CPU-trainable; the default) or paper (256 px, "
                        "for a GPU: 20 s to 2 minutes a step on a 2-core CPU)")
    t.add_argument("--steps", type=_positive, default=1000,
                   help="total steps to reach (default 1000; a resumed run continues up to it)")
    t.add_argument("--batch", type=_positive, default=2, help="episodes per step (default 2)")
    t.add_argument("--shots", type=_positive, default=None,
                   help="K, frames per episode for the embedder (default: config's, 8)")
    t.add_argument("--save-every", type=_positive, default=250, help="checkpoint every N steps")
    t.add_argument("--sample-every", type=_positive, default=100,
                   help="write a sample grid every N steps")
    t.add_argument("--vgg19", default=None, help="VGG19 ImageNet weights (.pth/.safetensors) "
                                                 "for the content loss")
    t.add_argument("--vggface", default=None, help="VGG-Face weights for the content loss")
    t.add_argument("--lr-g", type=positive_float, default=None, help="override the paper's 5e-5 (G and E)")
    t.add_argument("--lr-d", type=positive_float, default=None, help="override the paper's 2e-4 (D)")
    t.add_argument("--d-steps", type=_positive, default=None,
                   help="discriminator updates per generator update (paper: 2)")
    t.add_argument("--holdout", action="append", metavar="CLIP_ID",
                   help="leave this prepared clip out of training (repeatable)")
    t.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.set_defaults(func=cmd_train)

    f = subparsers.add_parser(
        "finetune", help="fine-tune a trained model on 1..K pictures of a new face",
        description="The paper's few-shot fine-tuning: writes a per-portrait checkpoint holding "
                    "the fine-tuned generator, the embedding ê and the AdaIN parameters ψ.")
    f.add_argument("--checkpoint", required=True, help="meta-learned checkpoint from `train`")
    f.add_argument("--portrait", required=True, help="picture of the face")
    f.add_argument("--shots", default=None, help="folder of more pictures of the same face")
    f.add_argument("--max-shots", type=_positive, default=8, help="use at most K pictures")
    f.add_argument("--out", required=True, help="per-portrait checkpoint to write (.safetensors)")
    f.add_argument("--steps", type=_non_negative, default=200, help="fine-tuning steps (default 200)")
    f.add_argument("--batch", type=_positive, default=4, help="pictures per step (default 4)")
    f.add_argument("--vgg19", default=None, help="VGG19 weights for the content loss")
    f.add_argument("--vggface", default=None, help="VGG-Face weights for the content loss")
    f.add_argument("--landmarker-model", default=None, help="path of face_landmarker.task")
    f.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")
    f.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    f.set_defaults(func=cmd_finetune)
