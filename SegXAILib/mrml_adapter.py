"""The one place where SegXAI meets MRML: scene → case files for the engine, and result folder → scene.

Imports only `slicer`'s MRML-level classes (vtkMRML*, the segmentation core and its static logic helpers), `vtk`
and numpy, never Qt, `slicer.app` or `slicer.util`. The same code therefore runs inside 3D Slicer and under the
`slicer-core` wheel (pytest, the web front end). Every function takes the scene (or nodes) it works on.

Conventions:
- arrays are indexed (i, j, k) like `SegXAILib.volumes`; VTK image scalars are stored k-slowest, hence the
  transposes; geometry is the node's IJK→RAS matrix composed with any linear parent transform (world RAS);
- nothing the user made is modified or renamed: every node created here is new, named with
  `scene.GenerateUniqueName`, and tagged with the `SegXAI.*` attributes below;
- a loaded run is one subject-hierarchy folder (named by method, target and time) holding all its nodes; the
  `SegXAI.runId` / `SegXAI.role` node attributes group the same nodes without the hierarchy and survive `.mrb`
  save and load, as does the full `result.json` in a text node.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import tempfile
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import vtk
from vtkmodules.util import numpy_support

from slicer import (vtkMRMLColorLegendDisplayNode, vtkMRMLPlotSeriesNode, vtkMRMLScene, vtkMRMLSegmentationNode,
                    vtkOrientedImageData, vtkSegmentationConverter, vtkSlicerSegmentationsModuleLogic)

from .colormap import FOREGROUND_OPACITY, TRANSPARENT_BAND, diverging_table, symmetric_range
from .errors import InputError
from .result import INDEX_FILE, RESULT_FILE, read_result
from .volumes import Case, Geometry, box_mask, read_volume, resample_to, write_volume

ATTR_RUN = "SegXAI.runId"
ATTR_ROLE = "SegXAI.role"
ATTR_TARGET = "SegXAI.target"
ATTR_METHOD = "SegXAI.method"
ATTR_RESULT_DIR = "SegXAI.resultDir"
ATTR_RANGE = "SegXAI.displayRange"
COLOR_NODE_NAME = "SegXAI diverging blue-red"


# ---------------------------------------------------------------------------------------------------------------
# matrices and images
def _to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _to_world(node) -> np.ndarray:
    """The node's parent transform to world RAS (identity when none); non-linear transforms must be hardened first."""
    transform = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise InputError(f"{node.GetName()} is under a non-linear transform ({transform.GetName()}).",
                         "Harden the transform on it first (Data module: right-click the node → Harden transform).")
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return _to_array(matrix)


def _image_to_array(image) -> np.ndarray:
    """(I, J, K) copy of a single-component vtkImageData's scalars."""
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise InputError("A volume has no voxel data.", "Load the volume's image data again.")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(f"A volume has {scalars.GetNumberOfComponents()} components per voxel.",
                         "Give one scalar volume per contrast (split vector / RGB volumes first).")
    flat = numpy_support.vtk_to_numpy(scalars)
    return np.array(flat.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0))


def _extent_offset(image) -> np.ndarray:
    extent = image.GetExtent()
    shift = np.eye(4)
    shift[:3, 3] = extent[0], extent[2], extent[4]
    return shift


def _array_to_image(array: np.ndarray, image=None):
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    image = image if image is not None else vtk.vtkImageData()
    image.SetDimensions(*array.shape[:3])
    image.SetOrigin(0, 0, 0)
    image.SetSpacing(1, 1, 1)
    flat = np.ascontiguousarray(array.transpose(2, 1, 0)).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    return image


# ---------------------------------------------------------------------------------------------------------------
# scene → arrays
def volume_geometry(node) -> Geometry:
    """Shape and IJK→world-RAS affine of a volume node (parent linear transforms included)."""
    image = node.GetImageData()
    if image is None:
        raise InputError(f"The volume {node.GetName()} has no image data.", "Load the volume again.")
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    affine = _to_world(node) @ _to_array(ijk_to_ras) @ _extent_offset(image)
    return Geometry(tuple(int(d) for d in image.GetDimensions()), affine)


def array_from_volume(node) -> tuple[np.ndarray, Geometry]:
    """The voxels of a scalar / labelmap volume node as an (I, J, K) array, and their geometry."""
    geometry = volume_geometry(node)
    return _image_to_array(node.GetImageData()), geometry


