"""Synthetic BraTS-like studies built on the MNI ICBM152 template shipped with nilearn (no downloads)."""

from .study import SyntheticStudy, generate_study

__all__ = ["SyntheticStudy", "generate_study"]
