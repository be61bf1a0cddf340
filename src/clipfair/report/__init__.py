"""The report model (sections rendered to Markdown and HTML), figures and confusion tables.

Layer: report.
"""
