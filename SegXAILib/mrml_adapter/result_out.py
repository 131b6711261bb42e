"""Result out: a result folder → nodes in the scene (text, table, chart, overlay, segments), one run per folder.

A loaded run is one subject-hierarchy folder (named by method, target and time) holding all its nodes; the
`SegXAI.runId` / `SegXAI.role` node attributes group the same nodes without the hierarchy and survive `.mrb` save
and load, as does the full `result.json` in a text node.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid
from pathlib import Path

import numpy as np
import vtk

from slicer import vtkMRMLPlotSeriesNode, vtkMRMLScene

from ..errors import InputError
from ..result import INDEX_FILE, RESULT_FILE, read_result
from ..volumes import Geometry
from ._vtk import _array_to_image, _to_matrix
from ..colormap import TRANSPARENT_BAND, symmetric_range
from .display import (ATTR_METHOD, ATTR_RANGE, ATTR_RESULT_DIR, ATTR_ROLE, ATTR_RUN, ATTR_TARGET,
                      _import_labels, add_color_legend, add_volume, diverging_color_node, read_volume_node,
                      show_in_slice_views)
from .scene_in import array_from_volume



@dataclasses.dataclass
class LoadedRun:
    """The nodes one result folder became: `nodes` by role, all under `folder_item` in the subject hierarchy."""

    scene: vtkMRMLScene
    run_id: str
    folder_item: int
    name: str
    result: dict
    nodes: dict = dataclasses.field(default_factory=dict)

    def parameters(self) -> dict:
        return json.loads(self.nodes["parameters"].GetText())


def _run_name(result: dict, target: str | None) -> str:
    created = (result.get("provenance") or {}).get("created")
    try:
        when = datetime.datetime.fromisoformat(created).astimezone() if created else datetime.datetime.now()
    except ValueError:
        when = datetime.datetime.now()
    parts = ["SegXAI", result.get("method", "result")]
    if target:
        parts.append(str(target))
    return " ".join(parts) + when.strftime(" %Y-%m-%d %H:%M:%S")


def _unique_item_name(sh, parent: int, name: str) -> str:
    taken = set()
    children = vtk.vtkIdList()
    sh.GetItemChildren(parent, children)
    for i in range(children.GetNumberOfIds()):
        taken.add(sh.GetItemName(children.GetId(i)))
    if name not in taken:
        return name
    n = 2
    while f"{name} ({n})" in taken:
        n += 1
    return f"{name} ({n})"


def _file_into(sh, folder: int, node) -> None:
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, folder)
    else:
        sh.CreateItem(folder, node)


def load_results(scene: vtkMRMLScene, out_dir: str | Path, background=None, top_k: int = 10, show: bool = True) -> list[LoadedRun]:
    """Loads a result folder (one target) or a run over several targets (index.json) into the scene.

    Several targets share one run folder in the subject hierarchy, with a subfolder per target.
    """
    out_dir = Path(out_dir)
    if (out_dir / RESULT_FILE).exists():
        return [load_result(scene, out_dir, background=background, top_k=top_k, show=show)]
    index = out_dir / INDEX_FILE
    if not index.exists():
        raise InputError(f"{out_dir} is not a SegXAI result folder (no {RESULT_FILE} or {INDEX_FILE}).",
                         "Point to a folder written by `segxai explain --out`.")
    targets = json.loads(index.read_text())["results"]
    if not targets:
        return []
    first = read_result(out_dir / targets[0])
    sh = scene.GetSubjectHierarchyNode()
    run_name = _run_name(first, None)
    parent = sh.CreateFolderItem(sh.GetSceneItemID(), _unique_item_name(sh, sh.GetSceneItemID(), run_name))
    sh.SetItemAttribute(parent, ATTR_RESULT_DIR, str(out_dir.resolve()))
    sh.SetItemAttribute(parent, ATTR_METHOD, str(first.get("method", "")))
    runs = []
    for n, target in enumerate(targets):
        runs.append(load_result(scene, out_dir / target, background=background, top_k=top_k,
                                show=show and n == 0, parent_item=parent))
    return runs


def load_result(scene: vtkMRMLScene, folder: str | Path, background=None, top_k: int = 10, show: bool = True,
                parent_item: int | None = None) -> LoadedRun:
    """One result folder → a new subject-hierarchy folder with the run's nodes (earlier runs are left alone)."""
    folder = Path(folder)
    result = read_result(folder)
    target = str(result.get("target_label", ""))
    sh = scene.GetSubjectHierarchyNode()
    parent = sh.GetSceneItemID() if parent_item is None else parent_item
    name = target if parent_item is not None else _run_name(result, target)
    item = sh.CreateFolderItem(parent, _unique_item_name(sh, parent, name))
    run = LoadedRun(scene, uuid.uuid4().hex, item, sh.GetItemName(item), result)
    sh.SetItemAttribute(item, ATTR_RUN, run.run_id)
    _fill(run, folder, result, background, top_k, show)
    return run


