"""Anytime results: what a long estimate has so far, as a result folder in OUT/partial/ (see DESIGN.md).

A front end shows the first map as soon as it exists and refines it in place. Each update is written into a
temporary folder and swapped into place by renames, so a reader never sees a half-written folder, and it is
announced as the event `{"event": "partial", "path", "coalitions", "budget"}`. Updates come at most every
`interval_s` (writing volumes costs time too). The final result replaces the whole OUT folder, partial/ included.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .result import PARTIAL_DIR, write_result

Compose = Callable[[object], tuple[dict, dict, dict]]   # MethodResult -> (result.json fields, maps, files)


class PartialWriter:
    """Writes OUT/partial/ atomically and announces it through `announce(event, **fields)`."""

    def __init__(self, out: str | Path, compose: Compose, announce: Callable[..., None], interval_s: float = 2.0):
        self.folder = Path(out).absolute() / PARTIAL_DIR
        self.compose, self.announce, self.interval_s = compose, announce, interval_s
        self.last: float | None = None

    def __call__(self, method_result, coalitions: int, budget: int | None) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval_s:
            return
        result, maps, files = self.compose(method_result)
        result = {**result, "partial": {"coalitions": int(coalitions), "budget": budget}}
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=".partial.", dir=self.folder.parent))
        try:
            write_result(fresh / "r", result, maps, files=files)
            old = self.folder.parent / f".partial.old.{os.getpid()}"
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(fresh / "r", self.folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
        self.last = time.monotonic()
        self.announce("partial", path=str(self.folder), coalitions=int(coalitions), budget=budget)

    def discard(self) -> None:
        """Removes partial/ (and OUT when partial/ was all it held): a run that fails or is cancelled leaves nothing."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:
            pass
