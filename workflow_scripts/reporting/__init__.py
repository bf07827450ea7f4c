"""Reporting: figures, the paper's tables, leave-one-center-out tables, overlays, software versions."""
