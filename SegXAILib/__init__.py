"""SegXAI's engine: explains 3D medical image segmentation models (see DESIGN.md for the layers).

Importing the package is cheap and never imports Slicer, Qt or torch; front ends call `SegXAILib.run.run`.
"""

__version__ = "0.1.0"