def refresh_result(run: LoadedRun, folder: str | Path, background=None, top_k: int = 10, show: bool = False) -> LoadedRun:
    """Anytime results: the run's nodes take the content of another result folder (a newer partial result, then the
    final one) in place. The same text, table, chart, overlay and segmentation nodes are updated, so views, the chart
    in the layout and the user's selections stay put; a node is added only for a map the earlier folder lacked."""
    folder = Path(folder)
    result = read_result(folder)
    run.result = result
    _fill(run, folder, result, background, top_k, show)
    return run


def remove_run(run: LoadedRun) -> None:
    """Takes a loaded run out of the scene: its nodes with their display and storage nodes, and its folder."""
    scene = run.scene
    doomed = []
    for node in run.nodes.values():
        doomed.append(node)
        for n in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
            doomed.append(node.GetNthDisplayNode(n))
        if hasattr(node, "GetStorageNode"):
            doomed.append(node.GetStorageNode())
    for node in doomed:
        if node is not None and node.GetScene() is scene:
            scene.RemoveNode(node)
    scene.GetSubjectHierarchyNode().RemoveItem(run.folder_item)
    run.nodes.clear()


def _fill(run: LoadedRun, folder: Path, result: dict, background, top_k: int, show: bool) -> None:
    scene = run.scene
    target = str(result.get("target_label", ""))
    method = str(result.get("method", ""))
    sh = scene.GetSubjectHierarchyNode()
    for key, value in ((ATTR_METHOD, method), (ATTR_TARGET, target), (ATTR_RESULT_DIR, str(folder.resolve())),
                       ("SegXAI.valueFunction", str(result.get("value_function", "")))):
        sh.SetItemAttribute(run.folder_item, key, value)
    prefix = f"SegXAI {method} {target}".strip()

    def keep(role: str, node, in_hierarchy: bool = True) -> None:
        node.SetAttribute(ATTR_RUN, run.run_id)
        node.SetAttribute(ATTR_ROLE, role)
        node.SetAttribute(ATTR_TARGET, target)
        node.SetAttribute(ATTR_METHOD, method)
        node.SetAttribute(ATTR_RESULT_DIR, str(folder.resolve()))
        if in_hierarchy:  # data nodes; display nodes (the legend) travel with their volume
            _file_into(sh, run.folder_item, node)
        run.nodes[role] = node

    text = run.nodes.get("parameters") or scene.AddNewNodeByClass("vtkMRMLTextNode", scene.GenerateUniqueName(f"{prefix} result.json"))
    text.SetText(json.dumps(result, indent=1, sort_keys=False))
    keep("parameters", text)

    if result.get("players"):
        table, chart, series = _ranking_table_and_chart(scene, result, prefix, run.nodes.get("table"), run.nodes.get("chart"))
        keep("table", table)
        keep("chart", chart)
        for role in [r for r in run.nodes if r.startswith("series")]:
            del run.nodes[role]
        for n, node in enumerate(series):
            keep(f"series{n}", node)

    volumes: dict[str, tuple[np.ndarray, Geometry]] = {}
    for key, file_name in dict(result.get("maps") or {}).items():
        path = folder / file_name
        if path.exists():
            volumes[key] = _read_map(scene, path)

    if "attribution" in volumes:
        array, geometry = volumes.pop("attribution")
        node = _attribution_volume(scene, array, geometry, f"{prefix} attribution", str(result.get("value_function", "")),
                                   run.nodes.get("attribution"))
        keep("attribution", node)
        keep("legend", _legend_of(node), in_hierarchy=False)
        if show:
            show_in_slice_views(scene, foreground=node, background=background)

    if "players" in volumes:
        array, geometry = volumes.pop("players")
        keep("players", _players_segmentation(scene, array, geometry, result, f"{prefix} players", top_k, run.nodes.get("players")))

    overlay_specs = [("roi", "ROI", (0.95, 0.85, 0.2)), ("reference", "reference", (0.2, 0.8, 0.3)),
                     ("prediction", "prediction", (0.9, 0.5, 0.1)), ("mask", "relevant regions", (0.85, 0.1, 0.6))]
    overlays = [(key, label, color, volumes.pop(key)) for key, label, color in overlay_specs if key in volumes]
    if overlays:
        segmentation = _emptied_segmentation(scene, run.nodes.get("segmentation"), f"{prefix} regions")
        if background is not None:
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(background)
        display = segmentation.GetDisplayNode()
        for key, label, color, (array, geometry) in overlays:
            binary = (array >= 0.5) if np.issubdtype(array.dtype, np.floating) else (array != 0)
            ids = _import_labels(segmentation, binary.astype(np.uint8), geometry)
            if not ids:
                continue
            segment_id = ids[1]
            segment = segmentation.GetSegmentation().GetSegment(segment_id)
            segment.SetName(label)
            segment.SetColor(*color)
            segment.SetTag(ATTR_ROLE, key)
            if key == "roi":  # outline only: the ROI frames, it does not cover
                display.SetSegmentOpacity2DFill(segment_id, 0.0)
            if key == "prediction":
                display.SetSegmentOpacity2DFill(segment_id, 0.2)
        keep("segmentation", segmentation)

    for key, (array, geometry) in volumes.items():  # anything newer than this adapter still reaches the scene
        existing = run.nodes.get(f"map:{key}")
        if existing is not None:
            _set_voxels(existing, array, geometry)
        keep(f"map:{key}", existing or add_volume(scene, array, geometry, f"{prefix} {key}"))


