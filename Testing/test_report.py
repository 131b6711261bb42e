"""`segxai report`: one self-contained HTML page per result folder, checked in the system Chromium as a reader sees it."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from browser import page, screenshot_array
from SegXAILib.cli import main
from SegXAILib.colormap import TRANSPARENT_BAND, diverging_table, symmetric_range
from SegXAILib.errors import InputError
from SegXAILib.report import write_report
from SegXAILib.report.page import player_rows
from SegXAILib.result import read_result
from SegXAILib.volumes import read_volume


@pytest.fixture(scope="module")
def reports(method_results):
    return {method: write_report(folder) for method, folder in method_results.items()}


def test_every_method_report_loads_offline_with_its_table(reports, method_results):
    with page() as pg:
        for method, path in reports.items():
            html = path.read_text()
            # self-contained: no script, stylesheet, font or image fetched from anywhere
            assert not re.search(r"<script|<link|@import|url\(", html), method
            assert all(src.startswith("data:image/") for src in re.findall(r'src="([^"]*)"', html)), method
            assert path.stat().st_size < 3_000_000
            pg.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:")) else route.continue_())
            pg.goto(path.as_uri())
            assert pg.console_errors == [], (method, pg.console_errors)
            result = read_result(method_results[method])
            shown = pg.locator("table.players tbody tr").evaluate_all("rows => rows.map(r => r.dataset.player)")
            assert shown == [p["name"] for p in sorted(result["players"], key=lambda p: result["ranking"].index(p["name"]))]
            assert pg.locator("img").evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
            text = pg.locator("body").inner_text()
            assert result["provenance"]["models"][0]["sha256"] in text and "seed" in text
        # method-specific content
        pg.goto(reports["tracin"].as_uri())
        tracin = read_result(method_results["tracin"])
        assert pg.locator("img.thumbnails").count() == 1
        assert pg.locator("table.influence tbody tr td:nth-child(3)").all_inner_texts() == \
            [c["id"] for c in tracin["proponents"] + tracin["opponents"]]
        pg.goto(reports["contrast-shapley"].as_uri())
        assert pg.locator("table.folds tbody tr").count() == 2 and "Kendall" in pg.locator("body").inner_text()


def test_axial_view_colours_the_top_region_and_nothing_outside_the_support(reports, method_results):
    """The report's axial slice through the top region, pixel by pixel against the maps: the overlay's colour (red for
    a positive value, blue for a negative one) inside the region; plain grey where the attribution is zero."""
    folder = method_results["region-shap"]
    result = read_result(folder)
    attribution, geometry = read_volume(folder / "attribution.nii.gz")
    players, _ = read_volume(folder / "players.nii.gz")
    assert np.allclose(geometry.affine[:3, :3], np.diag(np.diag(geometry.affine[:3, :3]))) and (np.diag(geometry.affine) > 0).all()
    top_player = max(result["top_k"], key=lambda p: abs(p["value"]))
    with page() as pg:
        pg.goto(reports["region-shap"].as_uri())
        first = pg.locator(".slice-set").first
        assert first.get_attribute("data-region") == top_player["name"]
        img = first.locator('img[data-view="axial"]')
        k = int(img.get_attribute("data-index"))
        sr, sc = map(int, img.get_attribute("data-scale").split())
        shot = screenshot_array(img).astype(int)
    nx, ny = attribution.shape[:2]
    assert abs(shot.shape[0] - ny * sr) <= 1 and abs(shot.shape[1] - nx * sc) <= 1   # ±1: a fractional page position
    # the axial view as Slicer shows it: patient right (high i) on the left, anterior (high j) at the top
    centre = lambda i, j: shot[(ny - 1 - j) * sr + sr // 2, (nx - 1 - i) * sc + sc // 2]
    region = players[:, :, k] == top_player["id"] + 1
    inner = region.copy()
    inner[1:-1, 1:-1] &= region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
    inner[[0, -1], :] = inner[:, [0, -1]] = False
    assert inner.sum() >= 4
    sign = np.sign(top_player["value"])
    for i, j in np.argwhere(inner):
        r, g, b = centre(i, j)
        assert sign * (r - b) > 30, (i, j, r, g, b)   # clearly red (for) or blue (against)
    outside = np.argwhere(attribution[:, :, k] == 0)
    assert len(outside) > 20
    for i, j in outside:
        r, g, b = centre(i, j)
        assert max(r, g, b) - min(r, g, b) <= 2, (i, j, r, g, b)   # untinted grey


def test_error_bars_only_where_the_standard_error_is_given(method_results, tmp_path):
    region = method_results["region-shap"]
    rows = player_rows(read_result(region))
    assert all(r["err_low"] is not None and r["err_label"] == "± standard error" for r in rows)
    contrast = player_rows(read_result(method_results["contrast-shapley"]))
    assert all(r["err_low"] is None and r["pm"].startswith("s.d.") for r in contrast)   # fold spread: shown, never a bar
    uncalibrated = tmp_path / "uncalibrated"
    shutil.copytree(region, uncalibrated)
    doc = json.loads((uncalibrated / "result.json").read_text())
    for p in doc["players"]:
        p["std_error"] = None
    (uncalibrated / "result.json").write_text(json.dumps(doc))
    assert all(r["err_low"] is None for r in player_rows(doc))
    text = write_report(uncalibrated).read_text()
    assert "No error bars" in text and "± standard error" not in text


def test_colour_map_is_the_slicer_panels(tmp_path):
    """The MRML colour table the Slicer panel uses is the report's table, entry for entry."""
    from SegXAILib.mrml_adapter import diverging_color_node, new_scene

    node = diverging_color_node(new_scene(tmp_path / "cache"))
    table = diverging_table()
    assert node.GetNumberOfColors() == len(table)
    for i in (0, 64, 127, 128, 200, 255):
        rgba = [0.0] * 4
        node.GetColor(i, rgba)
        assert np.allclose(rgba, table[i], atol=1 / 255)   # MRML keeps 8-bit colours
    assert symmetric_range(np.array([-0.5, 0.2, np.nan])) == 0.5
    assert table[len(table) // 2, 3] == 0 and TRANSPARENT_BAND > 0


def test_command_line_report_and_explain_report(method_results, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(method_results["gradients"]), "--out", str(out)]) == 0
    assert out.exists() and "Report written to" in capsys.readouterr().out
    request = read_result(method_results["contrast-shapley"])["request"]
    args = ["explain", "--method", "contrast-shapley", "--target-label", "1", "--roi-mask", request["roi_mask"], "--out",
            str(tmp_path / "run"), "--report", "--progress", "none", "--device", "cpu"]
    for image in request["images"]:
        args += ["--image", image]
    assert main(args + ["--model", request["models"][0]]) == 0
    page_text = (tmp_path / "run" / "report.html").read_text()
    assert 'data-target="1"' in page_text and page_text.count('<tr class="') == 3   # the three channels A, B, C
    assert main(["report", str(tmp_path / "nothing")]) == 2
    with pytest.raises(InputError, match="not a SegXAI result folder"):
        write_report(tmp_path / "nothing")
