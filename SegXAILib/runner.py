"""Runs the engine in a subprocess without blocking the caller: the Slicer panel, the web front end and tests.

The engine (`segxai explain ... --progress json`) writes `SEGXAI_EVENT {json}` lines on stderr (among them
`partial`: an anytime result folder to load in place, `runner.partial`). `EngineRunner`
starts it with stdout and stderr merged into one pipe, reads that pipe in a thread into a queue, and hands lines
over only when asked: `poll()` (from a `qt.QTimer` in Slicer, so that MRML is only ever touched on the main thread)
or `waitForCompletion()` (batch use and tests). `cancel()` ends the whole process tree: SIGTERM first (the engine
stops between batches and exits 130), SIGKILL after a grace period, for the process group and every descendant.

Pure Python: no Qt, no Slicer. `explain_argv()` turns an `ExplainRequest` into the `segxai explain` command line,
so every front end builds the same command.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from .progress import parse_event

if TYPE_CHECKING:  # importing SegXAILib.request imports torch (through SegXAILib.models); the runner itself never needs it
    from .request import ExplainRequest


def _number(value: float) -> str:
    """A float as text that parses back to the same float (and an integral one without a trailing .0)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


# How each ExplainRequest field (dotted path into its option dataclasses) reaches `segxai explain`:
#   always  - the flag and its value are always written        value  - written when it differs from the default
#   repeat  - one flag per list item                           nargs  - one flag, the items as separate words
#   csv     - one flag, items joined by commas                 json   - one flag, the value as JSON
#   true    - a bare flag when True                            false  - a bare flag when False
#   none    - no flag: a value other than the default is an error (never dropped silently)
#   method  - written when the request's method owns the option group (region.* region-shap, causal.* causal);
#             for any other method it must stay at its default (one flag, a meaning per method: --tolerance)
# Testing/test_runner.py checks that every field of ExplainRequest is in this table, so a new option cannot be
# forgotten here, and that the command line parses back (through SegXAILib.cli) to the same request.
EXPLAIN_FLAGS: tuple[tuple[str, str | None, str], ...] = (
    ("images", "--image", "repeat"),
    ("models", "--model", "repeat"),
    ("out", "--out", "always"),
    ("targets", "--target-label", "repeat"),
    ("method", "--method", "always"),
    ("value", "--value", "always"),
    ("roi_mask", "--roi-mask", "value"),
    ("roi_box", "--roi-box", "nargs"),
    ("reference", "--reference", "value"),
    ("ground_truth", "--ground-truth", "value"),
    ("seed", "--seed", "always"),
    ("budget", "--budget", "value"),
    ("device", "--device", "always"),
    ("baseline", "--baseline", "value"),
    ("resample", "--resample", "true"),
    ("overwrite", "--overwrite", "true"),
    ("clinician_ranking", "--clinician-ranking", "value"),
    ("batch_size", "--batch-size", "value"),
    ("model_options.trust", "--trust", "true"),
    ("model_options.channels", "--channels", "csv"),
    ("model_options.labels", None, "none"),
    ("model_options.activation", None, "none"),
    ("model_options.window", "--window", "nargs"),
    ("model_options.overlap", "--overlap", "value"),
    ("model_options.preprocess", "--preprocess", "value"),
    ("model_options.factory", "--factory", "value"),
    ("model_options.factory_kwargs", "--factory-kwargs", "json"),
    ("model_options.folds", "--folds", "csv"),
    ("model_options.checkpoint", "--checkpoint", "value"),
    ("model_options.mirroring", "--no-mirroring", "false"),
    ("region.features", "--features", "value"),
    ("region.labels", "--labels", "value"),
    ("region.label_names", "--label-names", "json"),
    ("region.n_players", "--n-players", "value"),
    ("region.cell_mm", "--cell-mm", "value"),
    ("region.estimator", "--estimator", "value"),
    ("region.mask_share", "--mask-share", "value"),   # the CLI's one --mask-share serves region SHAP and causal
    ("region.top_k", "--top-k", "value"),
    ("region.tolerance", "--tolerance", "method"),
    ("causal.intervention", "--intervention", "value"),
    ("causal.min_samples", "--min-samples", "value"),
    ("causal.max_samples", "--max-samples", "value"),
    ("causal.tolerance", "--tolerance", "method"),
    ("causal.confidence", None, "none"),
    ("causal.mask_share", "--mask-share", "value"),
    ("causal.components", "--components", "csv"),
    ("causal.component_unit", "--component-unit", "value"),
    ("gradients.kind", None, "none"),
    ("gradients.output", None, "none"),
    ("gradients.n_steps", None, "none"),
    ("gradients.layer", None, "none"),
    ("gradients.per_channel", None, "none"),
    ("tracin.training_dir", "--training-dir", "value"),
    ("tracin.checkpoints", "--tracin-checkpoint", "repeat"),
    ("tracin.layers", "--tracin-layers", "csv"),
    ("tracin.projection_dim", "--projection-dim", "value"),
    ("tracin.train_region", "--train-region", "value"),
    ("tracin.patches", "--train-patches", "value"),
    ("tracin.max_cases", "--max-train-cases", "value"),
    ("tracin.score", "--influence-score", "value"),
    ("tracin.top_k", "--influence-top-k", "value"),
)

