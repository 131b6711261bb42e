"""The panel's engine processes without Qt: explain runs with anytime results, model descriptions, scene closes.

The widget's QTimer calls `poll()` on the main thread (the only thread that touches MRML); nothing here blocks:
`describe-model` runs through the same non-blocking runner as Apply, one process per model, instead of a sleep loop
on the GUI thread. A `partial` event from the engine loads that partial result folder into one run's nodes, and
each newer one (then the final result) refreshes the same nodes in place. Closing the scene cancels the run: its
parameter node and volumes are gone, so nothing is loaded into the new scene.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from slicer import vtkMRMLScene

from SegXAILib import mrml_adapter
from SegXAILib.result import RESULT_FILE
from SegXAILib.runner import EngineRunner, Message, RunState, describe_model_argv

SCENE_CLOSED = "The scene was closed during the run: the run was cancelled and nothing was loaded."


class PanelRuns:
    """One explain run at a time plus any number of model descriptions, polled together."""

    def __init__(self, scene: vtkMRMLScene, python: str, env: dict | None = None):
        self.scene = scene
        self.python = python
        self.env = env
        self.runner: EngineRunner | None = None
        self.run: mrml_adapter.LoadedRun | None = None  # the partial result, refreshed in place, then the final one
        self.runs: list[mrml_adapter.LoadedRun] = []
        self.background = None
        self.top_k = 10
        self.status = ""
        self.partials = 0
        self._pending: dict | None = None  # the newest partial event whose folder could not be read yet
        self.scene_closed = False
        self.descriptions: dict[str, dict] = {}
        self.description_errors: dict[str, str] = {}
        self._describing: list[tuple[str, EngineRunner]] = []
        self._on_described: list[Callable[[], None]] = []
        self._observer = scene.AddObserver(vtkMRMLScene.StartCloseEvent, self._scene_closing)

    def close(self) -> None:
        """The widget goes away: stop everything it started."""
        self.scene.RemoveObserver(self._observer)
        if self.running:
            self.runner.cancel()
        for _, runner in self._describing:
            runner.cancel()

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.state == RunState.RUNNING

    @property
    def busy(self) -> bool:
        return self.running or bool(self._describing)

    # ------------------------------------------------------------------ explain
    def start(self, runner: EngineRunner, background=None, top_k: int = 10) -> EngineRunner:
        self.runner, self.run, self.runs = runner, None, []
        self.background, self.top_k = background, top_k
        self.partials, self.scene_closed, self.status, self._pending = 0, False, "", None
        return runner

    def poll(self) -> list[Message]:
        """New engine log lines; loads partial results as they come and the final result at the end."""
        self._poll_descriptions()
        runner = self.runner
        if runner is None:
            return []
        was_running = runner.state == RunState.RUNNING
        messages = runner.poll()
        partials = [m.event for m in messages if m.event and m.event.get("event") == "partial"]
        if partials:
            self._pending = partials[-1]  # a newer partial result supersedes the older ones read in the same poll
        if self._pending is not None and runner.state == RunState.RUNNING and not self.scene_closed:
            if self._show_partial(self._pending):
                self._pending = None
        if was_running and runner.state.finished:
            self._pending = None  # the final result replaced OUT (partial/ with it) and is loaded instead
            self._finish(runner)
        return messages

    def _show_partial(self, event: dict) -> bool:
        """Loads a partial result folder; False while it cannot be read (the engine is swapping in a newer one)."""
        folder = Path(str(event.get("path") or ""))
        if not (folder / RESULT_FILE).exists():
            return False
        if self.run is None:
            self.run = mrml_adapter.load_result(self.scene, folder, background=self.background, top_k=self.top_k)
        else:
            mrml_adapter.refresh_result(self.run, folder, background=self.background, top_k=self.top_k)
        self.partials += 1
        self.status = f"Partial result: {event.get('coalitions', '?')} of {event.get('budget', '?')} coalitions"
        return True

    def _finish(self, runner: EngineRunner) -> None:
        if self.scene_closed:
            self.status = SCENE_CLOSED
            return
        if runner.state != RunState.DONE:
            if self.run is not None:
                self.status = "Stopped; the last partial result stays in the scene."
            return
        out = Path(str(runner.out_dir))
        if self.run is not None and (out / RESULT_FILE).exists():  # the final result replaces the partial one in place
            self.runs = [mrml_adapter.refresh_result(self.run, out, background=self.background, top_k=self.top_k, show=True)]
        else:
            if self.run is not None:  # several targets: the final folders replace the partial run
                mrml_adapter.remove_run(self.run)
            self.runs = mrml_adapter.load_results(self.scene, out, background=self.background, top_k=self.top_k)
        self.run = None

    def _scene_closing(self, caller=None, event=None) -> None:
        if self.running:
            self.runner.cancel()
            self.scene_closed = True
            self.status = SCENE_CLOSED
        self.run, self.background = None, None

    # ------------------------------------------------------------------ describe-model
    def describe(self, paths: list[str], then: Callable[[], None] | None = None) -> None:
        """Asks the engine about every model not described yet, without trust (metadata only), in the background."""
        queued = {p for p, _ in self._describing}
        for path in paths:
            if path not in self.descriptions and path not in queued:
                self.description_errors.pop(path, None)
                self._describing.append((path, EngineRunner(describe_model_argv(path, self.python, False), env=self.env).start()))
        if then is not None:
            self._on_described.append(then)
        self._poll_descriptions()

    def _poll_descriptions(self) -> None:
        for path, runner in list(self._describing):
            runner.poll()
            if not runner.state.finished:
                continue
            self._describing.remove((path, runner))
            text = "\n".join(runner.log)
            if runner.state == RunState.DONE and "{" in text:
                self.descriptions[path] = json.loads(text[text.index("{"): text.rindex("}") + 1])
            else:
                self.description_errors[path] = str(runner.error) if runner.error else text[-2000:]
        if not self._describing and self._on_described:
            callbacks, self._on_described = self._on_described, []
            for callback in callbacks:
                callback()
