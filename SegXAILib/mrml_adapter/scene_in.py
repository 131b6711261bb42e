"""Scene in: the user's volumes, ROI and reference → arrays and the case files the engine reads.

Nothing the user made is modified: a segmentation is read through a copy, so no representation is added to it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import vtk

from slicer import vtkMRMLScene, vtkMRMLSegmentationNode, vtkOrientedImageData, vtkSegmentation

from ..errors import InputError
from ..volumes import Case, Geometry, box_mask, onto_grid, resample_to, write_volume
from ._vtk import _extent_offset, _image_to_array, _safe, _to_array, _to_world


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
        geometry = geometry or geo
        array, = onto_grid([array], geo, geometry, resample, node.GetName(), nodes[0].GetName(),
                           "Resample it onto the first volume (Resample Scalar/Vector/DWI Volume), or allow resampling.")
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
        mask = _rotated_box_mask(object_to_world, size, geometry)
        if not mask.any():
            raise InputError(f"The ROI {roi_node.GetName()} lies outside the image.", "Move the ROI box over the image.")
    if roi_node.GetInsideOut():
        mask = ~mask
    return mask


def _rotated_box_mask(object_to_world: np.ndarray, size: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The rotated box tested only on the voxels of its IJK bounding block: memory follows the ROI, not the image
    (a full-grid index array is about 2.5 GB for a 512×512×400 CT, inside Slicer's own process)."""
    mask = np.zeros(geometry.shape, bool)
    corners = np.array([[sx, sy, sz, 1.0] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)])
    corners[:, :3] *= size
    ijk = (np.linalg.inv(geometry.affine) @ object_to_world @ corners.T)[:3]
    low = np.maximum(np.floor(ijk.min(1)).astype(int), 0)
    high = np.minimum(np.ceil(ijk.max(1)).astype(int) + 1, geometry.shape)
    if np.any(high <= low):
        return mask
    block = np.indices(tuple(high - low)).reshape(3, -1) + low[:, None]
    world_to_ijk_box = np.linalg.inv(object_to_world) @ geometry.affine
    local = world_to_ijk_box[:3, :3] @ block + world_to_ijk_box[:3, 3:4]
    inside = np.all(np.abs(local) <= size[:, None] / 2 + 1e-6, axis=0).reshape(tuple(high - low))
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = inside
    return mask


def roi_box(roi_node) -> list[float] | None:
    """[R1, A1, S1, R2, A2, S2] of an axis-aligned ROI (for `--roi-box`), or None when it is rotated."""
    object_to_world = _to_array(roi_node.GetObjectToWorldMatrix())
    if roi_node.GetInsideOut() or not np.allclose(np.abs(object_to_world[:3, :3]), np.eye(3), atol=1e-6):
        return None
    centre = object_to_world[:3, 3]
    half = np.abs(object_to_world[:3, :3]) @ (np.asarray(roi_node.GetSize(), dtype=float) / 2)
    return [*map(float, centre - half), *map(float, centre + half)]


def _detached_copy(segmentation_node) -> vtkMRMLSegmentationNode:
    """A segmentation node outside any scene holding a deep copy of the segments, with a binary labelmap."""
    segmentation = vtkSegmentation()
    segmentation.DeepCopy(segmentation_node.GetSegmentation())
    copy = vtkMRMLSegmentationNode()
    copy.SetAndObserveSegmentation(segmentation)
    source = segmentation.GetSourceRepresentationName() if hasattr(segmentation, "GetSourceRepresentationName") \
        else segmentation.GetMasterRepresentationName()
    if source != "Binary labelmap":
        copy.CreateBinaryLabelmapRepresentation()
    return copy


def _segment_array(segmentation_node, segment_id: str, to_world: np.ndarray) -> tuple[np.ndarray, Geometry]:
    image = vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    dims = image.GetDimensions()
    if min(dims) <= 0 or image.GetPointData().GetScalars() is None:
        return np.zeros((1, 1, 1), np.uint8), Geometry((1, 1, 1), np.eye(4))
    affine = to_world @ _to_array(matrix) @ _extent_offset(image)
    return _image_to_array(image) != 0, Geometry(tuple(int(d) for d in dims), affine)


def labels_from_node(node, geometry: Geometry, label_values: Mapping[str, int] | None = None) -> np.ndarray:
    """An int32 label array on `geometry` from a labelmap volume or a segmentation node (nearest neighbour).

    Segments get the value of the `label_values` entry matching their name (case-insensitive, e.g. the model's
    labels), else their position in the segmentation plus one, as Slicer exports a segmentation to a labelmap.
    """
    if isinstance(node, vtkMRMLSegmentationNode):
        to_world = _to_world(node)
        node = _detached_copy(node)  # converting to a labelmap adds a representation: never to the user's node
        segmentation = node.GetSegmentation()
        by_name = {str(k).lower(): int(v) for k, v in (label_values or {}).items()}
        labels = np.zeros(geometry.shape, np.int32)
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            name = segmentation.GetSegment(segment_id).GetName() or ""
            value = by_name.get(name.lower(), index + 1)
            binary, geo = _segment_array(node, segment_id, to_world)
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

    Written uncompressed (as MONAIAuto3DSeg does): this runs on Slicer's GUI thread, where gzip level 9 of a CT
    takes seconds, and the files are read once by the engine next to them.
    An axis-aligned ROI travels as `--roi-box` (exact and re-runnable); a rotated or inside-out one as a mask file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    case = case_from_volumes(volume_nodes, channel_names)
    images = []
    for c, node in enumerate(n for n in volume_nodes if n is not None):
        array, geometry = array_from_volume(node)
        images.append(str(write_volume(array, geometry, folder / f"image{c}_{_safe(case.channel_names[c])}{suffix}", compress=False)))
    box, mask_path = None, None
    if roi_node is not None:
        mask = roi_mask(roi_node, case.geometry)  # checks it covers the image
        box = roi_box(roi_node)
        if box is None:
            mask_path = str(write_volume(mask.astype(np.uint8), case.geometry, folder / f"roi{suffix}", compress=False))
    reference = None
    if reference_node is not None:
        labels = labels_from_node(reference_node, case.geometry, label_values)
        reference = str(write_volume(labels.astype(np.int16), case.geometry, folder / f"reference{suffix}", compress=False))
    return CaseFiles(images, mask_path, box, reference, case.geometry, list(case.channel_names))

