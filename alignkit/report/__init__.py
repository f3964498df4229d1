"""Self-contained HTML run reports."""

from alignkit.report.html import ReportError, write_report

__all__ = ["ReportError", "write_report"]
