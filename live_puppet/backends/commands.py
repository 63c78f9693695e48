"""`live-puppet build-engine`: compile a portrait's neural engine ahead of time into engines/.

`run --engine neural` with the same checkpoint, portrait, backend and canvas size (--size,
--max-side) then finds it in the cache and starts without building.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from live_puppet.backends import BACKEND_CHOICES


def register(subparsers) -> None:
    """Add the build-engine subcommand to the CLI's subparsers."""
    from live_puppet.cli import add_canvas_arguments, add_landmarker_argument

    p = subparsers.add_parser(
        "build-engine", help="compile a portrait's neural engine ahead of time (engines/ cache)",
        description="Fold a portrait into the neural generator and compile it for a backend, "
                    "so that `run --engine neural` starts without building.")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="neural checkpoint (.safetensors) from `train` or `finetune`")
    p.add_argument("--portrait", type=Path, required=True,
                   help="portrait image, or a folder of them (an engine for each)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto (default: tensorrt on an NVIDIA GPU, else onnxruntime), tensorrt, "
                        "onnxruntime, onnxruntime-int8 (needs a calibration set), torch, "
                        "torch-compile")
    p.add_argument("--engine-dir", type=Path,
                   help="folder of compiled engines (default: engines/ beside calibration/, in the "
                        "source checkout, else in the working folder; $LIVE_PUPPET_ENGINE_DIR)")
    add_landmarker_argument(p)
    add_canvas_arguments(p)  # as given to run: the engine depends on the canvas
    p.add_argument("--calibration-clip", type=Path,
                   help="onnxruntime-int8 only: a driving clip whose sketches calibrate INT8 "
                        "(written once under --calibration-dir)")
    p.add_argument("--calibration-dir", type=Path,
                   help="folder of INT8 calibration sets (default: calibration/ beside engines/)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Build (or confirm the cached) engine of every portrait named; 0 on success."""
    from live_puppet.portrait import list_portraits, load_portrait
    from live_puppet.render.neural import NeuralEngine
    from live_puppet.tracking import Tracker, resolve_landmarker_model

    paths = list_portraits(args.portrait)
    calibration_dir = getattr(args, "calibration_dir", None)
    if getattr(args, "calibration_clip", None):
        if args.backend != "onnxruntime-int8":
            print(f"Note: --calibration-clip makes a set for --backend onnxruntime-int8; the "
                  f"{args.backend} backend does not use it.", flush=True)
        from live_puppet.backends.calibration import write_calibration_set
        from live_puppet.config import default_calibration_dir

        calibration_dir = calibration_dir or default_calibration_dir()
        written = write_calibration_set(args.calibration_clip, calibration_dir,
                                        landmarker=args.landmarker_model)
        print(f"Calibration set written to {written}")
    engine = NeuralEngine(checkpoint=args.checkpoint, backend=args.backend,
                          engine_dir=args.engine_dir, calibration_dir=calibration_dir)
    cache = engine.builder.cache
    cache.keep = max(cache.keep, len(paths))  # the cache's limit must not evict what this builds
    try:
        with Tracker(resolve_landmarker_model(args.landmarker_model), mode="image") as tracker:
            for path in paths:
                portrait = load_portrait(path, tracker, args.size, args.max_side)
                start = time.perf_counter()
                engine.prepare(portrait)
                prepared = engine.prepared(portrait)
                what = "reused the cached engine" if prepared.from_cache else "built"
                where = (engine.builder.cache.entry(prepared.key, engine.builder.backend.artifact_suffix).path
                         if engine.builder.backend.artifact_suffix else "in memory only")
                print(f"{portrait.name}: {what} ({prepared.backend}, {prepared.size} px) in "
                      f"{time.perf_counter() - start:.1f} s -> {where}")
    finally:
        engine.close()
    if not engine.builder.backend.artifact_suffix:
        print(f"Note: the {engine.backend} backend compiles in the running process and writes no "
              f"engine file; build-engine only checked that it works.")
    return 0