def case_from_volumes(nodes: Sequence, channel_names: Sequence[str] | None = None, resample: bool = False) -> Case:
    """A multi-contrast case from one volume node per model input channel (all on the first one's grid)."""
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise InputError("No input volume selected.", "Select one volume per model input channel.")
    channels, geometry = [], None
    for node in nodes:
        array, geo = array_from_volume(node)
        if geometry is None:
            geometry = geo
        elif diffs := geometry.differences(geo):
            if not resample:
                raise InputError(f"{node.GetName()} is not on the grid of {nodes[0].GetName()}: {'; '.join(diffs)}.",
                                 "Resample it onto the first volume (Resample Scalar/Vector/DWI Volume), or allow resampling.")
            array = resample_to(array, geo, geometry, order=1)
        channels.append(np.asarray(array, dtype=np.float32))
    names = list(channel_names) if channel_names else [n.GetName() for n in nodes]
    return Case(np.stack(channels), geometry, names, [n.GetID() for n in nodes])


def roi_mask(roi_node, geometry: Geometry) -> np.ndarray:
    """Voxels of `geometry` whose centres lie in a markups ROI (box), in world RAS; rotated ROIs included."""
    if roi_node is None or roi_node.GetNumberOfControlPoints() == 0:
        raise InputError("The ROI has not been placed.", "Place the ROI box over the region to explain.")
    size = np.asarray(roi_node.GetSize(), dtype=float)
    if np.any(size <= 0):
        raise InputError(f"The ROI {roi_node.GetName()} has zero size.", "Resize the ROI box so that it covers the region.")
    object_to_world = _to_array(roi_node.GetObjectToWorldMatrix())
    axes = object_to_world[:3, :3]
    if np.allclose(np.abs(axes), np.eye(3), atol=1e-6):  # axis aligned: the box in RAS, as the CLI's --roi-box
        centre = object_to_world[:3, 3]
        half = np.abs(axes) @ (size / 2)
        mask = box_mask(geometry, centre - half, centre + half)
    else:
        ijk = np.indices(geometry.shape).reshape(3, -1)
        ras = geometry.affine[:3, :3] @ ijk + geometry.affine[:3, 3:4]
        world_to_object = np.linalg.inv(object_to_world)
        local = world_to_object[:3, :3] @ ras + world_to_object[:3, 3:4]
        mask = np.all(np.abs(local) <= size[:, None] / 2 + 1e-6, axis=0).reshape(geometry.shape)
        if not mask.any():
            raise InputError(f"The ROI {roi_node.GetName()} lies outside the image.", "Move the ROI box over the image.")
    if roi_node.GetInsideOut():
        mask = ~mask
    return mask


def roi_box(roi_node) -> list[float] | None:
    """[R1, A1, S1, R2, A2, S2] of an axis-aligned ROI (for `--roi-box`), or None when it is rotated."""
    object_to_world = _to_array(roi_node.GetObjectToWorldMatrix())
    if roi_node.GetInsideOut() or not np.allclose(np.abs(object_to_world[:3, :3]), np.eye(3), atol=1e-6):
        return None
    centre = object_to_world[:3, 3]
    half = np.abs(object_to_world[:3, :3]) @ (np.asarray(roi_node.GetSize(), dtype=float) / 2)
    return [*map(float, centre - half), *map(float, centre + half)]


def _segment_array(segmentation_node, segment_id: str) -> tuple[np.ndarray, Geometry]:
    image = vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    dims = image.GetDimensions()
    if min(dims) <= 0 or image.GetPointData().GetScalars() is None:
        return np.zeros((1, 1, 1), np.uint8), Geometry((1, 1, 1), np.eye(4))
    affine = _to_world(segmentation_node) @ _to_array(matrix) @ _extent_offset(image)
    return _image_to_array(image) != 0, Geometry(tuple(int(d) for d in dims), affine)


def labels_from_node(node, geometry: Geometry, label_values: Mapping[str, int] | None = None) -> np.ndarray:
    """An int32 label array on `geometry` from a labelmap volume or a segmentation node (nearest neighbour).

    Segments get the value of the `label_values` entry matching their name (case-insensitive, e.g. the model's
    labels), else their position in the segmentation plus one, as Slicer exports a segmentation to a labelmap.
    """
    if isinstance(node, vtkMRMLSegmentationNode):
        segmentation = node.GetSegmentation()
        source = segmentation.GetSourceRepresentationName() if hasattr(segmentation, "GetSourceRepresentationName") \
            else segmentation.GetMasterRepresentationName()
        if source != "Binary labelmap":
            node.CreateBinaryLabelmapRepresentation()
        by_name = {str(k).lower(): int(v) for k, v in (label_values or {}).items()}
        labels = np.zeros(geometry.shape, np.int32)
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            name = segmentation.GetSegment(segment_id).GetName() or ""
            value = by_name.get(name.lower(), index + 1)
            binary, geo = _segment_array(node, segment_id)
            if binary.any():
                labels[_onto_grid(binary.astype(np.uint8), geo, geometry) > 0] = value
        return labels
    array, geo = array_from_volume(node)
    return np.rint(_onto_grid(array, geo, geometry)).astype(np.int32)


