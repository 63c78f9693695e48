"""Benchmarks of the folded generator per backend, and of an engine's time to first frame.

    python -m live_puppet.backends.bench --configs small paper --size 256 --frames 10
    python -m live_puppet.backends.bench --ttff --portrait P.jpg --config small --backend onnxruntime

Speed does not depend on the weights, so the generator benchmark uses random (untrained) weights
with a random ψ. The whole live pipeline with the neural engine is measured by
`live-puppet bench --engine neural --model-config small,paper --backend torch,onnxruntime,...`,
which runs on a random checkpoint from `write_random_checkpoint` when no trained one is given.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_BACKENDS = ("torch", "torch-compile", "onnxruntime")


@dataclass
class BenchRow:
    """One generator on one backend."""

    config: str
    backend: str
    size: int
    gflops: float  # of the module the backend runs (after folding and rewrites)
    ms_median: float
    ms_min: float
    build_s: float  # export/compile + load
    max_abs_err: float  # vs. the unfolded eager generator on the same sketch


def _time_round_robin(runners: list, x: np.ndarray, frames: int, warmup: int,
                      block: int = 2, clock=time.perf_counter) -> list[list[float]]:
    """ms per call of each runner, timed in alternating blocks so that every runner sees the same
    share of whatever else the machine is doing (a shared CPU's load changes by the second).

    `clock=time.thread_time` measures the calling thread's CPU time instead of wall time: with
    one compute thread that is the cost of a frame however busy the machine is."""
    for runner in runners:
        for _ in range(warmup):
            runner(x)
    times: list[list[float]] = [[] for _ in runners]
    while len(times[0]) < frames:
        for runner, own in zip(runners, times):
            for _ in range(min(block, frames - len(own))):
                t = clock()
                runner(x)
                own.append((clock() - t) * 1000)
    return times


def random_model_config(name: str, size: int | None = None):
    """The ModelConfig preset `name` (small | paper), at `size` px when given."""
    from live_puppet.model import ModelConfig

    config = ModelConfig.named(name)
    return config.replace(image_size=size) if size else config


def random_generator(config, seed: int = 0):
    """A randomly initialised (untrained) Generator, deterministic for a seed."""
    import torch

    from live_puppet.model import Generator

    torch.manual_seed(seed)
    return Generator(config).eval()


def write_random_checkpoint(path: Path, config, seed: int = 0) -> Path:
    """A checkpoint of randomly initialised networks (for speed measurements only), written to
    `path`; the same seed writes the same file."""
    from live_puppet.model import Embedder
    from live_puppet.training.checkpoint import Checkpoint, save_checkpoint

    generator = random_generator(config, seed)
    save_checkpoint(Path(path), Checkpoint(config=config, generator=generator,
                                           embedder=Embedder(config).eval()))
    return Path(path)


def folded_gflops(config, seed: int = 0) -> float:
    """GFLOP per frame of the portrait-folded generator of `config` (what the backends run)."""
    import torch

    from live_puppet.backends.folding import fold_generator, generator_flops

    g = random_generator(config, seed)
    return generator_flops(fold_generator(g, psi=torch.zeros(1, g.psi_dim)),
                           config.image_size) / 1e9


def bench_generators(configs=("small", "paper"), backends=DEFAULT_BACKENDS, size: int = 256,
                     frames: int = 10, warmup: int = 2, seed: int = 0,
                     include_unfolded: bool = True, log=print,
                     calibration_dir: Path | None = None,
                     single_thread_cpu: bool = False) -> list[BenchRow]:
    """ms per frame of the portrait-folded generator, per config and backend, at `size` px.

    All runners of a config are built first, then timed round-robin (see `_time_round_robin`).
    `single_thread_cpu`: one compute thread everywhere, timed by its CPU time (a measure that
    other processes on a shared machine barely disturb).
    """
    import torch

    options = {"calibration_dir": calibration_dir}
    clock = time.perf_counter
    if single_thread_cpu:
        torch.set_num_threads(1)
        options.update(threads=1, spinning=False)
        clock = time.thread_time

    from live_puppet.backends import create_backend
    from live_puppet.backends.folding import fold_generator, generator_flops

    rows: list[BenchRow] = []
    for name in configs:  # a preset's name, or a ModelConfig
        if isinstance(name, str):
            cfg = random_model_config(name, size)
        else:
            cfg, name = name.replace(image_size=size), "custom"
        g = random_generator(cfg, seed)
        psi = torch.randn(1, g.psi_dim) * 0.3
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        with torch.no_grad():
            ref = g(x, psi).numpy()
        folded = fold_generator(g, psi=psi)
        flops = generator_flops(folded, size) / 1e9
        pending: list[tuple[BenchRow, object]] = []
        if include_unfolded:
            def unfolded(a, g=g, psi=psi):
                with torch.inference_mode():
                    return g(torch.from_numpy(a), psi).numpy()

            pending.append((BenchRow(name, "torch (unfolded)", size,
                                     generator_flops(g, size, psi) / 1e9, 0, 0, 0.0, 0.0), unfolded))
        with tempfile.TemporaryDirectory() as tmp:
            for backend_name in backends:
                backend = create_backend(backend_name, **options)
                start = time.perf_counter()
                path = None
                if backend.artifact_suffix:
                    path = Path(tmp) / f"{backend_name}{backend.artifact_suffix}"
                    backend.export(folded, x, path)
                runner = backend.load(folded, x, path)
                build_s = time.perf_counter() - start
                err = float(np.abs(runner(x.numpy()) - ref).max())
                pending.append((BenchRow(name, backend_name, size, flops, 0, 0, build_s, err), runner))
            times = _time_round_robin([r for _, r in pending], x.numpy(), frames, warmup,
                                      clock=clock)
        for (row, _), own in zip(pending, times):
            row.ms_median, row.ms_min = statistics.median(own), min(own)
            rows.append(row)
            log(_format_row(row))
    return rows


def _format_row(r: BenchRow) -> str:
    return (f"| {r.config:6} | {r.backend:17} | {r.size:4} | {r.gflops:6.1f} | {r.ms_median:8.1f} | "
            f"{r.ms_min:8.1f} | {r.build_s:7.1f} | {r.max_abs_err:9.2e} |")


def format_table(rows: list[BenchRow]) -> str:
    """A Markdown table of the rows."""
    head = ("| config | backend           | px   | GFLOP  | ms (med) | ms (min) | build s | max |err| |\n"
            "|--------|-------------------|------|--------|----------|----------|---------|-----------|")
    return "\n".join([head] + [_format_row(r) for r in rows])


@dataclass
class FirstFrame:
    """Time from constructing the engine to the first rendered frame."""

    label: str
    seconds: float
    from_cache: bool


def time_to_first_frame(checkpoint: Path, portrait, backend: str, engine_dir: Path,
                        label: str) -> FirstFrame:
    """Construct a neural engine, prepare the portrait and render one frame; wall time."""
    from live_puppet.render.neural import NeuralEngine
    from live_puppet.types import Target

    target = Target(landmarks=portrait.face.landmarks, rotation=np.eye(3), scale=1.0,
                    translation=np.zeros(3), center=np.zeros(3))
    start = time.perf_counter()
    engine = NeuralEngine(checkpoint=checkpoint, backend=backend, engine_dir=engine_dir,
                          progress=False)
    try:
        engine.prepare(portrait)
        engine.render(portrait, target)
        seconds = time.perf_counter() - start
        return FirstFrame(label, seconds, engine.prepared(portrait).from_cache)
    finally:
        engine.close()


def first_frame_report(portrait_path: Path, config: str = "small", backend: str = "onnxruntime",
                       landmarker: str | None = None, log=print) -> list[FirstFrame]:
    """Cold build, cached start, and a start after the engine file was truncated."""
    from live_puppet.backends.cache import content_hash
    from live_puppet.portrait import load_portrait
    from live_puppet.tracking import Tracker, resolve_landmarker_model

    with Tracker(resolve_landmarker_model(landmarker), mode="image") as tracker:
        portrait = load_portrait(Path(portrait_path), tracker)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ck = write_random_checkpoint(tmp / f"{config}.safetensors", random_model_config(config))
        content_hash(ck)  # hashing is per process; do not bill it to the cold start only
        engines = tmp / "engines"
        for label in ("cold (build)", "cached"):
            results.append(time_to_first_frame(ck, portrait, backend, engines, label))
            log(f"{label:24} {results[-1].seconds:6.2f} s  from_cache={results[-1].from_cache}")
        engine_files = [p for p in engines.iterdir() if p.suffix not in (".json",)
                        and not p.name.startswith(".")]
        for f in engine_files:
            size = f.stat().st_size
            f.write_bytes(f.read_bytes()[: size // 2])
            log(f"truncated {f.name}: {size} -> {f.stat().st_size} bytes")
        if engine_files:
            results.append(time_to_first_frame(ck, portrait, backend, engines,
                                               "after truncation"))
            log(f"{'after truncation':24} {results[-1].seconds:6.2f} s  "
                f"from_cache={results[-1].from_cache}")
            results.append(time_to_first_frame(ck, portrait, backend, engines, "cached again"))
            log(f"{'cached again':24} {results[-1].seconds:6.2f} s  "
                f"from_cache={results[-1].from_cache}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m live_puppet.backends.bench",
                                description="Generator ms/frame per backend; engine time to first frame.")
    p.add_argument("--configs", nargs="+", default=["small", "paper"])
    p.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--ttff", action="store_true", help="time to first frame: cold vs cached")
    p.add_argument("--portrait", type=Path, help="portrait for --ttff")
    p.add_argument("--config", default="small", help="config for --ttff")
    p.add_argument("--backend", default="onnxruntime", help="backend for --ttff")
    p.add_argument("--landmarker-model")
    p.add_argument("--calibration-dir", type=Path, help="INT8 calibration sets (onnxruntime-int8)")
    p.add_argument("--single-thread-cpu", action="store_true",
                   help="one compute thread, timed by CPU time (robust on a busy machine)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    args = p.parse_args(argv)
    if args.ttff and not args.portrait:
        p.error("--ttff needs --portrait")
    from live_puppet.cli import guarded

    return guarded(lambda: _report(args), args.debug)


def _report(args: argparse.Namespace) -> int:
    if args.ttff:
        first_frame_report(args.portrait, args.config, args.backend, args.landmarker_model)
        return 0
    rows = bench_generators(args.configs, args.backends, args.size, args.frames,
                            calibration_dir=args.calibration_dir,
                            single_thread_cpu=args.single_thread_cpu)
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
