"""Command line: live-puppet run | eval | bench | prepare | train | finetune | build-engine.

Every user error is printed as one line on stderr with exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Callable

from live_puppet.backends import BACKEND_CHOICES
from live_puppet.config import RunConfig
from live_puppet.errors import UserError

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging: errors only
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SUBCOMMANDS = ("run", "eval", "bench", "prepare", "train", "finetune", "build-engine")
# Modules that add their own subcommands with register(subparsers).
PLUGIN_COMMANDS = ("live_puppet.evaluation_commands", "live_puppet.training.commands",
                   "live_puppet.backends.commands")


# The output canvas's sides, px: a smaller canvas cannot hold a face MediaPipe finds.
CANVAS_SIDES = (128, 8192)
MAX_FPS = 240  # the fastest --vcam-fps


def parse_size(text: str, sides: tuple[int, int] = (16, 8192)) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 1280x720") from None
    if not all(sides[0] <= v <= sides[1] for v in (w, h)):
        raise argparse.ArgumentTypeError(f"'{text}': both sides must be {sides[0]} to {sides[1]} px")
    return w, h


def frame_size(text: str) -> tuple[int, int]:
    """The virtual camera's (and the recording's) size: H.264 in 4:2:0 needs even sides."""
    w, h = parse_size(text)
    if w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"'{text}': both sides must be even (e.g. {w // 2 * 2}x{h // 2 * 2})")
    return w, h


def canvas_size(text: str) -> tuple[int, int]:
    return parse_size(text, CANVAS_SIDES)


def canvas_side(text: str) -> int:
    side = _whole_number(text, CANVAS_SIDES[0])
    if side > CANVAS_SIDES[1]:
        raise argparse.ArgumentTypeError(f"must be {CANVAS_SIDES[1]} or less, got {side}")
    return side


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (a rate, a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def frame_rate(text: str) -> float:
    value = positive_float(text)
    if not 1 <= value <= MAX_FPS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_FPS} frames per second, "
                                         f"got {text}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def add_canvas_arguments(p: argparse.ArgumentParser) -> None:
    """--size / --max-side: the output canvas (engines are built for it)."""
    p.add_argument("--size", type=canvas_size, help="output canvas WxH (default: the portrait's "
                   "own frame, long side capped at 1024)")
    p.add_argument("--max-side", type=canvas_side, default=1024,
                   help="cap on the canvas's long side when --size is not given")


def add_landmarker_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--landmarker-model", type=Path,
                   help="path of face_landmarker.task (default: $LIVE_PUPPET_LANDMARKER, the user "
                        "cache, or a download on first use)")


def add_pipeline_arguments(p: argparse.ArgumentParser, portrait_required: bool = True) -> None:
    """Arguments shared by run, eval and bench: what to animate and how."""
    if portrait_required:
        p.add_argument("--portrait", type=Path, required=True,
                       help="portrait picture (JPEG, PNG, WebP, BMP, TIFF or GIF), or a folder of "
                            "them (a gallery)")
    p.add_argument("--engine", default="warp",
                   help="render engine: warp (default, no weights), neural (needs --checkpoint), static"
                        + ("" if portrait_required else "; a comma list gives a row each"))
    p.add_argument("--checkpoint", type=Path, help="neural engine checkpoint (.safetensors)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="neural engine inference backend (auto: the fastest present)")
    p.add_argument("--engine-dir", type=Path,
                   help="folder of compiled neural engines (default: engines/ beside calibration/, "
                        "in the source checkout, else in the working folder; $LIVE_PUPPET_ENGINE_DIR)")
    add_canvas_arguments(p)
    p.add_argument("--expression-gain", type=gain_value, default=1.0,
                   help="multiplier on transferred expression (hotkeys +/-)")
    p.add_argument("--feature-gain", dest="feature_gains", type=feature_gain, action="append",
                   default=[], metavar="FEATURE=GAIN",
                   help="extra multiplier on one feature's motion, fading out around it: "
                        "brow, mouth, jaw or eye (eye: how far blinks close); repeatable, "
                        "e.g. --feature-gain brow=1.3")
    add_landmarker_argument(p)


FEATURES = ("brow", "mouth", "jaw", "eye")


def gain_value(text: str) -> float:
    """A gain between 0 and 3 (what the +/- hotkeys allow)."""
    try:
        gain = float(text)
        if not 0.0 <= gain <= 3.0:  # also refuses nan
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a gain between 0 and 3") from None
    return gain


def calibration_name(text: str) -> str:
    from live_puppet.calibration import check_calibration_name

    try:
        return check_calibration_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def feature_gain(text: str) -> tuple[str, float]:
    """"brow=1.3" -> ("brow", 1.3)."""
    name, _, value = text.partition("=")
    try:
        if name not in FEATURES:
            raise ValueError
        gain = gain_value(value)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not FEATURE=GAIN with FEATURE one of {', '.join(FEATURES)} and GAIN "
            f"between 0 and 3") from None
    return name, gain


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="live-puppet",
        description="Animate a portrait with your webcam and send it to a virtual camera.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="drive a portrait live (webcam, video file or image folder)",
                         description="Drive a portrait live and send it to a virtual camera.")
    add_pipeline_arguments(run)
    run.add_argument("--source", default="0",
                     help="webcam index (default 0), a video file, or a folder of images")
    rt = run.add_mutually_exclusive_group()
    rt.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                    help="pace files at their fps and drop frames like a camera (default for cameras)")
    rt.add_argument("--no-realtime", dest="realtime", action="store_false",
                    help="process every frame exactly once, in order (default for files)")
    run.add_argument("--camera-size", type=parse_size, default=RunConfig.camera_size,
                     help="webcam capture size to ask for (default 640x480, plenty for tracking; "
                          "the camera may pick another)")
    run.add_argument("--camera-fps", type=frame_rate, default=RunConfig.camera_fps,
                     help="webcam rate to ask for (default 30)")
    run.add_argument("--loop", action="store_true", help="start a video file over at its end")
    run.add_argument("--mirror", action="store_true", help="mirror the driver (selfie view)")
    run.add_argument("--no-vcam", dest="vcam", action="store_false", help="no virtual camera")
    run.add_argument("--vcam-size", type=frame_size, default=(1280, 720),
                     help="virtual camera size (default 1280x720); output is letterboxed into it")
    run.add_argument("--vcam-fps", type=frame_rate, default=30.0, help="virtual camera rate (default 30)")
    run.add_argument("--vcam-backend", help="pyvirtualcam backend (default: the first that works)")
    run.add_argument("--no-preview", dest="preview", action="store_false",
                     help="no preview window (headless)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar on the terminal (shown when there is no preview)")
    run.add_argument("--record", type=Path,
                     help="write the virtual camera's frames to this H.264 file (.mp4, .mkv, .mov, .m4v)")
    run.add_argument("--stats-json", type=Path, help="write frame counts, fps and latencies here at exit")
    run.add_argument("--max-frames", type=positive_int, help="stop after this many output frames")
    run.add_argument("--show-landmarks", action="store_true", help="start with the landmark overlay on")
    run.add_argument("--calibration", metavar="NAME", type=calibration_name,
                     help="reuse your saved neutral face NAME from calibration/ (made on first use, "
                          "updated by hotkey c)")
    run.add_argument("--calibration-dir", type=Path,
                     help="folder of saved calibrations (default: calibration/ beside engines/)")
    run.set_defaults(func=cmd_run)

    for name in PLUGIN_COMMANDS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def config_from_args(args) -> RunConfig:
    return RunConfig(
        portrait=args.portrait, source=args.source, realtime=args.realtime, loop=args.loop,
        mirror=args.mirror, camera_size=args.camera_size, camera_fps=args.camera_fps,
        landmarker_model=args.landmarker_model, engine=args.engine,
        checkpoint=args.checkpoint, backend=args.backend, size=args.size, max_side=args.max_side,
        expression_gain=args.expression_gain, feature_gains=dict(args.feature_gains),
        vcam=args.vcam, vcam_size=args.vcam_size,
        vcam_fps=args.vcam_fps, vcam_backend=args.vcam_backend, preview=args.preview,
        progress=args.progress,
        record=args.record, stats_json=args.stats_json, max_frames=args.max_frames,
        overlay_landmarks=args.show_landmarks, engine_dir=args.engine_dir,
        calibration=args.calibration, calibration_dir=args.calibration_dir)


def check_outputs(config) -> None:
    """--record and --stats-json: writable, and not one of the inputs (it would be overwritten)."""
    from live_puppet.errors import writable_file
    from live_puppet.sinks import RECORD_SUFFIXES

    inputs = (config.portrait, config.source, config.checkpoint, config.landmarker_model)
    for path, what, flag in ((config.record, "the recording", "--record"),
                             (config.stats_json, "the run's statistics", "--stats-json")):
        if path is not None:
            writable_file(path, what, flag, inputs)
    if config.record and Path(config.record).suffix.lower() not in RECORD_SUFFIXES:
        raise UserError(f"--record '{config.record}': record to a file ending in "
                        f"{', '.join(sorted(RECORD_SUFFIXES))} (H.264 video).")


def cmd_run(args) -> int:
    from live_puppet.app import App
    from live_puppet.errors import warn

    config = config_from_args(args)
    check_outputs(config)
    if not (config.vcam or config.preview or config.record or config.stats_json):
        warn("with --no-vcam, --no-preview and no --record, the frames go nowhere; add --record "
             "FILE to keep them.")
    if not config.source.strip().isdigit() and \
            (tuple(config.camera_size), config.camera_fps) != (RunConfig.camera_size,
                                                               RunConfig.camera_fps):
        warn("--camera-size and --camera-fps are for a webcam; a file or a folder plays at its own "
             "size and rate.")
    if config.checkpoint is not None and config.engine != "neural":
        warn(f"--checkpoint is for the neural engine; the {config.engine} engine runs without it "
             f"(add --engine neural to use it).")
    app = App(config)
    try:
        stats = app.run()
    finally:
        if config.stats_json:
            try:
                app.stats.write_json(config.stats_json, {"engine": config.engine, "source": config.source,
                                                         "interrupted": app.interrupted})
            except OSError as exc:  # (a full disk: the run's own outcome is reported, not this)
                warn(f"could not write the statistics to '{config.stats_json}' ({exc.strerror or exc}).")
    if app.recorder is not None and app.recorder.error is not None:
        kept = app.recorder.partial
        what = f"what was recorded is in '{kept}'" if kept.exists() else "nothing was kept"
        raise UserError(f"The recording '{config.record}' failed ({app.recorder.error}), so {what}; "
                        f"check the disk's free space and record again.")
    if app.output_failure is not None:  # the only output broke: the run stopped early
        raise UserError(f"The run stopped early because its only output failed ({app.output_failure}); "
                        f"fix that output, or add another (--record FILE).")
    if stats.frames_out and not stats.frames_with_face:
        warn(f"no face was found in any frame of '{config.source}'; the portrait stayed still.")
    summary = stats.summary()
    out = summary["frames_out"]
    stopped = " (stopped by a signal before the source's end)" if app.interrupted and not \
        app.source.is_live and not config.loop else ""
    line = (f"Done{stopped}: {out} frame{'' if out == 1 else 's'} out of {summary['frames_in']} in, "
            f"{summary['frames_dropped']} dropped")
    unused = summary["frames_in"] - out - summary["frames_dropped"]
    if unused > 0:  # read ahead when --max-frames (or a signal) stopped the run
        line += f", {unused} read ahead unused"
    if out >= 2:  # a rate needs two frames
        line += f", {summary['fps']:.1f} fps"
    if app.recorder is not None:
        line += f"; recording: {config.record}" if app.recorder.written else "; nothing was recorded"
    print(line, flush=True)
    # A camera or --loop run ends this way; a file stopped before its end did not finish.
    return 128 + (app.stopped_by or 2) if stopped else 0  # 130 for Ctrl-C, 143 SIGTERM, 129 SIGHUP


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere: `run_live.py --portrait X --debug` as well
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")  # `python -m live_puppet --portrait ...` means run
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = args.debug or debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return guarded(lambda: args.func(args), args.debug)


def guarded(call: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command: its exit code, and what went wrong as one line on stderr, never a
    traceback (unless `debug`)."""
    try:
        return int(call() or 0)
    except UserError as err:
        print(f"live-puppet: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("live-puppet: interrupted.", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # stdout's reader went away (`| head`): nothing more to say to it
        if debug:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        if isinstance(exc, OSError) and exc.filename is not None:  # the system refused a path
            names = " or ".join(f"'{n}'" for n in (exc.filename, exc.filename2) if n is not None)
            todo = "free some space" if exc.errno == errno.ENOSPC else "check the path and its permissions"
            print(f"live-puppet: error: cannot use {names} ({exc.strerror or exc}); {todo}.",
                  file=sys.stderr, flush=True)
            return 2
        print(f"live-puppet: unexpected error: {type(exc).__name__}: {exc} (run with --debug "
              f"for details and please report it)", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