def _onto_grid(labels: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Labels on `source` mapped onto `target` by nearest neighbour (exact when the grids differ by whole voxels)."""
    if not target.differences(source):
        return labels
    return resample_to(labels, source, target, order=0)


# BraTS label sets, as SegXAILib.targets reads them (that module imports torch, which a Slicer panel must not need)
_BRATS_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def target_label_values(target: str, labels: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """Label values a reference holds for a target: "2", "1,3", a label name, or a BraTS region WT / TC / ET."""
    text = str(target).strip()
    by_name = {str(k).lower(): int(v) for k, v in (labels or {}).items()}
    if text.lower() in by_name:
        return (by_name[text.lower()],)
    if text.upper() in _BRATS_REGIONS:
        return _BRATS_REGIONS[text.upper()]
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise InputError(f"Unknown target {text!r}.", "Give a label number, a label set like 1,3, a BraTS region (WT, TC, ET) or a label name.") from None


def bounding_box_ras(mask: np.ndarray, geometry: Geometry, margin_mm: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """RAS corners (low, high) of the voxel centres in `mask`, grown by `margin_mm` on every side."""
    ijk = np.argwhere(mask)
    if ijk.size == 0:
        raise InputError("The target is empty in the reference segmentation.", "Choose a target that the reference contains, or place the ROI by hand.")
    ras = ijk @ geometry.affine[:3, :3].T + geometry.affine[:3, 3]
    return ras.min(0) - margin_mm, ras.max(0) + margin_mm


def add_roi_node(scene: vtkMRMLScene, low_ras: Sequence[float], high_ras: Sequence[float], name: str = "SegXAI ROI"):
    """A new axis-aligned markups ROI spanning the RAS box [low, high]."""
    low, high = np.minimum(low_ras, high_ras), np.maximum(low_ras, high_ras)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(name))
    node.SetCenter(*map(float, (low + high) / 2))
    node.SetSize(*map(float, high - low))
    node.CreateDefaultDisplayNodes()
    return node


# ---------------------------------------------------------------------------------------------------------------
# scene → files for the engine
@dataclasses.dataclass
class CaseFiles:
    """What the engine needs from the scene, written to disk; `request_fields()` fills an ExplainRequest."""

    images: list[str]
    roi_mask: str | None
    roi_box: list[float] | None
    reference: str | None
    geometry: Geometry
    channel_names: list[str]

    def request_fields(self) -> dict:
        return {"images": self.images, "roi_mask": self.roi_mask, "roi_box": self.roi_box, "reference": self.reference}


def write_case_files(folder: str | Path, volume_nodes: Sequence, roi_node=None, reference_node=None,
                     channel_names: Sequence[str] | None = None, label_values: Mapping[str, int] | None = None,
                     suffix: str = ".nrrd") -> CaseFiles:
    """Writes the input volumes (one file per channel), the ROI and the reference for a `segxai explain` subprocess.

    An axis-aligned ROI travels as `--roi-box` (exact and re-runnable); a rotated or inside-out one as a mask file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    case = case_from_volumes(volume_nodes, channel_names)
    images = []
    for c, node in enumerate(n for n in volume_nodes if n is not None):
        array, geometry = array_from_volume(node)
        images.append(str(write_volume(array, geometry, folder / f"image{c}_{_safe(case.channel_names[c])}{suffix}")))
    box, mask_path = None, None
    if roi_node is not None:
        mask = roi_mask(roi_node, case.geometry)  # checks it covers the image
        box = roi_box(roi_node)
        if box is None:
            mask_path = str(write_volume(mask.astype(np.uint8), case.geometry, folder / f"roi{suffix}"))
    reference = None
    if reference_node is not None:
        labels = labels_from_node(reference_node, case.geometry, label_values)
        reference = str(write_volume(labels.astype(np.int16), case.geometry, folder / f"reference{suffix}"))
    return CaseFiles(images, mask_path, box, reference, case.geometry, list(case.channel_names))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40] or "x"


