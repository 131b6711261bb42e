"""What the user may say about a model that its file does not (or that overrides what the file says)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ModelOptions:
    trust: bool = False                       # allow formats whose loading executes code (pickles, bundle expressions)
    channels: list[str] | None = None         # input channel names, in order
    labels: dict[str, int] | None = None      # class name -> output channel
    activation: str | None = None             # "softmax" | "sigmoid"
    regions: dict[str, list[int]] | None = None  # region-based models: output name -> its label values in a label map
    window: tuple[int, ...] | None = None     # sliding-window size; None = the model's own, or whole volume
    overlap: float | None = None
    preprocess: str = "none"                  # TorchScript / factory models: none | zscore | ct
    factory: str | None = None                # "package.module:callable" building the network for a state dict
    factory_kwargs: dict | None = None
    folds: list[str] | None = None            # nnU-Net folds to use (default: all found)
    checkpoint: str = "checkpoint_final.pth"  # nnU-Net checkpoint file name
    mirroring: bool = True                    # nnU-Net test-time mirroring, as nnU-Net predicts by default
