"""REPORT.md and PROBE.md: generated from the results frames and the verdict table, never
hand-edited. ``papers`` writes what ``pytest claims/`` owns, ``sensitivity`` the grid's section,
``figures`` the papers' figures, ``figures_sensitivity`` the grid's, ``markdown`` the shared
formats and writers, ``probe`` the report of ``moegeo probe``."""

from .papers import render, write_report
from .sensitivity import sensitivity_section, sensitivity_sentences, write_sensitivity

__all__ = ["render", "sensitivity_section", "sensitivity_sentences", "write_report", "write_sensitivity"]
