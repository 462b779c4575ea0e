"""Peak anonymous resident memory of this process, sampled by a background thread.

``RssAnon`` (``/proc/self/status``) counts the process's own pages: heap, tensors, numpy arrays.
Pages of a memory-mapped file are page cache (``RssFile``): the kernel drops and re-reads them
under pressure, so a cache read through ``mmap`` adds to ``RssFile``, not to ``RssAnon``. What a
run needs of the machine's RAM is therefore its peak ``RssAnon``. The kernel keeps no high-water
mark of it (``VmHWM`` mixes both), so a thread reads it every ``interval`` seconds.

    with RssSampler() as rss:
        work()
    rss.peak_bytes, rss.start_bytes, rss.samples
"""

from __future__ import annotations

import threading
from pathlib import Path

STATUS = Path("/proc/self/status")


def rss_anon_bytes() -> int:
    """The process's ``RssAnon`` now, in bytes (Linux; ``RuntimeError`` elsewhere)."""
    try:
        text = STATUS.read_text()
    except OSError as e:
        raise RuntimeError(f"cannot read {STATUS} ({e}): RssAnon needs Linux's /proc") from None
    for line in text.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024  # "RssAnon:   123456 kB"
    raise RuntimeError(f"{STATUS} has no RssAnon line")


class RssSampler:
    """Context manager: the highest ``RssAnon`` seen while its block ran, read every ``interval`` s
    by a daemon thread (and once at entry and exit, so even a block shorter than one interval has
    a peak). ``interval`` is at most 0.05 s: a short-lived allocation between two reads is missed,
    so the sampled peak is a lower bound, exact for anything held longer than an interval."""

    def __init__(self, interval: float = 0.01):
        if not 0 < interval <= 0.05:
            raise ValueError(f"RssSampler interval={interval} must be in (0, 0.05] seconds")
        self.interval = interval
        self.start_bytes = 0
        """``RssAnon`` at entry."""
        self.peak_bytes = 0
        """Highest ``RssAnon`` read between entry and exit."""
        self.end_bytes = 0
        """``RssAnon`` at exit."""
        self.samples = 0
        """Reads taken (entry and exit included)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> None:
        self.peak_bytes = max(self.peak_bytes, rss_anon_bytes())
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def __enter__(self) -> RssSampler:
        self.start_bytes = self.peak_bytes = rss_anon_bytes()
        self.samples = 1
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._read()
        self.end_bytes = rss_anon_bytes()

    def as_dict(self, prefix: str = "") -> dict[str, int]:
        """``{prefix}peak_anon_rss_bytes``, ``…start…``, ``…end…``: flat, ready to log."""
        return {
            f"{prefix}peak_anon_rss_bytes": self.peak_bytes,
            f"{prefix}start_anon_rss_bytes": self.start_bytes,
            f"{prefix}end_anon_rss_bytes": self.end_bytes,
        }
