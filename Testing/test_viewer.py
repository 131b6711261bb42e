"""`segxai view`: the trame-slicer app in the system Chromium, driven as a person would, on a real server process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from browser import page, screenshot_array
from SegXAILib.result import read_result

STARTUP_S = 180   # a bounded wait for the server to print its URL (a loaded 2-core machine is slow to import VTK)


@pytest.fixture
def server(method_results):
    """`segxai view` on the region SHAP result, on a free port of 127.0.0.1, stopping itself after a while."""
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW=os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow"))
    process = subprocess.Popen([sys.executable, "-m", "SegXAILib.cli", "view", str(method_results["region-shap"]), "--port", "0",
                                "--exit-after", "400"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    url, deadline = None, time.monotonic() + STARTUP_S
    while url is None and time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/\S*)", line)
        url = found.group(1) if found else None
    try:
        assert url, "segxai view printed no URL"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _tinted(rgb) -> int:
    return int(max(rgb) - min(rgb))


def test_viewer_table_jump_and_overlay(server, method_results):
    result = read_result(method_results["region-shap"])
    top = max(result["players"], key=lambda p: abs(p["value"]))
    with page() as pg:
        with pg.expect_websocket(timeout=120_000) as ws:
            pg.goto(server)
        assert ws.value.url.startswith("ws://127.0.0.1:")
        rows = pg.locator("tr.player")
        rows.first.wait_for(timeout=120_000)   # the rows arrive over the websocket
        assert rows.evaluate_all("rs => rs.map(r => r.dataset.player)") == result["ranking"]
        pg.locator(f'tr.player[data-player="{top["name"]}"]').click()
        pg.wait_for_function("name => document.querySelector('#jumped').textContent.startsWith(name + ' at RAS')", arg=top["name"],
                             timeout=60_000)
        views = pg.locator("img.image-display-area")
        assert views.count() == 4   # three slice views and the 3D view
        axial = views.first
        # the view re-renders after the jump: wait until its centre shows the region's colour (bounded)
        sign = np.sign(top["value"])
        shot = screenshot_array(axial).astype(int)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shot = screenshot_array(axial).astype(int)
            r, g, b = shot[shot.shape[0] // 2, shot.shape[1] // 2]
            if sign * (r - b) > 30:
                break
            pg.wait_for_timeout(500)
        r, g, b = shot[shot.shape[0] // 2, shot.shape[1] // 2]
        assert sign * (r - b) > 30, (r, g, b)   # the top region, centred by the jump, in red (for) or blue (against)
        for corner in (shot[3, 3], shot[3, -4], shot[-4, 3], shot[-4, -4]):
            assert _tinted(corner) <= 3, corner   # outside the case and its support: no overlay colour
        # the opacity control: at 0 neither the overlay nor the regions tint the view
        slider = pg.locator('input[name="opacity"]')
        slider.locator("xpath=ancestor::div[contains(@class, 'v-input')][1]").locator(".v-slider-thumb").focus()
        pg.keyboard.press("Home")
        assert slider.input_value() == "0"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _tinted(screenshot_array(axial)[shot.shape[0] // 2, shot.shape[1] // 2]) > 3:
            pg.wait_for_timeout(500)
        assert _tinted(screenshot_array(axial)[shot.shape[0] // 2, shot.shape[1] // 2]) <= 3
        assert pg.console_errors == [], pg.console_errors


def test_view_needs_a_folder_and_says_how(tmp_path, capsys):
    from SegXAILib.cli import main

    assert main(["view"]) == 2 and "--demo" in capsys.readouterr().err
    assert main(["view", "--demo", str(tmp_path)]) == 2 and "segxai demo --out" in capsys.readouterr().err
