"""`segxai report RESULT_DIR`: one self-contained HTML page per result folder, built from the folder's contract alone
(result.json, its maps, evaluation.json, thumbnails, and the case images its `request` names)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..colormap import symmetric_range
from ..errors import InputError
from ..result import INDEX_FILE, RESULT_FILE, read_result
from ..volumes import read_volume
from . import charts
from .html import file_uri, interval, png_uri, write_page
from .slices import VIEWS, Oriented, compose, pixel_scale, region_centre, view_axis, view_plane

REPORT_FILE = "report.html"
N_SLICE_REGIONS = 3


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) else None


def uncertainty_of(player: dict, n_models: int) -> dict:
    """What the ± of a player is, calibrated error bars first: the estimator's standard error where it is not null,
    the causal 95 % interval, else (several models) the spread across folds, which is shown but never as a bar."""
    value = float(player["value"])
    se, low, high = _number(player.get("std_error")), _number(player.get("ci_low")), _number(player.get("ci_high"))
    if se is not None:
        return {"err_low": value - se, "err_high": value + se, "err_label": "± standard error", "pm": f"±{se:.3g}"}
    if low is not None and high is not None:
        return {"err_low": low, "err_high": high, "err_label": "95 % interval", "pm": interval((low, high))}
    std = _number(player.get("std"))
    if n_models > 1 and std is not None:
        return {"err_low": None, "pm": f"s.d. {std:.3g}"}
    return {"err_low": None, "pm": "—"}


def player_rows(result: dict) -> list[dict]:
    """Every player in ranking order with its value, ±, volume, and whether it is in the top-k list."""
    players = {p["name"]: p for p in result.get("players") or []}
    names = [n for n in result.get("ranking") or [] if n in players] + [n for n in players if n not in (result.get("ranking") or [])]
    top = {p["name"] for p in result.get("top_k") or []}
    n_models = len(result.get("per_model") or []) or max((len(p.get("per_model") or []) for p in players.values()), default=1)
    rows = []
    for rank, name in enumerate(names, 1):
        p = players[name]
        rows.append({"rank": rank, "name": name, "id": p.get("id"), "value": float(p["value"]), "volume_ml": _number(p.get("volume_ml")),
                     "per_model": [float(v) for v in p.get("per_model") or []], "top": name in top,
                     **uncertainty_of(p, n_models)})
    return rows


def _volume(folder: Path, result: dict, key: str):
    name = (result.get("maps") or {}).get(key)
    return read_volume(folder / name) if name and (folder / name).exists() else (None, None)


def _background(result: dict, shape) -> tuple[np.ndarray | None, str | None]:
    """The first input image the request names, when it is still there and on the maps' grid."""
    images = (result.get("request") or {}).get("images") or []
    channels = (result.get("provenance") or {}).get("channel_names") or []
    if images and Path(images[0]).exists():
        array, _ = read_volume(images[0])
        array = array[..., 0] if array.ndim == 4 else array
        if shape is None or tuple(array.shape) == tuple(shape):
            return array, (channels[0] if channels else Path(images[0]).name)
    return None, None


