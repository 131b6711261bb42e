"""The system Chromium under Playwright, with the flags the developers' guide gives (never `playwright install`)."""

from __future__ import annotations

import contextlib
import os
import shutil

import numpy as np

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def chromium_path() -> str:
    path = os.environ.get("SEGXAI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        raise RuntimeError(f"No Chromium at {path}: install it (apt-get install -y chromium) or set SEGXAI_CHROMIUM.")
    return path


@contextlib.contextmanager
def page(width: int = 1400, height: int = 900):
    """A fresh page; `page.console_errors` collects the console's error messages."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            pg = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            pg.console_errors = []
            pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
            pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
            yield pg
        finally:
            browser.close()


def screenshot_array(locator) -> np.ndarray:
    """An element's screenshot as an (rows, cols, 3) uint8 array."""
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"))
