"""`live-puppet eval` (animation quality) and `live-puppet bench` (speed): the command-line side.

The measuring itself lives in live_puppet.evaluation; this module parses, prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from live_puppet.errors import UserError, folder_made_for, writable_file


def register(subparsers) -> None:
    """Add the eval and bench subcommands to the CLI's subparsers."""
    _register_eval(subparsers)
    _register_bench(subparsers)


# ----------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------

def _register_eval(subparsers) -> None:
    from live_puppet.cli import add_pipeline_arguments, positive_int

    p = subparsers.add_parser(
        "eval", help="score how faithfully a portrait follows a driving clip",
        description="Run the live pipeline headless on driving clips and score the output. "
                    "--self CLIP: the clip's first frame is the portrait and the clip its own "
                    "ground truth (PSNR, SSIM on the frame and the face). --portrait P --driving "
                    "CLIP: every portrait with every clip, scored by re-tracking the output "
                    "(Pearson r of key blendshapes, of landmark geometry and of head angles, face "
                    "found, jitter). Frames "
                    "1..N are scored. Writes a contact sheet PNG per pair into --out.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--self", dest="self_clips", type=Path, nargs="+", metavar="CLIP",
                      help="self-reenactment of these clips (files or folders of them)")
    what.add_argument("--portrait", dest="portraits", type=Path, nargs="+", metavar="PORTRAIT",
                      help="cross-reenactment: these portraits (files or folders), with --driving")
    p.add_argument("--driving", type=Path, nargs="+", metavar="CLIP",
                   help="driving clips (files or folders) for --portrait")
    add_pipeline_arguments(p, portrait_required=False)
    p.add_argument("--frames", type=positive_int,
                   help="score frames 1..N of each clip (default: the whole clip)")
    p.add_argument("--json", type=Path, help="write every score and the summary rows here")
    p.add_argument("--out", type=Path, default=Path("eval_out"),
                   help="folder for contact sheets and videos (default: eval_out/)")
    p.add_argument("--sheet-frames", type=positive_int, default=8,
                   help="frames on each contact sheet (default 8, evenly spaced)")
    p.add_argument("--sheet-every", type=positive_int,
                   help="put every k-th frame on the contact sheet instead")
    p.add_argument("--video", action="store_true",
                   help="also write a side-by-side (driver | output) H.264 mp4 per pair")
    p.set_defaults(func=eval_handler)


def eval_handler(args: argparse.Namespace) -> int:
    """Evaluate every (portrait, clip, engine), print the table, write JSON; 0 on success."""
    from live_puppet import evaluation as ev

    engines = ev.parse_engines(args.engine)
    if args.self_clips:
        if args.driving:
            raise UserError("--driving goes with --portrait; with --self the clip drives itself.")
        if args.size:
            raise UserError("--size does not apply to --self: the canvas is the clip's own size, "
                            "so that the output lines up with the ground truth.")
        tasks = ev.eval_tasks(engines, ev.expand_clips(args.self_clips), None)
    else:
        if not args.driving:
            raise UserError("--portrait needs --driving CLIP (a video file or a folder of them).")
        tasks = ev.eval_tasks(engines, ev.expand_clips(args.driving),
                              ev.expand_portraits(args.portraits))
    # Outputs and inputs checked before the first pair: nothing is lost half-way.
    with folder_made_for(args.out, "the contact sheets", "--out") as out_dir:
        if args.json:
            writable_file(args.json, "the scores", "--json", [*(args.self_clips or []),
                          *(args.driving or []), *(args.portraits or []), args.checkpoint,
                          args.landmarker_model])
        options = ev.EvalOptions(
            out_dir=out_dir, frames=args.frames, sheet_columns=args.sheet_frames,
            sheet_every=args.sheet_every, video=args.video, landmarker_model=args.landmarker_model,
            checkpoint=args.checkpoint, backend=args.backend, engine_dir=args.engine_dir,
            size=args.size, max_side=args.max_side, expression_gain=args.expression_gain,
            feature_gains=dict(args.feature_gains))
        ev.check_inputs(tasks, options)
        try:
            report = ev.run_eval(tasks, options, progress=_progress)
        except (KeyboardInterrupt, Exception) as exc:
            partial = getattr(exc, "partial_report", None)
            if partial is None or not partial.results:
                raise
            _print_report(partial, args)  # the pairs finished before the stop are not lost
            print(f"live-puppet: only {len(partial.results)} of {len(tasks)} pairs were scored.",
                  file=sys.stderr, flush=True)
            raise
    _print_report(report, args)
    return 0


