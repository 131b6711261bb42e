"""Progress reporting and cancellation shared by the engine and every front end.

The engine calls `progress(done, total, stage)` and checks `cancel.is_set()` between batches. The CLI turns
progress into a terminal bar or, with `--progress json`, into machine-readable lines that the Slicer runner
and the web front end parse: one line per event, `SEGXAI_EVENT <json>`, on stderr. Other events (an anytime
result: `partial`) reach a progress object through `emit`, which calls its `event(name, **fields)` when it has one.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

from .errors import Cancelled

EVENT_PREFIX = "SEGXAI_EVENT "

ProgressFn = Callable[[int, int, str], None]


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


def never_cancelled() -> threading.Event:
    return threading.Event()


def check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def no_progress(done: int, total: int, stage: str) -> None:
    """The default callback: silence."""


def emit(progress, event: str, **fields) -> None:
    """Hands an event to a progress object that takes events (JsonLinesProgress, TerminalProgress); others ignore it."""
    handler = getattr(progress, "event", None)
    if handler is not None:
        handler(event, **fields)


def format_event(event: str, **fields) -> str:
    return EVENT_PREFIX + json.dumps({"event": event, **fields}, default=str)


def parse_event(line: str) -> dict | None:
    """The event dict of a `SEGXAI_EVENT` line, or None for any other line (log text)."""
    line = line.strip()
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        return json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None


class JsonLinesProgress:
    """Progress as `SEGXAI_EVENT {"event": "progress", ...}` lines with elapsed time and an ETA per stage."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.started: dict[str, float] = {}

    def __call__(self, done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        t0 = self.started.setdefault(stage, now)
        elapsed = now - t0
        eta = elapsed / done * (total - done) if done else None
        print(format_event("progress", done=done, total=total, stage=stage, elapsed_s=round(elapsed, 2),
                           eta_s=None if eta is None else round(eta, 2)), file=self.stream, flush=True)

    def event(self, event: str, **fields) -> None:
        print(format_event(event, **fields), file=self.stream, flush=True)


class TerminalProgress:
    """A one-line progress bar for people at a terminal."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.started: dict[str, float] = {}

    def __call__(self, done: int, total: int, stage: str) -> None:
        t0 = self.started.setdefault(stage, time.monotonic())
        frac = done / total if total else 1.0
        bar = "#" * int(frac * self.width)
        elapsed = time.monotonic() - t0
        eta = f" ETA {elapsed / done * (total - done):5.1f}s" if done and done < total else ""
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{stage:<28} [{bar:<{self.width}}] {done}/{total} {elapsed:5.1f}s{eta}{end}")
        self.stream.flush()

    def event(self, event: str, **fields) -> None:
        """An anytime result: one line with the coalitions spent and the current top regions."""
        if event != "partial":
            return
        top = ""
        try:
            doc = json.loads((Path(fields["path"]) / "result.json").read_text())
            top = ", ".join(f"{p['name']} {p['value']:+.3f}" for p in doc.get("top_k", [])[:3])
        except (OSError, KeyError, ValueError):
            pass
        budget = fields.get("budget")
        self.stream.write(f"\rpartial map: {fields.get('coalitions')}{'' if budget is None else f'/{budget}'} coalitions"
                          f"{'; top: ' + top if top else ''}\n")
        self.stream.flush()
