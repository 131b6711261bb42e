"""The one place where SegXAI meets MRML: scene → case files for the engine, and result folder → scene.

Imports only `slicer`'s MRML-level classes (vtkMRML*, the segmentation core and its static logic helpers), `vtk`
and numpy, never Qt, `slicer.app` or `slicer.util`. The same code therefore runs inside 3D Slicer and under the
`slicer-core` wheel (pytest, the web front end). Every function takes the scene (or nodes) it works on. Result
volumes are read by Slicer's own storage nodes (ITK), so opening a result needs nothing installed in Slicer.

Split by what it serves: `scene_in` (the user's nodes → arrays and files), `result_out` (result folders → nodes,
refreshed in place for anytime results), `display` (volumes, segmentations, colours, legends, slice layers) and
`scenes` (headless scenes and .mrb bundles). Nothing the user made is modified or renamed: every node created here
is new, named with `scene.GenerateUniqueName`, and tagged with the `SegXAI.*` attributes.
"""

from .display import _import_labels  # noqa: F401 (tests and older callers)
from ._vtk import _safe, _to_matrix  # noqa: F401
from .display import (ATTR_METHOD, ATTR_RANGE, ATTR_RESULT_DIR, ATTR_ROLE, ATTR_RUN, ATTR_TARGET, COLOR_NODE_NAME,
                      FOREGROUND_OPACITY, add_color_legend, add_volume, diverging_color_node, read_volume_node,
                      show_in_slice_views)
from .result_out import LoadedRun, find_runs, load_result, load_results, refresh_result, remove_run, table_column
from .scene_in import (CaseFiles, add_roi_node, array_from_volume, bounding_box_ras, case_from_volumes,
                       labels_from_node, roi_box, roi_mask, target_label_values, volume_geometry, write_case_files)
from .scenes import load_mrb, new_scene, save_mrb

__all__ = [
    "ATTR_METHOD", "ATTR_RANGE", "ATTR_RESULT_DIR", "ATTR_ROLE", "ATTR_RUN", "ATTR_TARGET", "COLOR_NODE_NAME",
    "FOREGROUND_OPACITY", "CaseFiles", "LoadedRun", "add_color_legend", "add_roi_node", "add_volume",
    "array_from_volume", "bounding_box_ras", "case_from_volumes", "diverging_color_node", "find_runs",
    "labels_from_node", "load_mrb", "load_result", "load_results", "new_scene", "read_volume_node", "refresh_result",
    "remove_run", "roi_box", "roi_mask", "save_mrb", "show_in_slice_views", "table_column", "target_label_values",
    "volume_geometry", "write_case_files",
]
