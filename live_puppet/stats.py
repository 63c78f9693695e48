"""Run statistics: frame counts, throughput and per-stage latency (median / p90 / p99 ms).

Shared by `run --stats-json` and `live-puppet bench`.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np

STAGES = ("capture_wait", "track", "retarget", "render", "sink", "capture_to_sink")
# Latency samples kept per stage: the last hour at 30 fps. Kept whole, a day-long live run held
# about 21 MB more each hour, and summing up an hour of samples took 0.4 s.
KEEP_SAMPLES = 108_000


class Stats:
    def __init__(self):
        self.samples: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=KEEP_SAMPLES))
        self.frames_in = 0
        self.frames_out = 0
        self.frames_dropped = 0
        self.frames_with_face = 0
        self.started = time.perf_counter()
        self.first_frame_at: float | None = None
        self.ended: float | None = None
        self._recent: list[float] = []

    def add(self, stage: str, seconds: float) -> None:
        self.samples[stage].append(seconds * 1000.0)

    def frame_out(self) -> None:
        now = time.perf_counter()
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.frames_out += 1
        self._recent.append(now)
        if len(self._recent) > 30:
            del self._recent[0]

    def live_fps(self) -> float:
        """Output rate over the last 30 frames (for the overlay)."""
        if len(self._recent) < 2:
            return 0.0
        return (len(self._recent) - 1) / max(self._recent[-1] - self._recent[0], 1e-9)

    def finish(self) -> None:
        self.ended = time.perf_counter()

    def summary(self) -> dict:
        end = self.ended or time.perf_counter()
        start = self.first_frame_at or self.started
        # Throughput over the steady stream: from the first output frame to the end.
        elapsed = max(end - start, 1e-9)
        latency = {}
        for stage in list(STAGES) + sorted(set(self.samples) - set(STAGES)):
            values = self.samples.get(stage)
            if not values:
                continue
            arr = np.asarray(values)
            latency[stage] = {"median": round(float(np.median(arr)), 3),
                              "p90": round(float(np.percentile(arr, 90)), 3),
                              "p99": round(float(np.percentile(arr, 99)), 3)}
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "frames_with_face": self.frames_with_face,
            "fps": round((self.frames_out - 1) / elapsed, 2) if self.frames_out > 1 else 0.0,
            "wall_seconds": round(end - self.started, 3),
            "time_to_first_frame_s": round(start - self.started, 3) if self.first_frame_at else None,
            "latency_ms": latency,
        }

    def write_json(self, path: Path, extra: dict | None = None) -> None:
        data = self.summary()
        if extra:
            data.update(extra)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
