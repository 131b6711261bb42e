"""Scenes outside Slicer's GUI (slicer-core: tests, the web front end) and .mrb bundles."""

from __future__ import annotations

import tempfile
from pathlib import Path

import slicer
from slicer import vtkMRMLColorLegendDisplayNode, vtkMRMLScene

from ._vtk import _register


def new_scene(cache_dir: str | Path | None = None) -> vtkMRMLScene:
    """A scene outside Slicer's GUI (slicer-core, tests, web front end) that can also read and write .mrb bundles."""
    from slicer import vtkDataIOManagerLogic, vtkMRMLRemoteIOLogic, vtkSlicerApplicationLogic

    _register_conversion_rules()
    scene = vtkMRMLScene()
    _register(scene, vtkMRMLColorLegendDisplayNode)
    app_logic = vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="segxai-mrml-cache-"))
    cache.mkdir(parents=True, exist_ok=True)
    remote_io = vtkMRMLRemoteIOLogic()
    remote_io.GetCacheManager().SetRemoteCacheDirectory(str(cache))
    data_io = vtkDataIOManagerLogic()
    data_io.SetMRMLApplicationLogic(app_logic)
    data_io.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    app_logic.SetMRMLSceneDataIO(scene, remote_io, data_io)
    scene._segxai_keep_alive = (app_logic, remote_io, data_io)  # the logics must live as long as the scene
    return scene


def save_mrb(scene: vtkMRMLScene, path: str | Path) -> Path:
    """Writes the whole scene (nodes, their data, the subject hierarchy) as a Medical Reality Bundle."""
    path = Path(path)
    if not scene.WriteToMRB(str(path)):
        raise OSError(f"Could not write the scene to {path}.")
    return path


def load_mrb(scene: vtkMRMLScene, path: str | Path) -> vtkMRMLScene:
    """Replaces the scene's content with a .mrb bundle (the scene needs data IO, see new_scene)."""
    _register(scene, vtkMRMLColorLegendDisplayNode)
    if not scene.ReadFromMRB(str(path)):
        raise OSError(f"Could not read the scene bundle {path}.")
    return scene


def _register_conversion_rules() -> None:
    """The segmentation representation converters that Slicer's Segmentations module registers at startup (labelmap ⇄
    closed surface); slicer-core registers none, so a closed-surface segmentation could not be read headless."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    have = {type(rules[i]).__name__ for i in range(len(rules))} if hasattr(rules, "__len__") else set()
    for name in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule"):
        if name not in have and hasattr(slicer, name):
            factory.RegisterConverterRule(getattr(slicer, name)())
