"""HTML reports: `write_report(result_dir)` for one result folder, `write_index(folder, reports)` linking several.
`SegXAILib.report.html` holds the reusable page machinery (templates, embedded images)."""

from .page import REPORT_FILE, write_index, write_report

__all__ = ["REPORT_FILE", "write_index", "write_report"]
