"""Service statistics: per-stage latency percentiles over a window of recent requests, and counters."""

from __future__ import annotations

import collections
import threading


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Stats:
    """Thread-safe: the completer's worker records, the server's event loop reads."""

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, collections.deque] = {}
        self._window = window
        self.counters: collections.Counter = collections.Counter()

    def record(self, timings_ms: dict[str, float]) -> None:
        with self._lock:
            for stage, ms in timings_ms.items():
                self._stages.setdefault(stage, collections.deque(maxlen=self._window)).append(float(ms))

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def latency(self) -> dict[str, dict[str, float]]:
        """stage -> {p50, p95, mean, n} in milliseconds."""
        with self._lock:
            stages = {k: list(v) for k, v in self._stages.items()}
        return {
            k: {
                "p50": round(percentile(v, 50), 3),
                "p95": round(percentile(v, 95), 3),
                "mean": round(sum(v) / len(v), 3),
                "n": len(v),
            }
            for k, v in sorted(stages.items())
            if v
        }

    def snapshot(self) -> dict:
        with self._lock:
            counters = dict(sorted(self.counters.items()))
        return {"latency_ms": self.latency(), "counters": counters}
