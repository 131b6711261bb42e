"""The engine runner against real subprocesses: progress lines, errors with their fix, cancel of a whole process tree,
the command line every front end builds, and the real `segxai explain` end to end into a real MRML scene."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import psutil
import pytest

from SegXAILib import cli
from SegXAILib.models.options import ModelOptions
from SegXAILib.request import ExplainRequest
from SegXAILib.runner import EngineRunner, RunState, describe_model_argv, engine_environment, explain_argv


def _child(code: str) -> list[str]:
    prelude = "import sys, time, json, os, subprocess\nfrom SegXAILib.progress import format_event\n"
    return [sys.executable, "-c", prelude + textwrap.dedent(code)]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_progress_events_and_log_lines_stream_while_running():
    runner = EngineRunner(_child("""
        print("loading models", flush=True)
        print(format_event("started", out="X"), file=sys.stderr, flush=True)
        for i in range(1, 5):
            print(format_event("progress", done=i, total=4, stage="coalitions", elapsed_s=i * 0.1, eta_s=(4 - i) * 0.1), file=sys.stderr, flush=True)
            time.sleep(0.05)
        print(format_event("partial", path="/tmp/result-dir/partial", coalitions=40, budget=512), file=sys.stderr, flush=True)
        print(format_event("done", out="/tmp/result-dir"), file=sys.stderr, flush=True)
    """), env=engine_environment()).start()
    assert runner.state == RunState.RUNNING
    seen = []
    fractions = []
    while not runner.state.finished:
        seen += runner.poll()
        if runner.fraction is not None:
            fractions.append(runner.fraction)
        time.sleep(0.01)
    assert runner.state == RunState.DONE and runner.returncode == 0 and runner.error is None
    assert [m.line for m in seen if m.event is None] == ["loading models"]
    kinds = [m.event["event"] for m in seen if m.event]
    assert kinds == ["started", "progress", "progress", "progress", "progress", "partial", "done"]
    assert runner.partial == {"path": "/tmp/result-dir/partial", "coalitions": 40, "budget": 512}  # an anytime result to load
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # progress only moves forward
    assert runner.stage == "coalitions" and runner.out_dir == "/tmp/result-dir"
    assert runner.eta_s is None  # no estimate once finished
    assert runner.poll() == []


def test_eta_counts_down_between_events():
    runner = EngineRunner(_child("""
        print(format_event("progress", done=1, total=10, stage="s", elapsed_s=1.0, eta_s=9.0), file=sys.stderr, flush=True)
        time.sleep(30)
    """), env=engine_environment()).start()
    try:
        assert _wait_for(lambda: runner.poll() or runner.total_units)
        first = runner.eta_s
        time.sleep(0.3)
        assert 8.0 < runner.eta_s < first <= 9.0
        assert runner.fraction == pytest.approx(0.1)
    finally:
        runner.cancel()
        assert runner.waitForCompletion(20) == RunState.CANCELLED


def test_error_event_surfaces_problem_and_fix():
    runner = EngineRunner(_child("""
        print("Traceback noise", file=sys.stderr, flush=True)
        print(format_event("error", kind="InputError", problem="The ROI mask is empty.", fix="Draw the ROI again."), file=sys.stderr, flush=True)
        sys.exit(2)
    """), env=engine_environment()).start()
    assert runner.waitForCompletion(20) == RunState.FAILED
    assert runner.returncode == 2
    assert runner.error.problem == "The ROI mask is empty." and runner.error.fix == "Draw the ROI again."
    assert runner.error.kind == "InputError" and runner.error.returncode == 2
    assert "Fix: Draw the ROI again." in str(runner.error)


def test_crash_without_error_event_still_says_what_happened():
    runner = EngineRunner(_child("""
        print("Segmentation fault in libtorch", flush=True)
        os.kill(os.getpid(), 9)
    """), env=engine_environment()).start()
    assert runner.waitForCompletion(20) == RunState.FAILED
    assert runner.returncode == -9
    assert "SIGKILL" in runner.error.problem and "memory" in runner.error.problem
    assert "Segmentation fault in libtorch" in runner.error.problem  # the log tail travels with it


def test_unstartable_program_fails_cleanly(tmp_path):
    runner = EngineRunner([str(tmp_path / "no-such-python"), "-m", "x"]).start()
    assert runner.state == RunState.FAILED and "Cannot start the engine" in runner.error.problem


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_cancel_kills_child_and_grandchild():
    runner = EngineRunner(_child("""
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("GRANDCHILD", grandchild.pid, flush=True)
        time.sleep(60)
    """), env=engine_environment(), grace_s=2.0).start()
    pids = []
    assert _wait_for(lambda: pids.extend(int(m.line.split()[1]) for m in runner.poll() if m.line.startswith("GRANDCHILD")) or pids)
    child, grandchild = runner.pid, pids[0]
    assert not _gone(grandchild)
    t0 = time.monotonic()
    runner.cancel()
    assert time.monotonic() - t0 < 1.0  # cancel does not block the GUI
    assert runner.waitForCompletion(20) == RunState.CANCELLED
    assert runner.error is None
    assert _wait_for(lambda: _gone(child) and _gone(grandchild), 10)


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_cancel_escalates_to_sigkill_and_reaches_a_grandchild_in_its_own_session():
    runner = EngineRunner(_child("""
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        grandchild = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        print("GRANDCHILD", grandchild.pid, flush=True)
        time.sleep(60)
    """), env=engine_environment(), grace_s=0.5).start()
    pids = []
    assert _wait_for(lambda: pids.extend(int(m.line.split()[1]) for m in runner.poll() if m.line.startswith("GRANDCHILD")) or pids)
    runner.cancel()
    assert runner.waitForCompletion(20) == RunState.CANCELLED
    assert runner.returncode == -9
    assert _wait_for(lambda: _gone(pids[0]), 10)


def test_wait_times_out_and_runner_starts_once():
    runner = EngineRunner(_child("time.sleep(30)"), env=engine_environment()).start()
    try:
        with pytest.raises(TimeoutError):
            runner.waitForCompletion(0.2)
        with pytest.raises(RuntimeError):
            runner.start()
    finally:
        runner.cancel()
        runner.waitForCompletion(20)


def test_engine_environment_puts_this_segxailib_first():
    env = engine_environment({"PYTHONPATH": "/elsewhere", "HOME": "/h"})
    import SegXAILib

    first = env["PYTHONPATH"].split(os.pathsep)[0]
    assert os.path.samefile(os.path.join(first, "SegXAILib", "__init__.py"), SegXAILib.__file__)
    assert env["PYTHONPATH"].endswith("/elsewhere") and env["HOME"] == "/h" and env["PYTHONUNBUFFERED"] == "1"


def _leaf_fields(cls, prefix=""):
    import dataclasses

    out = []
    for field in dataclasses.fields(cls):
        value = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(value):
            out += _leaf_fields(type(value), f"{prefix}{field.name}.")
        else:
            out.append(prefix + field.name)
    return out


def test_every_request_field_has_a_way_to_the_command_line():
    """A field added to ExplainRequest (or its option classes) must be added to runner.EXPLAIN_FLAGS too."""
    from SegXAILib.runner import EXPLAIN_FLAGS

    table = {path for path, _, _ in EXPLAIN_FLAGS}
    missing = sorted(set(_leaf_fields(ExplainRequest)) - table)
    assert not missing, f"add to SegXAILib.runner.EXPLAIN_FLAGS: {missing}"
    flags = {flag for _, flag, kind in EXPLAIN_FLAGS if kind != "none"}
    parser_flags = {s for a in cli.build_parser()._subparsers._group_actions[0].choices["explain"]._actions for s in a.option_strings}
    assert flags <= parser_flags, f"flags `segxai explain` does not know: {sorted(flags - parser_flags)}"


def test_explain_argv_parses_back_to_the_same_request():
    from SegXAILib.request import CausalOptions, RegionOptions

    request = ExplainRequest(
        images=["t1.nii.gz", "t1c.nii.gz"], models=["fold0.pt", "fold1.pt"], out="/tmp/out", targets=["WT", "1,3"],
        method="region-shap", value="soft-dice", roi_box=[-20.5, 10.0, 3.25, 40.0, -60.125, 90.0], reference="ref.nrrd",
        ground_truth="gt.nii.gz", seed=7, budget=128, device="cpu", baseline="mean", resample=True, overwrite=True,
        clinician_ranking="FLAIR,T2,T1c,T1", batch_size=4,
        model_options=ModelOptions(trust=True, channels=["T1", "T1c"], preprocess="zscore", window=(32, 32, 16), overlap=0.25,
                                   factory="pkg.mod:build", factory_kwargs={"a": 1}, folds=["0", "2"], checkpoint="checkpoint_best.pth",
                                   mirroring=False),
        region=RegionOptions(features="organ", labels="organs.nii.gz", label_names={1: "liver", 2: "spleen"},
                             cell_mm=12.5, mask_share=0.7, top_k=5, estimator="leverage-kernelshap", tolerance=0.02),
        causal=CausalOptions(intervention="baseline", min_samples=4, max_samples=12, mask_share=0.7,
                             components=["encoder.0", "decoder.1"], component_unit="block"))
    argv = explain_argv(request, python="/opt/PythonSlicer")
    assert argv[:4] == ["/opt/PythonSlicer", "-m", "SegXAILib.cli", "explain"] and argv[-2:] == ["--progress", "json"]
    args = cli.build_parser().parse_args(argv[3:])
    assert cli._request(args).to_json() == request.to_json()

    causal = ExplainRequest(images=["a.nii.gz"], models=["m.pt"], out="o", targets=["1"], roi_mask="roi.nii.gz", method="causal",
                            causal=CausalOptions(tolerance=0.03))   # one --tolerance, read by the method in use
    assert cli._request(cli.build_parser().parse_args(explain_argv(causal)[3:])).to_json() == causal.to_json()
    with pytest.raises(ValueError, match="region-shap only"):
        explain_argv(ExplainRequest(images=["a"], models=["m"], out="o", targets=["1"], roi_mask="r", method="causal",
                                    region=RegionOptions(tolerance=0.1)))

    minimal = ExplainRequest(images=["a.nii.gz"], models=["m.pt"], out="o", targets=["1"], roi_mask="roi.nii.gz")
    short = explain_argv(minimal, progress="none")
    assert "--features" not in short and "--trust" not in short  # defaults stay off the command line
    back = cli._request(cli.build_parser().parse_args(short[3:]))
    assert back.to_json() == minimal.to_json()
    with pytest.raises(ValueError, match="6 numbers"):
        explain_argv(ExplainRequest(images=["a"], models=["m"], out="o", targets=["1"], roi_box=[1, 2, 3]))
    with pytest.raises(ValueError, match="model_options.labels"):
        explain_argv(ExplainRequest(images=["a"], models=["m"], out="o", targets=["1"], roi_mask="r",
                                    model_options=ModelOptions(labels={"tumour": 1})))
    with pytest.raises(ValueError, match="exclude each other"):
        explain_argv(ExplainRequest(images=["a"], models=["m"], out="o", targets=["1"], roi_mask="r",
                                    region=RegionOptions(n_players=10, cell_mm=5.0)))
    with pytest.raises(ValueError, match="mask_share"):
        explain_argv(ExplainRequest(images=["a"], models=["m"], out="o", targets=["1"], roi_mask="r",
                                    region=RegionOptions(mask_share=0.5)))
    assert describe_model_argv("m.pt", python="py", trust=True) == ["py", "-m", "SegXAILib.cli", "describe-model", "m.pt", "--json", "--trust"]


def test_real_cli_end_to_end_into_a_scene(blob_case, tmp_path):
    """`segxai explain` in a subprocess, driven by the runner, loaded into a real MRML scene by the adapter."""
    mrml = pytest.importorskip("SegXAILib.mrml_adapter")
    request = ExplainRequest(images=blob_case["images"], models=[blob_case["model"], blob_case["model"]],
                             out=str(tmp_path / "run"), targets=["1"], roi_mask=blob_case["roi"], value="dice", device="cpu")
    runner = EngineRunner(explain_argv(request), env=engine_environment(), cwd=str(tmp_path)).start()
    assert runner.waitForCompletion(120) == RunState.DONE, (runner.error, list(runner.log))
    kinds = [e["event"] for e in runner.events]
    assert kinds[0] == "started" and kinds[-1] == "done" and "progress" in kinds
    assert runner.fraction == 1.0 and os.path.samefile(runner.out_dir, request.out)

    scene = mrml.new_scene()
    loaded = mrml.load_results(scene, runner.out_dir)
    assert len(loaded) == 1
    run = loaded[0]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    table = run.nodes["table"]
    names = mrml.table_column(table, "player")
    assert names == result["ranking"] and set(names) == {"A", "B", "C"}
    values = dict(zip(names, mrml.table_column(table, "value")))
    assert values["A"] == pytest.approx(0.5, abs=1e-6) and values["B"] == pytest.approx(0.5, abs=1e-6)
    assert values["C"] == pytest.approx(0.0, abs=1e-9)
    assert run.parameters()["request"]["models"] == request.models
    assert "segmentation" in run.nodes  # ROI and prediction as segments