def _read_map(scene, path: Path) -> tuple[np.ndarray, Geometry]:
    """A result map through Slicer's reader (nothing to install in Slicer), as an array; the reading node is dropped."""
    node = read_volume_node(scene, path, path.name)
    storage = node.GetStorageNode()
    try:
        return array_from_volume(node)
    finally:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)


def _set_voxels(node, array: np.ndarray, geometry: Geometry) -> None:
    node.SetIJKToRASMatrix(_to_matrix(geometry.affine))
    node.SetAndObserveImageData(_array_to_image(array))


def _legend_of(node):
    for n in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(n)
        if display is not None and display.IsA("vtkMRMLColorLegendDisplayNode"):
            return display
    return node.GetNthDisplayNode(node.GetNumberOfDisplayNodes() - 1)


def _emptied_segmentation(scene, existing, name: str):
    if existing is not None:
        existing.GetSegmentation().RemoveAllSegments()
        return existing
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation.CreateDefaultDisplayNodes()
    return segmentation


def _attribution_volume(scene, array: np.ndarray, geometry: Geometry, name: str, value_function: str, node=None):
    values = np.asarray(array, dtype=np.float32)
    new = node is None
    if new:
        node = add_volume(scene, values, geometry, name)
    else:
        _set_voxels(node, values, geometry)
    top = symmetric_range(values)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(diverging_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(-top, top)  # symmetric and fixed: zero is always the white centre
    display.SetInterpolate(0)
    display.AutoThresholdOff()
    eps = TRANSPARENT_BAND * top
    if values.min() >= 0:  # one-signed maps: the threshold hides near-zero voxels as well as the colour table
        display.SetThreshold(eps, top)
        display.ApplyThresholdOn()
    elif values.max() <= 0:
        display.SetThreshold(-top, -eps)
        display.ApplyThresholdOn()
    else:
        display.ApplyThresholdOff()  # signed: the transparent centre band of the colour table hides |value| < eps
    node.SetAttribute(ATTR_RANGE, f"{-top:.9g} {top:.9g}")
    if new:
        add_color_legend(node, f"attribution ({value_function})" if value_function else "attribution")
    return node


def _players_segmentation(scene, labels: np.ndarray, geometry: Geometry, result: dict, name: str, top_k: int, node=None):
    """One segment per region player, named by rank and value; the top-k by |value| shown in red (for) / blue (against).

    The players map holds player id + 1 (0 = no player), as the engine writes it.
    """
    players = list(result.get("players") or [])
    by_label: dict[int, dict] = {}
    for index, player in enumerate(players):
        try:
            by_label[int(player.get("id", index)) + 1] = player
        except (TypeError, ValueError):
            by_label[index + 1] = player
    order = sorted(by_label, key=lambda k: -abs(float(by_label[k].get("value", 0.0))))
    rank = {label: r + 1 for r, label in enumerate(order)}
    top = set(order[:top_k])
    peak = max((abs(float(p.get("value", 0.0))) for p in by_label.values()), default=0.0) or 1.0

    segmentation = _emptied_segmentation(scene, node, name)
    ids = _import_labels(segmentation, np.asarray(labels).astype(np.int32), geometry)
    display = segmentation.GetDisplayNode()
    for label, segment_id in ids.items():
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        player = by_label.get(label)
        value = float(player.get("value", 0.0)) if player else 0.0
        segment.SetName(f"#{rank[label]} {player.get('name', label)} ({value:+.3g})" if player else f"region {label}")
        segment.SetTag("SegXAI.value", repr(value))
        segment.SetTag("SegXAI.rank", str(rank.get(label, 0)))
        strength = 0.35 + 0.65 * min(1.0, abs(value) / peak)
        segment.SetColor(*((0.85, 0.15, 0.15) if value >= 0 else (0.15, 0.35, 0.85)) if label in top else (0.6, 0.6, 0.6))
        display.SetSegmentVisibility(segment_id, label in top)
        display.SetSegmentOpacity2DFill(segment_id, 0.5 * strength if label in top else 0.1)
    return segmentation


def _ranking_table_and_chart(scene, result: dict, prefix: str, table=None, chart=None):
    """Table: one row per player in ranking order (value, std across models, the calibrated error where the method
    gives one, ranks, one column per model); chart: bars of the mean value plus one bar series per model (fold), so
    the spread across folds is visible, and the error interval as markers. A `std_error` of null means the estimate
    has no calibrated error: then no ± is shown anywhere. Given `table` and `chart` are refilled in place."""
    players = {p["name"]: p for p in result["players"]}
    names = [n for n in result.get("ranking", []) if n in players] + [n for n in players if n not in result.get("ranking", [])]
    n_models = max((len(p.get("per_model") or []) for p in players.values()), default=0)
    model_names = [m.get("model", f"model {i}") for i, m in enumerate(result.get("per_model") or [])]
    fold_columns = [f"fold {i}" for i in range(n_models)]

    def number(player: dict, key: str) -> float:
        value = player.get(key)
        return float(value) if isinstance(value, (int, float)) else np.nan

    values = [number(players[n], "value") for n in names]
    std = [0.0 if np.isnan(s) else s for s in (number(players[n], "std") for n in names)]
    errors = [number(players[n], "std_error") for n in names]
    has_error = bool(np.isfinite(errors).any())
    shown = [f"{v:.4g} ± {e:.2g}" if np.isfinite(e) else f"{v:.4g}" for v, e in zip(values, errors)]
    columns: list[tuple[str, list]] = [("player", names), ("rank", list(range(1, len(names) + 1))), ("value", values),
                                       ("result", shown), ("std", std), ("value - std", [v - s for v, s in zip(values, std)]),
                                       ("value + std", [v + s for v, s in zip(values, std)])]
    if has_error:
        columns += [("std_error", errors), ("value - error", [v - e for v, e in zip(values, errors)]),
                    ("value + error", [v + e for v, e in zip(values, errors)])]
    for key in ("mean_rank", "rank_variance", "volume_ml"):  # what the method reports, nothing invented
        if any(isinstance(players[n].get(key), (int, float)) for n in names):
            columns.append((key, [number(players[n], key) for n in names]))
    for i, column in enumerate(fold_columns):
        columns.append((column, [float((players[n].get("per_model") or [np.nan] * n_models)[i]) for n in names]))

    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{prefix} ranking"))
    vtk_table = table.GetTable()
    vtk_table.RemoveAllColumns()
    for column_name, column_values in columns:
        if column_name in ("player", "result"):
            array = vtk.vtkStringArray()
            for v in column_values:
                array.InsertNextValue(str(v))
        elif column_name == "rank":
            array = vtk.vtkIntArray()
            for v in column_values:
                array.InsertNextValue(int(v))
        else:
            array = vtk.vtkDoubleArray()
            for v in column_values:
                array.InsertNextValue(float(v))
        array.SetName(column_name)
        vtk_table.AddColumn(array)
    table.SetColumnDescription("value", f"{result.get('method', '')} attribution, mean over models ({result.get('value_function', '')})")
    table.SetColumnDescription("std", "sample standard deviation across models (folds)")
    if has_error:
        table.SetColumnDescription("std_error", "standard error of the estimate (blank: no calibrated error)")
    for i, column in enumerate(fold_columns):
        if i < len(model_names):
            table.SetColumnDescription(column, str(model_names[i]))
    table.Modified()

    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{prefix} chart"))
    chart.SetTitle(f"{result.get('method', '')}: {result.get('target_label', '')} ({result.get('value_function', '')})")
    chart.SetXAxisTitle("rank: " + ", ".join(names[:12]) + (" …" if len(names) > 12 else ""))
    chart.SetYAxisTitle("attribution")
    chart.SetLegendVisibility(True)
    series_specs = [("mean over models", "value", (0.80, 0.20, 0.20), vtkMRMLPlotSeriesNode.PlotTypeBar)]
    palette = [(0.55, 0.55, 0.55), (0.65, 0.65, 0.75), (0.75, 0.70, 0.60), (0.60, 0.72, 0.62), (0.72, 0.60, 0.72)]
    if n_models > 1:
        series_specs += [(column, column, palette[i % len(palette)], vtkMRMLPlotSeriesNode.PlotTypeBar)
                         for i, column in enumerate(fold_columns)]
    if has_error:
        series_specs += [(f"value {sign} error", f"value {sign} error", (0.1, 0.1, 0.1), vtkMRMLPlotSeriesNode.PlotTypeScatter)
                         for sign in "-+"]
    old = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    series_nodes = []
    for n, (label, column, color, plot_type) in enumerate(series_specs):
        series = old[n] if n < len(old) else None
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{prefix} {label}"))
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("rank")
        series.SetYColumnName(column)
        series.SetLabelColumnName("player")
        series.SetPlotType(plot_type)
        series.SetColor(*color)
        series_nodes.append(series)
    for series in old[len(series_specs):]:
        chart.RemovePlotSeriesNodeID(series.GetID())
        scene.RemoveNode(series)
    return table, chart, series_nodes


def find_runs(scene: vtkMRMLScene) -> dict[str, dict[str, object]]:
    """{run id: {role: node}} from the node attributes alone (works without the subject hierarchy)."""
    runs: dict[str, dict[str, object]] = {}
    collection = scene.GetNodes()
    for i in range(collection.GetNumberOfItems()):
        node = collection.GetItemAsObject(i)
        run_id = node.GetAttribute(ATTR_RUN) if hasattr(node, "GetAttribute") else None
        if run_id:
            runs.setdefault(run_id, {})[node.GetAttribute(ATTR_ROLE)] = node
    return runs


def table_column(table_node, name: str) -> list:
    """Values of one table column (strings for text columns)."""
    table = table_node.GetTable()
    column = table.GetColumnByName(name)
    if column is None:
        raise KeyError(name)
    return [column.GetValue(r) for r in range(table.GetNumberOfRows())]

