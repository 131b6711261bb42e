"""Region SHAP: exact known answers, cache exactness, estimator convergence, every player kind, bad inputs."""


import io
import json

import numpy as np
import pytest
import torch

from conftest import save_torchscript
from test_contrast_shapley import FarSight
from SegXAILib.cli import main
from SegXAILib.estimators import estimate_shapley
from SegXAILib.evaluator import Evaluator
from SegXAILib.models import load_models
from SegXAILib.players import build_players, support_box
from SegXAILib.progress import EVENT_PREFIX, JsonLinesProgress, parse_event
from SegXAILib.request import ExplainRequest, RegionOptions
from SegXAILib.result import read_result
from SegXAILib.run import run
from SegXAILib.volumes import Geometry, read_volume, write_volume
from SegXAILib.windows import make_grid

SHAPE = (40, 24, 24)


@pytest.fixture
def far_case(tmp_path):
    """FarSight reads channel 1 within 4 voxels; its evidence block lies just outside the ROI."""
    geo = Geometry(SHAPE, np.eye(4))
    evidence = np.zeros(SHAPE, np.float32)
    evidence[8:12, 10:14, 10:14] = 1.0
    images = [str(write_volume(im, geo, tmp_path / f"c{c}.nii.gz")) for c, im in enumerate([np.ones(SHAPE, np.float32), evidence])]
    roi = np.zeros(SHAPE, np.uint8)
    roi[14:30, 4:20, 4:20] = 1
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:14, 8:16, 8:16] = 1      # holds the evidence
    labels[20:28, 2:6, 2:6] = 2       # in the ROI, but channel 1 is zero there: cannot matter
    labels[16:24, 16:22, 16:22] = 3   # in the ROI, likewise
    model = save_torchscript(FarSight(), tmp_path / "far.pt", {"labels": {"bg": 0, "fg": 1}, "window": [16, 16, 16]})
    return {"images": images, "roi": str(write_volume(roi, geo, tmp_path / "roi.nii.gz")), "model": str(model), "geo": geo,
            "labels": str(write_volume(labels, geo, tmp_path / "labels.nii.gz")), "dir": tmp_path}


def _request(case, out, **region):
    return ExplainRequest(images=case["images"], models=[case["model"]], out=str(out), targets=["1"], value="tp",
                          roi_mask=case["roi"], method="region-shap", region=RegionOptions(**region))


def test_labels_players_exact_known_answer(far_case):
    result = read_result(run(_request(far_case, far_case["dir"] / "out", features="labels", labels=far_case["labels"],
                                      label_names={1: "evidence", 2: "quiet", 3: "still"})))
    values = {p["name"]: p["value"] for p in result["players"]}
    assert values["quiet"] == 0.0 and values["still"] == 0.0
    assert values["evidence"] == pytest.approx(result["v_full"] - result["v_empty"], abs=1e-9)  # evidence outside the ROI, found
    assert values["evidence"] > 0
    assert result["estimation"]["exact"] and result["efficiency_gap"] < 1e-9
    assert result["global_mask"]["players"] == ["evidence"]
    out = far_case["dir"] / "out"
    players, geo = read_volume(out / result["maps"]["players"])
    assert not far_case["geo"].differences(geo)
    attribution, _ = read_volume(out / result["maps"]["attribution"])
    evidence_id = next(p["id"] for p in result["players"] if p["name"] == "evidence") + 1
    assert np.allclose(attribution[players == evidence_id], values["evidence"])
    mask, _ = read_volume(out / result["maps"]["mask"])
    assert np.array_equal(mask > 0, players == evidence_id)


@pytest.mark.parametrize("features,extra", [("supervoxel", {"n_players": 10}), ("lattice", {"cell_mm": 8.0})])
def test_generated_players_find_the_evidence(far_case, features, extra):
    result = read_result(run(_request(far_case, far_case["dir"] / features, features=features, **extra)))
    players, _ = read_volume(far_case["dir"] / features / result["maps"]["players"])
    evidence = set(np.unique(players[8:12, 10:14, 10:14]) - 1)
    values = np.array([p["value"] for p in result["players"]])
    total = result["v_full"] - result["v_empty"]
    holding = np.array([p["id"] in evidence for p in result["players"]])
    assert values[holding].sum() == pytest.approx(total, rel=0.05)
    assert np.abs(values[~holding]).max() <= 0.05 * total
    if result["estimation"]["exact"]:
        assert np.all(values[~holding] == 0.0)  # players without evidence cannot matter
    assert result["provenance"]["evaluator"][0]["cache_saving"] > 0.3


