"""`segxai demo` end to end on a reduced setting: a smaller case, two folds, small region budgets."""

import io
import json
import re
from pathlib import Path

import pytest

from SegXAILib.demo.run_demo import demo_models, run_demo
from SegXAILib.errors import InputError


README = Path(__file__).resolve().parent.parent / "README.md"


def test_demo_shows_what_the_readme_claims(tmp_path):
    """The demo proper (full case, five folds): WT ranks FLAIR first with Kendall τ = +1, ET ranks T1c first, and the
    ranking and agreement lines the README prints are the ones the demo prints."""
    text = io.StringIO()
    run_demo(tmp_path / "demo", stream=text, regions=False)
    printed = text.getvalue()
    wt, et = (json.loads((tmp_path / "demo" / "contrast-shapley" / r / "result.json").read_text()) for r in ("WT", "ET"))
    assert wt["ranking"][0] == "FLAIR" and wt["agreement"]["kendall_tau"] == 1.0
    assert et["ranking"][0] == "T1c"
    block = re.search(r"```text\n(WT: .*?)```", README.read_text(), re.S).group(1)
    claimed = [line.strip() for line in block.splitlines() if re.match(r"\s*(WT|TC|ET):|\s*agreement", line)]
    assert len(claimed) >= 4 and all(line in printed for line in claimed), claimed


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    text = io.StringIO()
    run_demo(out, shape=(64, 72, 64), spacing=3.0, models=demo_models()[:2], stream=text, budget=30, methods=False)
    printed = text.getvalue()
    for region in ("WT", "TC", "ET"):
        result = json.loads((out / "contrast-shapley" / region / "result.json").read_text())
        assert sorted(result["ranking"]) == ["FLAIR", "T1", "T1c", "T2"]
        assert len(result["per_model"]) == 2 and all(m["dice_vs_ground_truth"] is not None for m in result["per_model"])
        assert f"{region}: {' > '.join(result['ranking'])}" in printed
    assert "Kendall tau" in printed and "rank variance" in printed and "Region SHAP, torso CT" in printed
    for name in ("contrast_shapley.png", "case_slice.png", "summary.txt"):
        assert (out / name).stat().st_size > 0
    index = (out / "index.html").read_text()   # a report beside every run, linked from one index page
    links = re.findall(r'href="([^"]+)"', index)
    assert links == ["contrast-shapley/report.html", "region-shap-brain/report.html", "region-shap-ct/report.html"]
    assert all((out / link).stat().st_size > 0 for link in links)
    ct = json.loads((out / "region-shap-ct" / "result.json").read_text())
    assert ct["features"]["kind"] == "organ" and {p["name"] for p in ct["players"]} >= {"liver", "everything else"}
    with pytest.raises(InputError, match="already exists"):
        run_demo(out, regions=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(InputError):
        run_demo(mine, overwrite=True, regions=False)
    assert (mine / "keep.txt").exists()


def test_demo_method_comparison(tmp_path):
    """The demo's causal, gradient and TracIn runs, the deletion-AUC table and the run times."""
    out = tmp_path / "demo"
    text = io.StringIO()
    run_demo(out, shape=(64, 72, 64), spacing=3.0, models=demo_models()[:1], stream=text, budget=30)
    printed = text.getvalue()
    assert "Causal ATE" in printed and "TracIn" in printed and printed.count("MoRF AUC") == 3 and "interaction share" in printed
    assert json.loads((out / "tracin-brain" / "result.json").read_text())["proponents"]
    for folder in ("region-shap-brain", "causal-brain", "gradients-brain"):
        ev = json.loads((out / folder / "evaluation.json").read_text())
        assert ev["value_function"] == "soft-dice"   # one value for all three, so the AUCs compare
        assert ev["deletion_morf"]["auc"] < ev["deletion_lerf"]["auc"], folder   # each map ranks what matters first
    shap = json.loads((out / "region-shap-brain" / "evaluation.json").read_text())
    assert shap["n_units"] == 8 and f"{shap['interactions']['share']:+.3f}" in printed
    times = next(line for line in printed.splitlines() if line.startswith("Run times:"))
    assert all(name in times for name in ("contrast Shapley", "causal ATE", "integrated gradients", "TracIn"))