def _print_report(report, args: argparse.Namespace) -> None:
    from live_puppet import evaluation as ev

    print(report.table(), flush=True)
    scored = f"1..{args.frames} of each clip (to its end if shorter)" if args.frames else \
        "all but the first of each clip"
    cap = f"PSNR capped at {ev.PSNR_CAP_DB:g} dB; " if args.self_clips else ""
    print(f"Frames scored: {scored}; {cap}jitter in thousandths of a face size per frame^2; "
          f"expr amp: the output's expression motion over the driver's; -: the driver did not move it.")
    print(f"Contact sheets{' and videos' if args.video else ''}: {args.out}/")
    if args.json:
        _write_json(args.json, report.to_json())
        print(f"Scores: {args.json}")


MIN_BENCH_FRAMES = 10  # fewer give a timing of warm-up alone


def bench_frames(text: str) -> int:
    from live_puppet.cli import positive_int

    frames = positive_int(text)
    if frames < MIN_BENCH_FRAMES:
        raise argparse.ArgumentTypeError(f"must be {MIN_BENCH_FRAMES} or more for a measurement "
                                          f"beyond the warm-up, got {frames}")
    return frames


def _resolved(path: Path | None) -> str | None:
    """An absolute path for a worker process (None stays None: the worker's default)."""
    return str(path.resolve()) if path is not None else None


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_json(path: Path, data: dict) -> None:
    try:
        writable_file(path, "the scores", "--json").write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"Cannot write '{path}' ({exc.strerror or exc}); choose another --json "
                        f"path.") from None


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------

def parse_sides(text: str) -> list[int]:
    """"512,1024" -> [512, 1024]."""
    from live_puppet.cli import CANVAS_SIDES, canvas_side
    try:
        sides = [canvas_side(v) for v in text.split(",") if v.strip()]
        if not sides:
            raise ValueError
        return sides
    except (ValueError, argparse.ArgumentTypeError):
        lo, hi = CANVAS_SIDES
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of long sides like 512,1024, each "
                                         f"{lo} to {hi} px") from None


def parse_backends(text: str) -> list[str]:
    """"torch,onnxruntime" -> ["torch", "onnxruntime"], checked against the backend registry."""
    from live_puppet.backends import BACKEND_CHOICES

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in BACKEND_CHOICES for n in names):
        raise UserError(f"--backend '{text}' is not a list of backends from: "
                        f"{', '.join(BACKEND_CHOICES)} (separated by commas).")
    return names


