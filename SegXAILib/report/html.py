"""Self-contained HTML pages: Jinja2 templates (autoescaped) and images embedded as data URIs.

Reusable by every SegXAI page (single result, demo index, cohort): `render(template, **context)` renders a
template from any of `SEARCH_PATH` (this package's `templates/`, plus folders a caller adds) that extends
`base.html.j2`; `png_uri(...)` / `figure_uri(fig)` / `file_uri(path)` turn pictures into `data:` URIs so the file
opens offline with nothing beside it; `write_page(path, template, **context)` writes it atomically.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).resolve().parent / "templates"


def environment(*extra_dirs: str | Path) -> Environment:
    """Templates from `extra_dirs` first, then SegXAI's own (base.html.j2 and its styles); undefined names fail."""
    loaders = [FileSystemLoader(str(d)) for d in extra_dirs] + [FileSystemLoader(str(TEMPLATES))]
    env = Environment(loader=ChoiceLoader(loaders), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    env.filters["interval"] = interval
    return env


def number(value, digits: int = 3, signed: bool = True) -> str:
    """A table number: 3 significant digits, signed unless told, '—' for none."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (int, float, np.floating, np.integer)):
        return f"{float(value):{'+' if signed else ''}.{digits}g}"
    return str(value)


def interval(bounds, digits: int = 3, signed: bool = True) -> str:
    """A confidence interval as '[low, high]' in `number`'s format, '' for none (the value beside it says '—')."""
    return "" if not bounds else f"[{number(bounds[0], digits, signed)}, {number(bounds[1], digits, signed)}]"


def render(template: str, *extra_dirs: str | Path, **context) -> str:
    return environment(*extra_dirs).get_template(template).render(**context)


def write_page(path: str | Path, template: str, *extra_dirs: str | Path, **context) -> Path:
    """Renders and writes the page atomically (a half-written report never replaces a whole one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(template, *extra_dirs, **context), encoding="utf-8")
    os.replace(tmp, path)
    return path


def png_uri(rgb: np.ndarray) -> str:
    """An (rows, cols, 3|4) float array in [0, 1] (or uint8) as a PNG data URI, pixel for pixel."""
    from PIL import Image

    array = np.asarray(rgb)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array * 255), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_uri(fig, dpi: int = 110) -> str:
    """A matplotlib figure as a PNG data URI; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_uri(path: str | Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