def test_memoised_cache_equals_recomputation(far_case):
    model, = load_models([far_case["model"]])
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(size=SHAPE), rng.normal(size=SHAPE)]).astype(np.float32)
    roi = read_volume(far_case["roi"])[0] > 0
    players = build_players("lattice", image, np.ones(3), support_box(make_grid(model.window, SHAPE), roi), cell_mm=6.0)
    coalitions = rng.random((24, players.n)) < 0.5
    coalitions = np.concatenate([coalitions, coalitions[:6]])  # repeats: served from the memo
    args = (model, image, roi, players.ids[None], players.n, np.zeros((1, 1, 1, 1), np.float32), torch.device("cpu"))
    cached = Evaluator(*args)
    fresh = Evaluator(*args, memo_bytes=0)
    grab = lambda z: [z.numpy().copy()]
    got = [cached.evaluate(c[None], grab)[0][0] for c in coalitions]
    want = [fresh.evaluate(c[None], grab)[0][0] for c in coalitions]
    assert max(np.abs(np.asarray(g) - np.asarray(w)).max() for g, w in zip(got, want)) <= 1e-5
    assert cached.stats.window_evaluations < fresh.stats.window_evaluations


def test_estimator_error_shrinks_with_budget(far_case):
    model, = load_models([far_case["model"]])
    rng = np.random.default_rng(1)
    image = np.stack([np.ones(SHAPE), (rng.random(SHAPE) < 0.05)]).astype(np.float32)
    roi = read_volume(far_case["roi"])[0] > 0
    ids = np.minimum(np.indices(SHAPE)[0] // 4, 9)  # ten slabs along i
    ev = Evaluator(model, image, roi, ids[None], 10, np.zeros((1, 1, 1, 1), np.float32), torch.device("cpu"))
    game = lambda c: ev.evaluate(c, lambda z: [float(torch.sigmoid(z[1]).double().sum())])[:, 0]
    exact = estimate_shapley(game, 10, None)
    errors = [np.abs(estimate_shapley(game, 10, b, "kernelshap", seed=3)["values"] - exact["values"]).max() for b in (40, 200, 2 ** 10 - 2)]
    assert errors[2] < errors[1] < errors[0] and errors[2] < 0.01 * np.abs(exact["values"]).max()


def test_player_kinds_respect_organs():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, 30, 30, 20)).astype(np.float32)
    organs = np.zeros((30, 30, 20), np.int32)
    organs[5:15, 5:25, 2:18] = 1
    organs[15:25, 5:25, 2:18] = 2
    box = (slice(0, 30), slice(0, 30), slice(0, 20))
    hybrid = build_players("hybrid", image, np.ones(3), box, n_players=12, labels=organs, label_names={1: "liver", 2: "spleen"})
    for pid in range(hybrid.n):
        assert len(np.unique(organs[hybrid.ids == pid])) == 1  # no supervoxel crosses an organ boundary
    assert {hybrid.organ[i] for i in range(hybrid.n)} == {0, 1, 2} and any(n.startswith("liver") for n in hybrid.names)
    organ = build_players("organ", image, np.ones(3), box, labels=organs, label_names={1: "liver", 2: "spleen"})
    assert organ.names == ["everything else", "liver", "spleen"]
    lattice = build_players("lattice", image, np.full(3, 2.0), box, cell_mm=10.0)
    mean_ml = lattice.volumes().mean() * 8
    assert 0.4 * 1000 < mean_ml < 1.6 * 1000 or lattice.n > 10  # cells of about (10 mm)³, cut at the borders