def _register_bench(subparsers) -> None:
    from live_puppet.cli import add_pipeline_arguments, positive_int

    p = subparsers.add_parser(
        "bench", help="measure throughput, per-stage latency and memory of the live pipeline",
        description="Run the live pipeline headless on a clip, once per engine and output size "
                    "(and for the neural engine once per model and backend), each in its own "
                    "process, with the H.264 recorder as the sink (as run --record). Reports "
                    "fps, per-stage latency median/p90/p99 in ms (decode is the tracking "
                    "thread's wait for the next decoded frame; for the neural engine also the "
                    "generator's own time inside the render stage), peak RSS and the load "
                    "average when each configuration started.",
        conflict_handler="resolve")  # bench's --backend (a list) replaces the pipeline's one
    p.add_argument("--driving", type=Path, help="the driving clip")
    p.add_argument("--portrait", type=Path, help="the portrait (its long side is capped at each size)")
    add_pipeline_arguments(p, portrait_required=False)
    p.add_argument("--backend", default="auto",
                   help="neural engine backends to compare, e.g. torch,torch-compile,onnxruntime,"
                        "onnxruntime-int8 (one row each; default auto)")
    p.add_argument("--model-config", metavar="small,paper",
                   help="benchmark the neural engine without a trained checkpoint: these model "
                        "configs with random weights (the speed does not depend on the weights)")
    p.add_argument("--model-size", type=positive_int, default=256,
                   help="generator resolution for --model-config, px (default 256)")
    p.add_argument("--calibration-dir", type=Path,
                   help="INT8 calibration sets for onnxruntime-int8 (default: calibration/ beside "
                        "engines/)")
    p.add_argument("--sizes", type=parse_sides,
                   help="output long sides to measure, e.g. 512,1024 (default: --max-side); the "
                        "portrait is never enlarged")
    p.add_argument("--frames", type=bench_frames,
                   help=f"output frames per run, {MIN_BENCH_FRAMES} or more (default: the whole clip)")
    p.add_argument("--realtime", action="store_true",
                   help="pace the clip at its fps and drop frames like a camera; adds "
                        "capture-to-sink latency and dropped frames")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="no recorder: the sink stage is then only the letterbox")
    p.add_argument("--json", type=Path, help="write every configuration's stats here")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(func=bench_handler)


RANDOM_WEIGHTS_NOTE = ("the weights are random (untrained), so the pictures are noise; speed does "
                       "not depend on the weights, only on the network's shape")


