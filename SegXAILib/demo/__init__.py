"""The demo: a seeded BraTS-like brain MRI generator (`brain`) and the command that explains the shipped fold models on it."""

from .brain import CHANNELS, LABELS, BrainCase, make_brain_case, write_case

__all__ = ["CHANNELS", "LABELS", "BrainCase", "make_brain_case", "write_case"]
