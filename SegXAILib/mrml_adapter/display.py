"""Display: arrays → volume and segmentation nodes, the diverging colour table, legends, slice-view layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk

from slicer import (vtkMRMLColorLegendDisplayNode, vtkMRMLScene, vtkSegmentationConverter,
                    vtkSlicerSegmentationsModuleLogic)

from ..colormap import FOREGROUND_OPACITY, diverging_table
from ..errors import InputError
from ..volumes import Geometry
from ._vtk import _array_to_image, _nodes, _oriented_image, _register, _to_matrix

ATTR_RUN = "SegXAI.runId"
ATTR_ROLE = "SegXAI.role"
ATTR_TARGET = "SegXAI.target"
ATTR_METHOD = "SegXAI.method"
ATTR_RESULT_DIR = "SegXAI.resultDir"
ATTR_RANGE = "SegXAI.displayRange"
COLOR_NODE_NAME = "SegXAI diverging blue-red"


def add_volume(scene: vtkMRMLScene, array: np.ndarray, geometry: Geometry, name: str, label: bool = False):
    """A new scalar (or labelmap) volume node holding an (I, J, K) array in `geometry`, with display nodes."""
    if tuple(array.shape[:3]) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetAndObserveImageData(_array_to_image(array))
    node.SetIJKToRASMatrix(_to_matrix(geometry.affine))
    node.CreateDefaultDisplayNodes()
    return node



def _import_labels(segmentation_node, labels: np.ndarray, geometry: Geometry) -> dict[int, str]:
    """Adds one segment per nonzero label value; returns {label value: segment id}."""
    before = {segmentation_node.GetSegmentation().GetNthSegmentID(i) for i in range(segmentation_node.GetSegmentation().GetNumberOfSegments())}
    if not np.any(labels):
        return {}
    image = _oriented_image(labels, geometry)
    segmentation = segmentation_node.GetSegmentation()
    key = vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    if segmentation.GetNumberOfSegments() == 0:  # a new segmentation: the grid its segments are edited and saved on
        segmentation.SetConversionParameter(key, vtkSegmentationConverter.SerializeImageGeometry(image))
    if not vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(image, segmentation_node, ""):
        raise RuntimeError("Importing a labelmap into a segmentation failed.")
    out = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        if segment_id not in before:
            out[int(segmentation.GetSegment(segment_id).GetLabelValue())] = segment_id
    return out


def diverging_color_node(scene: vtkMRMLScene):
    """The scene's SegXAI blue-white-red colour table (256 entries, centre band transparent), made once per scene."""
    for node in _nodes(scene, "vtkMRMLColorTableNode"):
        if node.GetAttribute(ATTR_ROLE) == "colormap":
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(COLOR_NODE_NAME))
    node.SetTypeToUser()
    table = diverging_table()  # shared with the HTML report and the web viewer
    node.SetNumberOfColors(len(table))
    for i, rgba in enumerate(table):
        node.SetColor(i, f"{(i + 0.5) / len(table) * 2 - 1:+.3f}", *map(float, rgba))
    node.SetAttribute(ATTR_ROLE, "colormap")
    node.SetAttribute("SegXAI.description", "signed attribution: blue = against, red = for the target; near zero is transparent")
    return node



def add_color_legend(volume_node, title: str):
    """A colour legend (bar) for the volume's display node; the Colors logic's own recipe, MRML only."""
    scene = volume_node.GetScene()
    _register(scene, vtkMRMLColorLegendDisplayNode)
    display = volume_node.GetDisplayNode()
    legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode", scene.GenerateUniqueName(f"{volume_node.GetName()} color legend"))
    legend.SetTitleText(title)
    legend.SetLabelFormat("%.3g")
    legend.SetAndObservePrimaryDisplayNode(display)
    volume_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.Modified()
    return legend


def show_in_slice_views(scene: vtkMRMLScene, foreground=None, background=None, opacity: float = FOREGROUND_OPACITY) -> None:
    """Puts volumes in every slice view's layers (what slicer.util.setSliceViewerLayers does, MRML only)."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
            composite.SetForegroundOpacity(opacity)



def read_volume_node(scene: vtkMRMLScene, path: str | Path, name: str):
    """A new scalar volume node read by Slicer's own reader (the archetype storage node, ITK): NIfTI and NRRD load
    in a fresh Slicer, where nibabel and pynrrd are not installed."""
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetSingleFile(1)  # never a series of the other maps beside it
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"Slicer could not read the result volume {path}.", "Check that the result folder is complete, or run it again.")
    return node


def replace_voxels(node, source) -> None:
    """Gives `node` the voxels and geometry of `source` (another volume node): refreshes an overlay in place."""
    image = vtk.vtkImageData()
    image.DeepCopy(source.GetImageData())
    matrix = vtk.vtkMatrix4x4()
    source.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(image)
