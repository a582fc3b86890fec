"""Reports of an audit run: Markdown, self-contained HTML with SVG plots, and JSON."""

from audit.reports.render import render_html, render_markdown, write_report

__all__ = ["render_html", "render_markdown", "write_report"]
