"""Reading run logs back and rendering them: text, JSON, HTML with plots."""

from gradprobe.report.summary import RunSummary, summarize_logs

__all__ = ["RunSummary", "summarize_logs"]