def test_bad_region_inputs(far_case, capsys):
    base = ["explain", "--image", far_case["images"][0], "--image", far_case["images"][1], "--model", far_case["model"],
            "--roi-mask", far_case["roi"], "--target-label", "1", "--value", "tp", "--method", "region-shap", "--progress", "none"]
    assert main(base + ["--features", "lattice", "--cell-mm", "4", "--budget", "10", "--out", str(far_case["dir"] / "a")]) == 2
    assert "below the" in capsys.readouterr().err
    assert main(base + ["--features", "organ", "--out", str(far_case["dir"] / "b")]) == 2
    assert "--labels" in capsys.readouterr().err
    small = write_volume(np.ones((5, 5, 5), np.uint8), Geometry((5, 5, 5), np.eye(4)), far_case["dir"] / "small.nii.gz")
    assert main(base + ["--features", "labels", "--labels", str(small), "--out", str(far_case["dir"] / "c")]) == 2
    assert "not on the image grid" in capsys.readouterr().err
    empty = write_volume(np.zeros(SHAPE, np.uint8), far_case["geo"], far_case["dir"] / "empty.nii.gz")
    assert main(base + ["--features", "labels", "--labels", str(empty), "--out", str(far_case["dir"] / "d")]) == 2
    assert "No player" in capsys.readouterr().err


def test_anytime_results_stream_and_the_final_folder_is_the_non_streaming_one(far_case):
    """partial/ folders appear (with the coalitions spent) while the estimate runs; the final folder equals a
    non-streaming run with the same seed, with no partial/ left behind."""
    seen = []

    class Recorder(JsonLinesProgress):
        """The CLI's --progress json, also reading each partial folder when it is announced."""

        def event(self, name, **fields):
            super().event(name, **fields)
            line = self.stream.getvalue().splitlines()[-1]
            seen.append((parse_event(line)["event"], json.loads(line[len(EVENT_PREFIX):]), read_result(fields["path"])))

    def request(name):
        return ExplainRequest(images=far_case["images"], models=[far_case["model"]], out=str(far_case["dir"] / name), targets=["1"],
                              value="tp", roi_mask=far_case["roi"], method="region-shap", budget=60, seed=4,
                              region=RegionOptions(features="supervoxel", n_players=8))

    streamed = run(request("streamed"), Recorder(io.StringIO()), partial=True)
    quiet = run(request("quiet"))
    assert seen and all(name == "partial" for name, _, _ in seen)
    for _, fields, doc in seen:
        assert fields["path"] == str(streamed.absolute() / "partial") and set(fields) == {"event", "path", "coalitions", "budget"}
        assert doc["partial"] == {"coalitions": fields["coalitions"], "budget": 60} and fields["coalitions"] <= 60
        assert len(doc["players"]) == len(read_result(quiet)["players"])
    assert not (streamed / "partial").exists()
    assert sorted(p.name for p in streamed.iterdir()) == sorted(p.name for p in quiet.iterdir())
    a, b = read_result(streamed), read_result(quiet)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("provenance", "request")}
    assert strip(a) == strip(b) and not a["estimation"]["exact"] and a["estimation"]["replicates"][0] > 1
    for key in a["maps"].values():
        assert np.array_equal(read_volume(streamed / key)[0], read_volume(quiet / key)[0])


def test_terminal_shows_partial_top_regions_with_no_plus_minus_for_null(tmp_path):
    from SegXAILib.progress import TerminalProgress

    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "result.json").write_text(json.dumps({"top_k": [
        {"name": "sv 3", "value": 0.12, "std_error": None}, {"name": "sv 1", "value": -0.05, "std_error": 0.01}]}))
    stream = io.StringIO()
    TerminalProgress(stream).event("partial", path=str(tmp_path / "partial"), coalitions=40, budget=512)
    line = stream.getvalue().strip()
    assert line.startswith("partial map: 40/512 coalitions; top: sv 3 +0.120, sv 1 -0.050±0.010")
    assert "sv 3 +0.120±" not in line


@pytest.mark.parametrize("estimator", ["window-games", "permutation-cached"])
def test_window_cache_estimators_in_region_shap(far_case, estimator):
    """Region SHAP with the window-cache estimators: window games equal exact enumeration; permutations sum to v(N) − v(∅)."""
    exact = read_result(run(_request(far_case, far_case["dir"] / "exact", features="labels", labels=far_case["labels"])))
    request = _request(far_case, far_case["dir"] / estimator, features="labels", labels=far_case["labels"], estimator=estimator)
    request.budget = 4 * (len(exact["players"]) + 1)
    got = read_result(run(request))
    assert got["estimation"]["estimator"] == estimator
    values, reference = (np.array([p["value"] for p in r["players"]]) for r in (got, exact))
    if estimator == "window-games":
        assert got["estimation"]["exact"] and np.abs(values - reference).max() <= 1e-6
    assert got["efficiency_gap"] < 1e-9