# ---------------------------------------------------------------------------------------------------------------
# arrays → scene
def add_volume(scene: vtkMRMLScene, array: np.ndarray, geometry: Geometry, name: str, label: bool = False):
    """A new scalar (or labelmap) volume node holding an (I, J, K) array in `geometry`, with display nodes."""
    if tuple(array.shape[:3]) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetAndObserveImageData(_array_to_image(array))
    node.SetIJKToRASMatrix(_to_matrix(geometry.affine))
    node.CreateDefaultDisplayNodes()
    return node


def _oriented_image(array: np.ndarray, geometry: Geometry):
    image = vtkOrientedImageData()
    _array_to_image(array, image)
    image.SetImageToWorldMatrix(_to_matrix(geometry.affine))
    return image


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


def _register(scene: vtkMRMLScene, node_class) -> None:
    name = node_class.__name__ if isinstance(node_class, type) else node_class.GetClassName()
    if not scene.IsNodeClassRegistered(name):
        scene.RegisterNodeClass(node_class())


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


def _nodes(scene: vtkMRMLScene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


# ---------------------------------------------------------------------------------------------------------------
# result folder → scene
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
    method = str(result.get("method", ""))
    sh = scene.GetSubjectHierarchyNode()
    parent = sh.GetSceneItemID() if parent_item is None else parent_item
    name = target if parent_item is not None else _run_name(result, target)
    item = sh.CreateFolderItem(parent, _unique_item_name(sh, parent, name))
    run = LoadedRun(scene, uuid.uuid4().hex, item, sh.GetItemName(item), result)
    for key, value in ((ATTR_RUN, run.run_id), (ATTR_METHOD, method), (ATTR_TARGET, target),
                       (ATTR_RESULT_DIR, str(folder.resolve())), ("SegXAI.valueFunction", str(result.get("value_function", "")))):
        sh.SetItemAttribute(item, key, value)
    prefix = f"SegXAI {method} {target}".strip()

    def keep(role: str, node, in_hierarchy: bool = True) -> None:
        node.SetAttribute(ATTR_RUN, run.run_id)
        node.SetAttribute(ATTR_ROLE, role)
        node.SetAttribute(ATTR_TARGET, target)
        node.SetAttribute(ATTR_METHOD, method)
        node.SetAttribute(ATTR_RESULT_DIR, str(folder.resolve()))
        if in_hierarchy:  # data nodes; display nodes (the legend) travel with their volume
            _file_into(sh, item, node)
        run.nodes[role] = node

    text = scene.AddNewNodeByClass("vtkMRMLTextNode", scene.GenerateUniqueName(f"{prefix} result.json"))
    text.SetText(json.dumps(result, indent=1, sort_keys=False))
    keep("parameters", text)

    if result.get("players"):
        table, chart = _ranking_table_and_chart(scene, result, prefix)
        keep("table", table)
        keep("chart", chart)
        for n in range(chart.GetNumberOfPlotSeriesNodes()):
            keep(f"series{n}", chart.GetNthPlotSeriesNode(n))

    maps = dict(result.get("maps") or {})
    volumes: dict[str, tuple[np.ndarray, Geometry]] = {}
    for key, file_name in maps.items():
        path = folder / file_name
        if path.exists():
            volumes[key] = read_volume(path)

    if "attribution" in volumes:
        array, geometry = volumes.pop("attribution")
        node = _attribution_volume(scene, array, geometry, f"{prefix} attribution", str(result.get("value_function", "")))
        keep("attribution", node)
        keep("legend", node.GetNthDisplayNode(node.GetNumberOfDisplayNodes() - 1), in_hierarchy=False)
        if show:
            show_in_slice_views(scene, foreground=node, background=background)

    if "players" in volumes:
        array, geometry = volumes.pop("players")
        keep("players", _players_segmentation(scene, array, geometry, result, f"{prefix} players", top_k))

    overlay_specs = [("roi", "ROI", (0.95, 0.85, 0.2)), ("reference", "reference", (0.2, 0.8, 0.3)),
                     ("prediction", "prediction", (0.9, 0.5, 0.1)), ("mask", "relevant regions", (0.85, 0.1, 0.6))]
    overlays = [(key, label, color, volumes.pop(key)) for key, label, color in overlay_specs if key in volumes]
    if overlays:
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{prefix} regions"))
        segmentation.CreateDefaultDisplayNodes()
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
        keep(f"map:{key}", add_volume(scene, array, geometry, f"{prefix} {key}"))
    return run


def _attribution_volume(scene, array: np.ndarray, geometry: Geometry, name: str, value_function: str):
    values = np.asarray(array, dtype=np.float32)
    node = add_volume(scene, values, geometry, name)
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
    add_color_legend(node, f"attribution ({value_function})" if value_function else "attribution")
    return node


def _players_segmentation(scene, labels: np.ndarray, geometry: Geometry, result: dict, name: str, top_k: int):
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

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation.CreateDefaultDisplayNodes()
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


def _ranking_table_and_chart(scene, result: dict, prefix: str):
    """Table: one row per player in ranking order (value, std, value ± std, ranks, one column per model);
    chart: bars of the mean value plus one bar series per model (fold), so the spread across folds is visible."""
    players = {p["name"]: p for p in result["players"]}
    names = [n for n in result.get("ranking", []) if n in players] + [n for n in players if n not in result.get("ranking", [])]
    n_models = max((len(p.get("per_model") or []) for p in players.values()), default=0)
    model_names = [m.get("model", f"model {i}") for i, m in enumerate(result.get("per_model") or [])]
    fold_columns = [f"fold {i}" for i in range(n_models)]

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{prefix} ranking"))

    def number(player: dict, key: str) -> float:
        value = player.get(key)
        return float(value) if isinstance(value, (int, float)) else np.nan

    values = [number(players[n], "value") for n in names]
    std = [0.0 if np.isnan(s) else s for s in (number(players[n], "std") for n in names)]
    columns: list[tuple[str, list]] = [("player", names), ("rank", list(range(1, len(names) + 1))), ("value", values),
                                       ("std", std), ("value - std", [v - s for v, s in zip(values, std)]),
                                       ("value + std", [v + s for v, s in zip(values, std)])]
    for key in ("std_error", "mean_rank", "rank_variance", "volume_ml"):  # what the method reports, nothing invented
        if any(isinstance(players[n].get(key), (int, float)) for n in names):
            columns.append((key, [number(players[n], key) for n in names]))
    for i, column in enumerate(fold_columns):
        columns.append((column, [float((players[n].get("per_model") or [np.nan] * n_models)[i]) for n in names]))
    vtk_table = table.GetTable()
    for column_name, values in columns:
        if column_name == "player":
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue(str(v))
        elif column_name == "rank":
            array = vtk.vtkIntArray()
            for v in values:
                array.InsertNextValue(int(v))
        else:
            array = vtk.vtkDoubleArray()
            for v in values:
                array.InsertNextValue(float(v))
        array.SetName(column_name)
        vtk_table.AddColumn(array)
    table.SetColumnDescription("value", f"{result.get('method', '')} attribution, mean over models ({result.get('value_function', '')})")
    table.SetColumnDescription("std", "sample standard deviation across models (folds)")
    for i, column in enumerate(fold_columns):
        if i < len(model_names):
            table.SetColumnDescription(column, str(model_names[i]))
    table.Modified()

    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{prefix} chart"))
    chart.SetTitle(f"{result.get('method', '')}: {result.get('target_label', '')} ({result.get('value_function', '')})")
    chart.SetXAxisTitle("rank: " + ", ".join(names[:12]) + (" …" if len(names) > 12 else ""))
    chart.SetYAxisTitle("attribution")
    chart.SetLegendVisibility(True)
    series_specs = [("mean over models", "value", (0.80, 0.20, 0.20))]
    palette = [(0.55, 0.55, 0.55), (0.65, 0.65, 0.75), (0.75, 0.70, 0.60), (0.60, 0.72, 0.62), (0.72, 0.60, 0.72)]
    if n_models > 1:
        series_specs += [(column, column, palette[i % len(palette)]) for i, column in enumerate(fold_columns)]
    for label, column, color in series_specs:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{prefix} {label}"))
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("rank")
        series.SetYColumnName(column)
        series.SetLabelColumnName("player")
        series.SetPlotType(vtkMRMLPlotSeriesNode.PlotTypeBar)
        series.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return table, chart


# ---------------------------------------------------------------------------------------------------------------
# finding runs again (after a reload) and headless scenes
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


def new_scene(cache_dir: str | Path | None = None) -> vtkMRMLScene:
    """A scene outside Slicer's GUI (slicer-core, tests, web front end) that can also read and write .mrb bundles."""
    from slicer import vtkDataIOManagerLogic, vtkMRMLRemoteIOLogic, vtkSlicerApplicationLogic

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


__all__ = [
    "ATTR_RUN", "ATTR_ROLE", "CaseFiles", "LoadedRun", "add_color_legend", "add_roi_node", "add_volume", "array_from_volume",
    "bounding_box_ras", "case_from_volumes", "target_label_values", "diverging_color_node", "find_runs", "labels_from_node", "load_mrb",
    "load_result", "load_results", "new_scene", "roi_box", "roi_mask", "save_mrb", "show_in_slice_views", "table_column",
    "volume_geometry", "write_case_files",
]
