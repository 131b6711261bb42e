"""`segxai cohort` end to end on real Dask clusters (worker processes on 127.0.0.1): a CSV-given cohort with a known
answer and a failing case, and a demo cohort that is interrupted, resumed, and loses a worker mid-run."""

import json
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from SegXAILib.cli import main
from SegXAILib.cohort.cases import read_cases
from SegXAILib.cohort.cli import DEFAULT_ARCHITECTURE, architectures
from SegXAILib.cohort.pipeline import run_cohort
from SegXAILib.demo.cohort import write_demo_cohort
from SegXAILib.demo.run_demo import demo_models
from SegXAILib.errors import Cancelled, InputError
from SegXAILib.models import ModelOptions
from SegXAILib.request import ExplainRequest
from SegXAILib.volumes import write_volume


def test_csv_cohort_known_answer_failure_recorded_and_retried(blob_case, capsys):
    d = blob_case["dir"]
    corner = np.zeros(blob_case["geometry"].shape, np.uint8)
    corner[:3, :3, :3] = 1                               # the model segments nothing here: 'dice' has nothing to measure
    write_volume(corner, blob_case["geometry"], d / "corner.nii.gz")
    images = {f"image_{n}": [p] * 3 for n, p in zip("ABC", blob_case["images"])}
    pd.DataFrame({"case_id": ["a", "b", "bad"], **images, "roi_mask": ["roi.nii.gz", "", "corner.nii.gz"],
                  "ground_truth": ["truth.nii.gz"] * 3, "site": ["x", "y", "x"]}).to_csv(d / "cases.csv", index=False)
    out = d / "cohort"
    args = ["cohort", "--cases", str(d / "cases.csv"), "--out", str(out), "--model", blob_case["model"], "--workers", "2",
            "--target-label", "1", "--clinician-ranking", "A,B,C", "--bootstrap", "200", "--progress", "json"]
    assert main(args) == 1                              # one case failed; the others are done
    err = capsys.readouterr().err
    events = [json.loads(line.split(" ", 1)[1]) for line in err.splitlines() if line.startswith("SEGXAI_EVENT")]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["done"] == 3 and progress[-1]["failed"] == 1 and progress[-1]["remaining"] == 0
    assert progress[-1]["stage"] == "cohort" and progress[-1]["eta_s"] == 0 and events[-1]["event"] == "done"

    table = pd.read_csv(out / "cohort.csv")
    assert sorted(table.case_id) == ["a", "b"] and list(table.site) == ["x", "y"]
    # the Shapley axioms fix the answer: the two channels the model sums share the Dice, the noise channel gets 0
    assert np.allclose(table[["shapley_A", "shapley_B", "shapley_C"]], [[0.5, 0.5, 0.0]] * 2, atol=1e-6)
    assert (table.dice > 0.8).all() and table.kendall_tau.notna().all()
    b = json.loads((out / "cases" / "b" / "model" / "result.json").read_text())
    assert b["request"]["roi_box"] is not None and b["request"]["roi_mask"] is None     # the box around the ground truth
    failure = json.loads((out / "failures" / "bad__model.json").read_text())
    assert "no voxel inside the ROI" in failure["error"] and failure["kind"] == "InputError"
    doc = json.loads((out / "cohort.json").read_text())
    assert doc["n_cases"] == 2 and [f["case_id"] for f in doc["failures"]] == ["bad"]
    region = next(iter(doc["statistics"]["model"].values()))
    assert region["n_cases"] == 2 and region["top_contrast"]
    html = (out / "cohort.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "no voxel inside the ROI" in html

    # a re-run skips the finished cases and retries the failed one
    assert main(args) == 1
    doc = json.loads((out / "cohort.json").read_text())
    assert doc["run"]["skipped"] == 2 and doc["run"]["computed"] == 0 and [o["case_id"] for o in doc["outcomes"]] == ["bad"]


def test_cases_table_errors_name_the_problem(tmp_path):
    (tmp_path / "cases.csv").write_text("case_id,image_T1,ground_truth\nx,missing.nii.gz,gt.nii.gz\n")
    with pytest.raises(InputError, match="do not exist"):
        read_cases(tmp_path / "cases.csv", None)
    (tmp_path / "cases.csv").write_text("id,T1\nx,a.nii\n")
    with pytest.raises(InputError, match="case_id column"):
        read_cases(tmp_path, None)


def test_default_architecture_is_the_five_demo_folds():
    class Args:
        models = model = None

    archs, trusted = architectures(Args())
    assert trusted and list(archs) == [DEFAULT_ARCHITECTURE] and len(archs[DEFAULT_ARCHITECTURE]) == 5


def _kill_a_busy_worker(client, killed: list, stop: threading.Event) -> None:
    """Waits until a worker is running a case, lets it work a moment, then SIGKILLs that worker's process."""
    pids = client.run(os.getpid)
    while not stop.is_set():
        busy = [w for w, tasks in client.processing().items() if tasks]
        if busy:
            time.sleep(1.0)
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(pids[busy[0]])
            return
        time.sleep(0.05)


def _executing(dask_worker) -> int:
    return dask_worker.state.executing_count


def _listening_addresses(pids) -> set[str]:
    import psutil

    return {c.laddr.ip for pid in pids for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}


def test_demo_cohort_on_two_workers_survives_interruption_and_a_killed_worker(tmp_path):
    from distributed import Client, LocalCluster

    n = 5   # at the first progress event at most 2 cases are done and 2 still run (2 one-thread workers): some are left
    cases = read_cases(write_demo_cohort(n, tmp_path / "cases", crop=64), None)
    archs = {"unet": [str(p) for p in demo_models()[:2]]}
    template = ExplainRequest(images=[], models=[], out="", targets=["WT", "ET"], model_options=ModelOptions(trust=True))
    out = tmp_path / "cohort"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        # an interruption: cancelled as soon as the first case is in
        cancel = threading.Event()
        with pytest.raises(Cancelled):
            run_cohort(cases, archs, template, out, scheduler=cluster.scheduler_address, n_resamples=100, cancel=cancel,
                       on_event=lambda e: e["event"] == "cohort-progress" and cancel.set())
        while sum(client.run(_executing).values()):      # cases already running on a worker still finish, atomically
            time.sleep(0.2)
        assert _listening_addresses([os.getpid(), *client.run(os.getpid).values()]) == {"127.0.0.1"}
        first = {p.parent.parent.name: p.stat().st_mtime_ns for p in (out / "cases").glob("*/unet/index.json")}
        assert 1 <= len(first) < n

        # the resumed run computes only the missing cases, while one worker is killed under it
        killed, stop = [], threading.Event()
        killer = threading.Thread(target=_kill_a_busy_worker, args=(client, killed, stop))
        killer.start()
        events = []
        doc = run_cohort(cases, archs, template, out, scheduler=cluster.scheduler_address, n_resamples=100, on_event=events.append)
        stop.set()
        killer.join()
    assert killed, "no worker was killed mid-run"
    assert doc["run"]["skipped"] == len(first) and doc["run"]["computed"] == n - len(first) and not doc["failures"], doc["outcomes"]
    assert sorted(o["case_id"] for o in doc["outcomes"]) == sorted(set(c.case_id for c in cases) - set(first))
    assert {p.parent.parent.name: p.stat().st_mtime_ns for p in (out / "cases").glob("*/unet/index.json")
            if p.parent.parent.name in first} == first
    assert events[-1]["event"] == "cohort-done" and events[-1]["done"] == n
    table = pd.read_csv(out / "cohort.csv")
    assert len(table) == 2 * n and set(table.region) == {"WT", "ET"} and table.dice.between(0, 1).all()
    assert {"difficulty", "noise", "defect"} <= set(table.columns)
    doc = json.loads((out / "cohort.json").read_text())
    assert set(doc["statistics"]["unet"]) == {"WT", "ET"} and doc["n_cases"] == n
    # models load once per worker process, not once per case
    loads = [o for o in doc["outcomes"] if o.get("models_loaded")]
    assert len(loads) <= len({o["pid"] for o in doc["outcomes"]})


def test_folder_layout_lists_cases_by_channel_name(blob_case, tmp_path):
    import shutil

    root = tmp_path / "layout"
    for name in ("p1", "p2"):
        (root / name).mkdir(parents=True)
        for channel, image in zip("ABC", blob_case["images"]):
            shutil.copy(image, root / name / f"{channel}.nii.gz")
        shutil.copy(blob_case["truth"], root / name / "labels.nii.gz")
    shutil.copy(blob_case["roi"], root / "p2" / "roi.nii.gz")
    cases = read_cases(root, ["A", "B", "C"])
    assert [c.case_id for c in cases] == ["p1", "p2"] and cases[0].roi_mask is None and cases[1].roi_mask.endswith("roi.nii.gz")
    assert [p.rsplit("/", 1)[1] for p in cases[0].images] == ["A.nii.gz", "B.nii.gz", "C.nii.gz"]
    with pytest.raises(InputError, match="channel names are unknown"):
        read_cases(root, None)
    with pytest.raises(InputError, match="lacks"):
        read_cases(root, ["A", "B", "D"])
