"""The README's pictures of the report and the viewer on the demo's region SHAP run, taken with the system Chromium.

    python scripts/readme_screenshots.py demo-output      # after `segxai demo --out demo-output`
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Testing"))

from browser import page  # noqa: E402  (the tests' launcher: system Chromium, the guide's flags)

RUN = "region-shap-brain"


def report_picture(demo: Path, out: Path) -> None:
    from SegXAILib.report import write_report

    report = write_report(demo / RUN)
    with page(1200, 1500) as pg:
        pg.goto(report.as_uri())
        pg.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 1200, "height": 1500})


def viewer_picture(demo: Path, out: Path) -> None:
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW=os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow"))
    server = subprocess.Popen([sys.executable, "-m", "SegXAILib.cli", "view", str(demo / RUN), "--port", "0", "--exit-after", "300"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = None
        while url is None and server.poll() is None:
            found = re.search(r"(http://127\.0\.0\.1:\d+/\S*)", server.stdout.readline())
            url = found.group(1) if found else None
        with page(1500, 900) as pg:
            pg.goto(url)
            pg.locator("tr.player").first.click()
            pg.wait_for_function("document.querySelector('#jumped').textContent.includes('RAS')")
            time.sleep(5)   # let every view render after the jump
            pg.screenshot(path=str(out))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    demo = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output")
    report_picture(demo, ROOT / "docs" / "report_demo.png")
    viewer_picture(demo, ROOT / "docs" / "viewer_demo.png")