def slice_sets(folder: Path, result: dict) -> tuple[list[dict], float | None, str | None]:
    """Three orientations through each of the top regions (or the attribution peak, or the ROI centre)."""
    attribution, geometry = _volume(folder, result, "attribution")
    players, pgeo = _volume(folder, result, "players")
    roi, rgeo = _volume(folder, result, "roi")
    prediction, qgeo = _volume(folder, result, "prediction")
    geometry = geometry or pgeo or rgeo or qgeo
    if geometry is None:
        return [], None, None
    shape = geometry.shape
    image, image_name = _background(result, shape)
    top = symmetric_range(attribution) if attribution is not None else None
    centres = []
    if players is not None:
        by_value = sorted(result.get("top_k") or result.get("players") or [], key=lambda p: -abs(float(p["value"])))
        for p in by_value[:N_SLICE_REGIONS]:
            region = players == int(p["id"]) + 1
            if region.any():
                centres.append((f"{p['name']} ({float(p['value']):+.3g})", region_centre(region), region, p["name"]))
    elif attribution is not None:
        centres.append(("peak |attribution|", np.array(np.unravel_index(np.argmax(np.abs(attribution)), shape)), None, None))
    elif roi is not None:
        centres.append(("ROI centre", region_centre(roi != 0), None, None))
    orient = Oriented.of(geometry)
    o = {k: (orient(v) if v is not None else None) for k, v in (("image", image), ("attribution", attribution), ("roi", roi),
                                                                   ("prediction", prediction))}
    roi_o = o["roi"] != 0 if o["roi"] is not None else None
    pred_o = o["prediction"] >= 0.5 if o["prediction"] is not None else None
    sets = []
    for title, centre, region, name in centres:
        ras = orient.ras_index(centre, shape)
        region_o = orient(region) if region is not None else None
        views = []
        for view in VIEWS:
            index = int(ras[view_axis(view)])
            planes = [view_plane(v, view, index) if v is not None else None for v in (o["image"], o["attribution"], roi_o, pred_o, region_o)]
            scale = pixel_scale(orient.spacing, view)
            rgb = compose(*planes[:2], top or 1.0, *planes[2:], scale)
            views.append({"view": view, "index": index, "uri": png_uri(rgb), "width": rgb.shape[1], "height": rgb.shape[0],
                          "scale": scale})
        sets.append({"title": title, "region": name, "views": views})
    return sets, top, image_name


def target_section(folder: Path) -> dict:
    """Everything the template shows for one target's result folder."""
    result = read_result(folder)
    rows = player_rows(result)
    value_label = f"{result.get('method', '')} ({result.get('value_function', '')})"
    sets, top, image_name = slice_sets(folder, result)
    evaluation = json.loads((folder / "evaluation.json").read_text()) if (folder / "evaluation.json").exists() else None
    thumbnails = result.get("thumbnails") or {}
    thumb_file = folder / thumbnails["file"] if thumbnails.get("file") else None
    return {
        "folder": folder.name, "result": result, "rows": rows,
        "has_volume": any(r["volume_ml"] is not None for r in rows),
        "error_label": next((r["err_label"] for r in rows if r["err_low"] is not None), None),
        "chart": charts.ranking_chart(rows, f"{result.get('method', '')}: {result.get('target_label', '')}", value_label) if rows else None,
        "slices": sets, "image_name": image_name,
        "legend": charts.colour_legend(top, f"attribution ({result.get('value_function', '')})") if top is not None else None,
        "evaluation": evaluation, "curves": charts.faithfulness_curves(evaluation) if evaluation else None,
        "thumbnails": file_uri(thumb_file) if thumb_file and thumb_file.exists() else None,
        "provenance": result.get("provenance") or {},
    }


def result_folders(result_dir: str | Path) -> list[Path]:
    """The target folders of a result folder (one, or one per target listed in index.json)."""
    result_dir = Path(result_dir)
    if (result_dir / RESULT_FILE).exists():
        return [result_dir]
    if (result_dir / INDEX_FILE).exists():
        return [result_dir / t for t in json.loads((result_dir / INDEX_FILE).read_text())["results"]]
    raise InputError(f"{result_dir} is not a SegXAI result folder (no {RESULT_FILE} or {INDEX_FILE}).",
                     "Point to a folder written by `segxai explain --out`.")


def write_report(result_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes RESULT_DIR/report.html (or `out`): one section per target; returns its path."""
    folders = result_folders(result_dir)
    sections = [target_section(f) for f in folders]
    first = sections[0]["result"]
    title = f"SegXAI {first.get('method', '')}: " + ", ".join(str(s["result"].get("target_label", "")) for s in sections)
    return write_page(Path(out) if out else Path(result_dir) / REPORT_FILE, "result.html.j2", title=title, sections=sections)


def write_index(folder: str | Path, reports: list[tuple[str, Path]], title: str = "SegXAI demo", summary: str = "") -> Path:
    """FOLDER/index.html linking each (label, report path) by a relative link."""
    folder = Path(folder)
    links = [{"label": label, "href": Path(path).resolve().relative_to(folder.resolve()).as_posix()} for label, path in reports]
    return write_page(folder / "index.html", "index.html.j2", title=title, links=links, summary=summary)
