"""VTK plumbing shared by the adapter: matrices, (I, J, K) arrays ⇄ vtkImageData, node lookups.

Arrays are indexed (i, j, k) like `SegXAILib.volumes`; VTK image scalars are stored k-slowest, hence the
transposes; geometry is the node's IJK→RAS matrix composed with any linear parent transform (world RAS).
"""

from __future__ import annotations

import numpy as np
import vtk
from vtkmodules.util import numpy_support

from slicer import vtkMRMLScene, vtkOrientedImageData

from ..errors import InputError
from ..volumes import Geometry


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



def _oriented_image(array: np.ndarray, geometry: Geometry):
    image = vtkOrientedImageData()
    _array_to_image(array, image)
    image.SetImageToWorldMatrix(_to_matrix(geometry.affine))
    return image



def _register(scene: vtkMRMLScene, node_class) -> None:
    name = node_class.__name__ if isinstance(node_class, type) else node_class.GetClassName()
    if not scene.IsNodeClassRegistered(name):
        scene.RegisterNodeClass(node_class())



def _nodes(scene: vtkMRMLScene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]



def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40] or "x"

