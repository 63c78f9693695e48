"""All settings of a run, in one dataclass (one comment per field). The CLI fills it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_DIR_ENV = "LIVE_PUPPET_ENGINE_DIR"


def default_engine_dir() -> Path:
    """$LIVE_PUPPET_ENGINE_DIR, else engines/ of the source checkout, else engines/ of the cwd."""
    env = os.environ.get(ENGINE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[1]  # live_puppet/ is in the checkout's root
    if (root / "pyproject.toml").is_file() and os.access(root, os.W_OK):
        return root / "engines"
    return Path.cwd() / "engines"


def default_calibration_dir() -> Path:
    """calibration/ beside engines/: saved neutral faces and INT8 calibration sets."""
    return default_engine_dir().parent / "calibration"


@dataclass
class RunConfig:
    # Portrait image file, or a folder of them (a gallery, sorted by name, hotkeys 1-9/n/p/r).
    portrait: Path
    # Webcam index ("0"), a video file, or a folder of images to drive the portrait with.
    source: str = "0"
    # Pace files at their own fps and drop frames like a camera (None: yes for cameras, no for files).
    realtime: bool | None = None
    # Start over at the end of a video file instead of stopping.
    loop: bool = False
    # Mirror the driver horizontally (what a selfie view shows).
    mirror: bool = False
    # Requested webcam capture size and rate (cameras only; the camera may pick another).
    camera_size: tuple[int, int] = (640, 480)
    camera_fps: float = 30.0
    # Path of MediaPipe's face_landmarker.task (None: $LIVE_PUPPET_LANDMARKER, cache, download).
    landmarker_model: Path | None = None
    # Render engine: "warp" (no weights), "neural" (needs --checkpoint), "static" (baseline).
    engine: str = "warp"
    # Neural engine checkpoint (safetensors) and its inference backend.
    checkpoint: Path | None = None
    backend: str = "auto"
    # Output canvas size (W, H); None: the portrait's own frame with the long side capped at max_side.
    size: tuple[int, int] | None = None
    max_side: int = 1024
    # Multiplier on transferred expression (1 = the driver's own amplitude).
    expression_gain: float = 1.0
    # Extra multipliers per feature ("brow", "mouth", "jaw", "eye"), each fading out around it.
    feature_gains: dict[str, float] = field(default_factory=dict)
    # The neutral (rest) face is chosen from this many first frames with a face (the calmest).
    neutral_frames: int = 5
    # Later frames in which a clearly calmer face replaces the neutral (0: never).
    neutral_refine_frames: int = 150
    # A driver back after more than 3 s away is at home where they are (False: the neutral stays).
    rehome: bool = True
    # Name of a saved calibration (the user's neutral face) to reuse and update; None: none.
    calibration: str | None = None
    # Folder of saved calibrations and INT8 calibration sets (None: calibration/ beside engines/).
    calibration_dir: Path | None = None
    # Send frames to a virtual camera (pyvirtualcam); its size, rate and backend (None: any).
    vcam: bool = True
    vcam_size: tuple[int, int] = (1280, 720)
    vcam_fps: float = 30.0
    vcam_backend: str | None = None
    # Show the preview window (reads the hotkeys).
    preview: bool = True
    # Without the preview: a progress bar on the terminal (frames gone by, of the file's length).
    progress: bool = True
    # Write exactly the frames sent to the virtual camera to this H.264 file.
    record: Path | None = None
    # Write frame counts, fps and per-stage latency here at exit.
    stats_json: Path | None = None
    # Stop after this many output frames (None: run until the source ends or q is pressed).
    max_frames: int | None = None
    # Draw landmarks and fps on the preview (hotkeys o and f toggle them).
    overlay_landmarks: bool = False
    overlay_fps: bool = True
    # Folder of compiled neural engines (None: engines/ of the source checkout, else of the
    # working folder, or $LIVE_PUPPET_ENGINE_DIR).
    engine_dir: Path | None = None

    def engine_options(self) -> dict:
        """Keyword options passed to the engine's constructor (engines ignore what they don't use)."""
        return {"checkpoint": self.checkpoint, "backend": self.backend, "engine_dir": self.engine_dir,
                "calibration_dir": self.calibration_dir}
