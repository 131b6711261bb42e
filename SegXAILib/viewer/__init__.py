"""`segxai view`: a result in Slicer's own slice and 3D views in the browser (trame-slicer over the MRML scene)."""

from .app import ResultViewer, view_result_folders

__all__ = ["ResultViewer", "view_result_folders"]
