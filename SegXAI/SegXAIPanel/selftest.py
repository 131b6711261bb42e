"""Steps of the in-Slicer self-test, written so that pytest runs the same steps on a `slicer-core` scene.

Under ctest (`Slicer --testing`, no packages installed, none installable) the self-test still exercises the real
panel path: Slicer's readers load the demo case, a real subprocess speaks the engine's event protocol (a partial
result, then the final one), `PanelRuns` loads both into one run's nodes, and the overlay, table and chart are
checked. Result maps are written with Slicer's own writer, so no nibabel is needed. With SegXAI's packages present
the self-test also runs a short contrast Shapley through the real engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from SegXAILib import mrml_adapter
from SegXAILib.progress import EVENT_PREFIX
from SegXAILib.result import RESULT_FILE

# A stand-in engine: the same event protocol on stderr, the same --out argument; what it reports is read from disk.
_ENGINE = f"""
import json, sys, time
out = sys.argv[sys.argv.index("--out") + 1]
partials = json.loads(sys.argv[sys.argv.index("--partials") + 1])
for k, path in enumerate(partials, 1):
    sys.stderr.write({EVENT_PREFIX!r} + json.dumps({{"event": "partial", "path": path, "coalitions": 4 * k, "budget": 16}}) + "\\n")
    sys.stderr.flush()
    time.sleep(0.2)
sys.stderr.write({EVENT_PREFIX!r} + json.dumps({{"event": "done", "out": out}}) + "\\n")
"""


def stand_in_engine_argv(out: str | Path, partials: list[str | Path], python: str | None = None) -> list[str]:
    return [python or sys.executable, "-c", _ENGINE, "--out", str(out), "--partials", json.dumps([str(p) for p in partials])]


def write_result_folder(scene, folder: str | Path, volume_node, values: dict[str, float], scale: float) -> Path:
    """A contrast-Shapley-shaped result folder on `volume_node`'s grid: result.json and an attribution map written by
    Slicer's own writer (NRRD), as the engine's result-folder contract describes (docs/result-folder.md)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array, geometry = mrml_adapter.array_from_volume(volume_node)
    attribution = (scale * (array - array.mean()) / (array.std() or 1.0)).astype(np.float32)
    node = mrml_adapter.add_volume(scene, attribution, geometry, "SegXAI self-test map")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(folder / "attribution.nrrd"))
    storage.SetUseCompression(0)
    ok = storage.WriteData(node)
    scene.RemoveNode(node)
    scene.RemoveNode(storage)
    if not ok:
        raise OSError(f"Slicer could not write {folder / 'attribution.nrrd'}")
    ranking = sorted(values, key=lambda n: -values[n])
    players = [{"id": i, "name": n, "value": scale * v, "std": 0.0, "std_error": None, "per_model": [scale * v]}
               for i, (n, v) in enumerate(values.items())]
    result = {"schema": 1, "method": "contrast-shapley", "value_function": "dice", "target_label": "WT", "players": players,
              "ranking": ranking, "maps": {"attribution": "attribution.nrrd"}, "per_model": [{"model": "self-test"}]}
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return folder


def check_run(run, players: list[str]) -> list[str]:
    """What is wrong with a loaded run's overlay, table and chart ([] when nothing). The overlay is the attribution
    map where the result has one (region methods, the self-test's folders), else the regions segmentation."""
    overlay = "attribution" if "attribution" in (run.result.get("maps") or {}) else "segmentation"
    problems = [f"no {role} node" for role in ("parameters", "table", "chart", overlay) if role not in run.nodes]
    if problems:
        return problems
    names = mrml_adapter.table_column(run.nodes["table"], "player")
    if sorted(names) != sorted(players):
        problems.append(f"table players {names} != {players}")
    if names != run.result.get("ranking"):
        problems.append("table rows are not in ranking order")
    if run.nodes["chart"].GetNumberOfPlotSeriesNodes() < 1:
        problems.append("the chart has no series")
    if overlay == "attribution" and run.nodes["attribution"].GetDisplayNode().GetAutoWindowLevel():
        problems.append("the overlay has no fixed symmetric range")
    if overlay == "segmentation" and run.nodes["segmentation"].GetSegmentation().GetNumberOfSegments() == 0:
        problems.append("the regions segmentation is empty")
    return problems


def engine_packages_missing() -> list[str]:
    """SegXAI's packages that this Python lacks (the engine part of the self-test needs them)."""
    import importlib.util

    return [m for m in ("torch", "monai", "scipy", "nibabel", "nrrd", "shapiq") if importlib.util.find_spec(m) is None]


def known_case(folder: Path):
    """Three contrasts on a small grid; the model needs A and B together and never reads C, so the contrast
    Shapley values are exactly (1/2, 1/2, 0) (the shipped demo case needs minutes on a CPU; this needs seconds)."""
    import torch

    class ThresholdSum(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(3, 1, 3, padding=1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 3, 3, 3) / 27)

        def forward(self, x):
            fg = self.conv(x) - 1.5
            return torch.cat([torch.zeros_like(fg), fg], dim=1)

    path = folder / "model.pt"
    torch.jit.save(torch.jit.script(ThresholdSum().eval()), str(path),
                   _extra_files={"segxai.json": json.dumps({"channels": ["A", "B", "C"], "labels": {"background": 0, "blob": 1}})})
    shape = (24, 20, 16)
    i, j, k = np.indices(shape)
    blob = (((i - 12) / 5.0) ** 2 + ((j - 10) / 4.0) ** 2 + ((k - 8) / 3.0) ** 2 <= 1).astype(np.float32)
    noise = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return [2 * blob, 2 * blob, noise], np.diag([1.5, 1.5, 2.0, 1.0]), [str(path)], ["A", "B", "C"], "blob", \
        {"A": 0.5, "B": 0.5, "C": 0.0}


def set_known_case(scene, p, folder: Path):
    """The known case in `scene` and in the parameter node `p` (two identical "folds", so the table has fold columns
    and the spread is zero); returns (models, channels, expected values)."""
    from SegXAILib.volumes import Geometry

    folder.mkdir(parents=True, exist_ok=True)
    images, affine, models, channels, target, expected = known_case(folder)
    geometry = Geometry(tuple(images[0].shape), affine)
    for c, (name, array) in enumerate(zip(channels, images)):
        setattr(p, f"image{c}", mrml_adapter.add_volume(scene, array, geometry, name))
    p.models = "\n".join(models + models)
    p.channelNames, p.target, p.device = ",".join(channels), target, "cpu"
    p.outputFolder = folder / "results"
    corner = (affine @ [0, 0, 0, 1])[:3]
    far = (affine @ [*(s - 1 for s in geometry.shape), 1])[:3]
    p.roi = mrml_adapter.add_roi_node(scene, corner + 0.2 * (far - corner), corner + 0.8 * (far - corner))
    return models + models, channels, expected
