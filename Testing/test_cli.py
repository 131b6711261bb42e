"""`segxai` end to end: results, machine-readable events, exit codes and every bad-input message."""

import json
import subprocess
import sys

import numpy as np
import pytest

from SegXAILib.cli import main
from SegXAILib.progress import parse_event
from SegXAILib.volumes import Geometry, write_volume


def _args(case, out, *extra):
    args = ["explain"]
    for p in case["images"]:
        args += ["--image", p]
    return args + ["--model", case["model"], "--roi-mask", case["roi"], "--target-label", "1", "--out", str(out), "--progress", "none", *extra]


def test_explain_writes_result_and_json_events(blob_case, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "SegXAILib.cli", *_args(blob_case, out)[:-2], "--progress", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [e for e in map(parse_event, done.stderr.splitlines()) if e]
    assert events[0]["event"] == "started" and events[-1] == {"event": "done", "out": str(out)}
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"]
    result = json.loads((out / "result.json").read_text())
    assert result["schema"] == "segxai.result/1" and result["method"] == "contrast-shapley"
    assert result["request"]["targets"] == ["1"]


def test_never_overwrites(blob_case, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(blob_case, out)) == 0
    stamp = (out / "result.json").read_text()
    assert main(_args(blob_case, out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "result.json").read_text() == stamp
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    assert main(_args(blob_case, user, "--overwrite")) == 2
    assert (user / "notes.txt").read_text() == "keep me"
    assert main(_args(blob_case, out, "--overwrite", "--value", "soft-dice")) == 0
    assert json.loads((out / "result.json").read_text())["value_function"] == "soft-dice"


def _bad(case, tmp_path, name, **files):
    """A copy of the case arguments with one input replaced."""
    args = _args(case, tmp_path / f"out_{name}")
    for flag, value in files.items():
        flag = "--" + flag.replace("_", "-")
        if flag == "--image":
            idx = args.index("--image")
            args[idx + 1] = value
        else:
            args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize("name,make,code,words", [
    ("shifted", lambda g: dict(image=("shift", np.ones(g.shape, np.float32))), 2, "origin"),
    ("nan", lambda g: dict(image=("nan", np.full(g.shape, np.nan, np.float32))), 2, "NaN"),
    ("empty_roi", lambda g: dict(roi_mask=("zero", np.zeros(g.shape, np.uint8))), 2, "no nonzero voxel"),
    ("roi_grid", lambda g: dict(roi_mask=("small", np.ones((5, 5, 5), np.uint8))), 2, "not on the image grid"),
    ("empty_reference", lambda g: dict(reference=("zero", np.zeros(g.shape, np.uint8))), 2, "has no voxel inside the ROI"),
])
def test_bad_inputs(blob_case, tmp_path, capsys, name, make, code, words):
    geo = blob_case["geometry"]
    (key, (kind, array)), = make(geo).items()
    target = geo
    if kind == "shift":
        a = geo.affine.copy()
        a[:3, 3] += 3.0
        target = Geometry(geo.shape, a)
    elif kind == "small":
        target = Geometry(array.shape, geo.affine)
    path = str(write_volume(array, target, tmp_path / f"{name}.nii.gz"))
    args = _args(blob_case, tmp_path / f"out_{name}")
    if key == "reference":
        args += ["--reference", path]
    else:
        args = _bad(blob_case, tmp_path, name, **{key: path})
    assert main(args) == code
    err = capsys.readouterr().err
    assert words in err and "Fix:" in err
    assert not (tmp_path / f"out_{name}").exists()


def test_resample_is_explicit(blob_case, tmp_path, capsys):
    geo = blob_case["geometry"]
    a = geo.affine.copy()
    a[:3, 3] += 0.5
    shifted = str(write_volume(np.zeros(geo.shape, np.float32), Geometry(geo.shape, a), tmp_path / "shifted.nii.gz"))
    args = _bad(blob_case, tmp_path, "resampled", image=shifted)
    assert main(args) == 2
    assert "--resample" in capsys.readouterr().err
    assert main(args + ["--resample"]) == 0


def test_channel_count_roi_box_and_model_errors(blob_case, tmp_path, capsys):
    two = _args(blob_case, tmp_path / "o1")
    del two[two.index("--image", 2):two.index("--image", 2) + 2]
    assert main(two) == 2
    assert "3 input channels" in capsys.readouterr().err
    box = _args(blob_case, tmp_path / "o2")
    i = box.index("--roi-mask")
    box[i:i + 2] = ["--roi-box", "500", "500", "500", "600", "600", "600"]
    assert main(box) == 2
    assert "outside the image" in capsys.readouterr().err
    pickled = tmp_path / "pickled.pt"
    import torch
    from conftest import ThresholdSum

    torch.save(ThresholdSum([1.0, 1.0, 0.0], 1.5), str(pickled))
    args = _args(blob_case, tmp_path / "o3")
    args[args.index("--model") + 1] = str(pickled)
    assert main(args) == 3
    assert "--trust" in capsys.readouterr().err
    assert main(args + ["--trust"]) == 0
    wrong = _args(blob_case, tmp_path / "o4")
    wrong[wrong.index("--target-label") + 1] = "7"
    assert main(wrong) == 2
    assert "foreground labels are 1..1" in capsys.readouterr().err


def test_describe_model_json(blob_case, capsys):
    assert main(["describe-model", blob_case["model"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["channels"] == ["A", "B", "C"] and info["labels"] == {"background": 0, "blob": 1}