_MISSING = object()


def _lookup(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _text(value) -> str:
    return _number(value) if isinstance(value, float) else str(value)


def explain_argv(request: "ExplainRequest", python: str | None = None, progress: str = "json",
                 extra: Sequence[str] = ()) -> list[str]:
    """`python -m SegXAILib.cli explain ...` for `request` (`python`: e.g. PythonSlicer; default this interpreter).

    Everything the request holds goes on the command line (options at their default are left out); an option
    the CLI cannot express is an error rather than being dropped. `extra` is appended as is.
    """
    defaults = type(request)(images=[], models=[], out="", targets=[])
    if request.roi_box is not None and len(request.roi_box) != 6:
        raise ValueError(f"roi_box needs 6 numbers (R1 A1 S1 R2 A2 S2), got {len(request.roi_box)}")
    shares = {_lookup(request, "region.mask_share"), _lookup(request, "causal.mask_share")} - {_MISSING}
    if len(shares) > 1:
        # one --mask-share serves both; the one of the method in use wins, the other must agree
        keep = "causal.mask_share" if request.method == "causal" else "region.mask_share"
        raise ValueError(f"region.mask_share and causal.mask_share differ; `segxai explain` has one --mask-share (set {keep}, make the other equal).")
    if _lookup(request, "region.cell_mm") not in (None, _MISSING) and \
            _lookup(request, "region.n_players") != _lookup(defaults, "region.n_players"):
        raise ValueError("region.n_players and region.cell_mm exclude each other (supervoxel count or lattice cell size).")
    argv = [python or sys.executable, "-m", "SegXAILib.cli", "explain"]
    written = set()
    for path, flag, kind in EXPLAIN_FLAGS:
        value = _lookup(request, path)
        if value is _MISSING:  # a field this version of the request does not have
            continue
        default = _lookup(defaults, path)
        if kind == "none":
            if value != default:
                raise ValueError(f"ExplainRequest.{path} has no `segxai explain` flag; leave it at its default ({default!r}).")
            continue
        if kind not in ("always", "repeat") and value == default:
            continue
        if kind == "method":
            owner = {"region": "region-shap", "causal": "causal"}[path.split(".")[0]]
            if request.method != owner:
                raise ValueError(f"ExplainRequest.{path} applies to --method {owner} only; leave it at its default ({default!r}).")
        if flag in written:  # --mask-share (checked equal above)
            continue
        written.add(flag)
        if kind == "repeat":
            for item in value:
                argv += [flag, str(item)]
        elif kind == "nargs":
            argv += [flag, *(_text(v) for v in value)]
        elif kind == "csv":
            argv += [flag, ",".join(str(v) for v in value)]
        elif kind == "json":
            argv += [flag, json.dumps(value)]
        elif kind == "true":
            if value:
                argv.append(flag)
        elif kind == "false":
            if not value:
                argv.append(flag)
        else:
            argv += [flag, _text(value)]
    return argv + ["--progress", progress, *extra]


def describe_model_argv(model: str, python: str | None = None, trust: bool = False) -> list[str]:
    """`python -m SegXAILib.cli describe-model MODEL --json` (prints {format, channels, labels, window, ...})."""
    return [python or sys.executable, "-m", "SegXAILib.cli", "describe-model", str(model), "--json", *(["--trust"] if trust else [])]


def engine_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an engine subprocess: `base` (default os.environ) with this SegXAILib importable first."""
    env = dict(os.environ if base is None else base)
    lib_parent = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != lib_parent]
    env["PYTHONPATH"] = os.pathsep.join([lib_parent, *paths])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


class RunState(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.DONE, RunState.FAILED, RunState.CANCELLED)


@dataclasses.dataclass
class Message:
    """One line the engine wrote: `event` is its parsed SEGXAI_EVENT, or None for a plain log line."""

    line: str
    event: dict | None = None


@dataclasses.dataclass
class RunError:
    """Why a run failed, in words a user can act on (from the engine's error event when it sent one)."""

    problem: str
    fix: str = ""
    kind: str = ""
    returncode: int | None = None

    def __str__(self) -> str:
        return self.problem + (f"\nFix: {self.fix}" if self.fix else "")


_EXIT_MEANINGS = {
    2: ("The inputs cannot be used as given.", "Read the log above for what to change."),
    3: ("The model could not be loaded or rejected the input.", "Check the model path, its format and the number of input channels."),
    4: ("There is not enough memory for this run.", "Use a smaller ROI, a smaller --batch-size, or the CPU device."),
}

_EOF = object()


class EngineRunner:
    """One engine subprocess: start, poll for lines and progress, cancel (whole process tree), wait."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
                 grace_s: float = 5.0, max_log_lines: int = 20000):
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.grace_s = grace_s
        self.state = RunState.IDLE
        self.returncode: int | None = None
        self.error: RunError | None = None
        self.log: deque[str] = deque(maxlen=max_log_lines)
        self.events: list[dict] = []
        self.out_dir: str | None = self._argv_value("--out")
        self.partial: dict | None = None  # the latest anytime result: {"path": OUT/partial, "coalitions", "budget"}
        self.stage: str = ""
        self.done_units = 0
        self.total_units = 0
        self._eta: tuple[float, float] | None = None  # (eta_s as reported, monotonic time it arrived)
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._eof = False
        self._exited_at: float | None = None
        self._cancel_requested = False
        self._killer: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "EngineRunner":
        if self.state != RunState.IDLE:
            raise RuntimeError("An EngineRunner starts once; make a new one for another run.")
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # own process group: cancel() signals the whole group
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self.started_at = time.monotonic()
        try:
            self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace",
                                          bufsize=1, **kwargs)
        except OSError as exc:
            self.state = RunState.FAILED
            self.finished_at = time.monotonic()
            self.error = RunError(f"Cannot start the engine ({self.argv[0]}): {exc}",
                                  "Check that Python (PythonSlicer in Slicer) and SegXAI are installed.", "OSError")
            return self
        self.state = RunState.RUNNING
        self._reader = threading.Thread(target=self._read, name="SegXAI engine reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        stream = self._proc.stdout
        try:
            for line in stream:
                self._queue.put(line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(_EOF)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ------------------------------------------------------------------ polling
    def poll(self) -> list[Message]:
        """New lines since the last call (events parsed); updates progress and, at the end, the final state."""
        messages: list[Message] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self._eof = True
                continue
            messages.append(self._handle(item))
        if self.state == RunState.RUNNING and self._proc is not None:
            code = self._proc.poll()
            if code is not None:
                now = time.monotonic()
                self._exited_at = self._exited_at or now
                # A grandchild that outlives the engine may hold the pipe open: do not wait for EOF forever.
                if self._eof or now - self._exited_at > 2.0:
                    self._finish(code)
        return messages

    def _handle(self, line: str) -> Message:
        event = parse_event(line)
        if event is None:
            self.log.append(line)
            return Message(line)
        self.events.append(event)
        kind = event.get("event")
        if kind == "progress":
            self.stage = str(event.get("stage", ""))
            self.done_units = int(event.get("done") or 0)
            self.total_units = int(event.get("total") or 0)
            eta = event.get("eta_s")
            self._eta = (float(eta), time.monotonic()) if eta is not None else None
        elif kind == "started" and event.get("out"):
            self.out_dir = str(event["out"])
        elif kind == "partial" and event.get("path"):
            self.partial = {k: event.get(k) for k in ("path", "coalitions", "budget")}
        elif kind == "done" and event.get("out"):
            self.out_dir = str(event["out"])
        elif kind == "error":
            self.error = RunError(str(event.get("problem", "The engine failed.")), str(event.get("fix", "")), str(event.get("kind", "")))
        return Message(line, event)

    def _finish(self, code: int) -> None:
        self.returncode = code
        self.finished_at = time.monotonic()
        if self._cancel_requested or code == 130:
            self.state = RunState.CANCELLED
            self.error = None
        elif code == 0:
            self.state = RunState.DONE
        else:
            self.state = RunState.FAILED
            if self.error is None:
                problem, fix = _EXIT_MEANINGS.get(code, (None, None))
                if problem is None:
                    if code < 0:
                        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
                        problem = f"The engine was stopped by signal {name}" + (
                            " (the system may have run out of memory)." if -code == getattr(signal, "SIGKILL", 9) else ".")
                        fix = "Use a smaller ROI or batch size, or close other programs, and try again."
                    else:
                        problem, fix = f"The engine exited with code {code}.", "Read the engine log for the cause."
                tail = "\n".join(list(self.log)[-5:])
                self.error = RunError(problem + (f"\n{tail}" if tail else ""), fix, "", code)
            self.error.returncode = code

    # ------------------------------------------------------------------ progress
    @property
    def fraction(self) -> float | None:
        """Progress of the current stage in [0, 1], or None before the first progress event."""
        if not self.total_units:
            return 1.0 if self.state == RunState.DONE else None
        return min(1.0, self.done_units / self.total_units)

    @property
    def eta_s(self) -> float | None:
        """Seconds left in the current stage (the engine's estimate, counted down since it arrived)."""
        if self._eta is None or self.state != RunState.RUNNING:
            return None
        eta, at = self._eta
        return max(0.0, eta - (time.monotonic() - at))

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at

    # ------------------------------------------------------------------ cancel / wait
    def cancel(self) -> None:
        """Stops the run and everything it started; returns at once (a thread escalates to SIGKILL)."""
        if self.state != RunState.RUNNING or self._proc is None or self._cancel_requested:
            return
        self._cancel_requested = True
        descendants = _descendants(self._proc.pid)
        _signal_tree(self._proc, descendants, hard=False)
        self._killer = threading.Thread(target=self._escalate, args=(descendants,), name="SegXAI engine killer", daemon=True)
        self._killer.start()

    def _escalate(self, descendants: list) -> None:
        try:
            self._proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            _signal_tree(self._proc, descendants + _descendants(self._proc.pid), hard=True)
            try:
                self._proc.wait(self.grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Descendants that left the process group (or outlived the engine) go too.
        _kill_survivors(descendants, self.grace_s)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def waitForCompletion(self, timeout: float | None = None, interval: float = 0.05) -> RunState:
        """Polls until the run ends (for batch use and tests); TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.state.finished:
            if self.state == RunState.IDLE:
                raise RuntimeError("The runner was not started.")
            self.poll()
            if self.state.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"The engine is still running after {timeout} s.")
            time.sleep(interval)
        if self._killer is not None:
            self._killer.join(2 * self.grace_s + 1)
        return self.state

    def _argv_value(self, flag: str) -> str | None:
        try:
            return self.argv[self.argv.index(flag) + 1]
        except (ValueError, IndexError):
            return None


def _descendants(pid: int) -> list:
    """psutil.Process objects of every descendant (empty without psutil or when the process is gone)."""
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []


def _signal_tree(proc: subprocess.Popen, descendants: list, hard: bool) -> None:
    if os.name == "posix":
        sig = signal.SIGKILL if hard else signal.SIGTERM
        try:
            os.killpg(proc.pid, sig)  # the group: the engine and every child that did not leave it
        except (ProcessLookupError, PermissionError):
            pass
    else:
        try:
            proc.kill() if hard else proc.terminate()
        except OSError:
            pass
    for child in descendants:
        try:
            child.kill() if hard else child.terminate()
        except Exception:
            pass


def _kill_survivors(descendants: list, grace_s: float) -> None:
    alive = []
    for child in descendants:
        try:
            if child.is_running() and child.status() != "zombie":
                alive.append(child)
        except Exception:
            pass
    if not alive:
        return
    try:
        import psutil

        for child in alive:
            try:
                child.terminate()
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(alive, timeout=grace_s)
        for child in still:
            try:
                child.kill()
            except psutil.Error:
                pass
    except ImportError:
        pass