def bench_handler(args: argparse.Namespace) -> int:
    """Benchmark each configuration in a subprocess, print the table, write JSON; 0 on success."""
    from dataclasses import asdict

    from live_puppet import evaluation as ev

    if args.worker:
        spec = ev.BenchSpec.from_json(json.loads(args.worker.read_text()))
        return ev.bench_worker(spec, args.worker_out)
    backends = parse_backends(args.backend)
    if not args.driving or not args.portrait:
        raise UserError("bench needs --driving CLIP and --portrait IMAGE.")
    clip = ev.probe_clip(args.driving)  # a clear error before any process starts
    from live_puppet.portrait import PICTURE_KINDS

    if args.portrait.is_dir():
        raise UserError(f"'{args.portrait}' is a folder; bench takes one portrait: pass a picture "
                        f"({PICTURE_KINDS}).")
    if not args.portrait.is_file():
        raise UserError(f"The portrait '{args.portrait}' does not exist; pass a picture "
                        f"({PICTURE_KINDS}).")
    if args.json:
        writable_file(args.json, "the stats", "--json", [args.driving, args.portrait,
                      args.checkpoint, args.landmarker_model])
    engines = ev.parse_engines(args.engine)
    if args.sizes and args.size:
        raise UserError("Pass either --sizes (long sides) or --size (one canvas), not both.")
    neural = "neural" in engines
    if args.model_config and not neural:
        raise UserError("--model-config benchmarks the neural engine; add --engine neural.")
    if args.model_config and args.checkpoint:
        raise UserError("Pass either --checkpoint (trained weights) or --model-config (random "
                        "weights), not both.")
    if neural and not (args.model_config or args.checkpoint):
        raise UserError("bench --engine neural needs --checkpoint CK, or --model-config "
                        "small,paper to measure random weights of those configs.")
    from live_puppet.portrait import check_portraits

    check_portraits([args.portrait], args.landmarker_model, args.size, args.sizes or [args.max_side],
                    canvas_flag="--sizes" if args.sizes else None)  # before any worker starts
    if clip.frames < MIN_BENCH_FRAMES:
        raise UserError(f"'{args.driving}' has {clip.frames} frame{'' if clip.frames == 1 else 's'}; "
                        f"bench needs a clip of {MIN_BENCH_FRAMES} or more to measure anything but "
                        f"warm-up.")
    if neural and "onnxruntime-int8" in backends:  # speed does not depend on which sketches calibrate
        from live_puppet.backends.calibration import ensure_calibration_set

        ensure_calibration_set(args.calibration_dir, clip.path, args.landmarker_model)
    base = ev.BenchSpec(
        engine=engines[0], driving=str(clip.path.resolve()), portrait=str(args.portrait.resolve()),
        max_side=args.max_side, size=args.size, frames=args.frames, realtime=args.realtime,
        record=args.record,
        landmarker_model=_resolved(args.landmarker_model), checkpoint=_resolved(args.checkpoint),
        backend=backends[0], engine_dir=_resolved(args.engine_dir),
        expression_gain=args.expression_gain, feature_gains=dict(args.feature_gains),
        calibration_dir=_resolved(args.calibration_dir))
    with tempfile.TemporaryDirectory(prefix="live-puppet-bench-") as tmp:
        models = _random_models(args.model_config, args.model_size, Path(tmp)) \
            if args.model_config else []
        specs = ev.bench_specs(engines, args.sizes or [args.max_side], base,
                               backends=backends, models=[fields for fields, _ in models])
        start_load = os.getloadavg()
        results = []
        for i, spec in enumerate(specs, 1):
            _progress(f"[{i}/{len(specs)}] {spec.title} at {spec.size or spec.max_side} ...")
            results.append(ev.run_bench_spec(spec))
        end_load = os.getloadavg()
    print(f"bench: {clip.path.name} ({clip.width}x{clip.height}, {clip.fps:g} fps, {clip.frames} "
          f"frames), portrait {args.portrait.name}, sink: "
          f"{'H.264 recorder at 1280x720' if args.record else 'letterbox only'}; "
          f"{os.cpu_count()} CPUs; load average {_load(start_load)} at start, {_load(end_load)} at end")
    print(ev.bench_table(results), flush=True)
    print("Latency cells: median/p90/p99 ms. decode = the tracking thread's wait for a decoded frame.")
    if neural:
        print("generator ms = the neural generator's call alone (sketch in, face crop out); render "
              "ms adds drawing the sketch and pasting the face, and counts every frame, also those "
              "with no target to render (no face, or the first ones, taking the neutral face).")
    for fields, gflops in models:
        print(f"{fields['model_config']} {fields['model_size']}px: {gflops:.1f} GFLOP per frame "
              f"(folded generator); {RANDOM_WEIGHTS_NOTE}.")
    if args.json:
        _write_json(args.json, {"clip": str(clip.path), "cpus": os.cpu_count(),
                                "load_start": list(start_load), "load_end": list(end_load),
                                "results": [asdict(r) for r in results]})
        print(f"Stats: {args.json}")
    return 0


def _random_models(text: str, size: int, folder: Path) -> list[tuple[dict, float]]:
    """A random-weight checkpoint per model config named in `text` ("small,paper"), written to
    `folder`: (its BenchSpec fields, GFLOP per frame of its folded generator) each."""
    from live_puppet.backends import bench as bench_tools

    configs = []
    for name in [n.strip() for n in text.split(",")]:
        try:
            configs.append((name, bench_tools.random_model_config(name, size)))
        except ValueError as exc:
            raise UserError(f"--model-config {name} at --model-size {size}: {exc}.") from None
    models = []
    for name, config in configs:
        _progress(f"writing a random-weight {name} checkpoint ({size} px) ...")
        ck = bench_tools.write_random_checkpoint(folder / f"random-{name}-{size}.safetensors", config)
        fields = {"checkpoint": str(ck), "model_config": name, "model_size": size,
                  "engine_dir": str(folder / "engines")}  # random engines stay out of engines/
        models.append((fields, bench_tools.folded_gflops(config)))
    return models


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in load)
