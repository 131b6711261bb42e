"""What is being explained: a label, a label set (BraTS WT / TC / ET) or a sigmoid output channel.

Probabilities come from the fused logits: softmax models give a region's probability as the sum of its classes'
probabilities and its hard mask as "argmax is one of its classes"; sigmoid (region-based) models give one
channel per region, thresholded at 0.5.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .errors import InputError

# BraTS conventions: labels 1 necrosis (NCR), 2 oedema (ED), 3 enhancing tumour (ET).
BRATS_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    channels: tuple[int, ...]     # output channels that make up the target
    activation: str               # "softmax" | "sigmoid"
    ref_labels: tuple[int, ...]   # values in a reference label map that count as the target

    def prob(self, logits: torch.Tensor) -> torch.Tensor:
        """Target probability per voxel from logits (K, N)."""
        if self.activation == "sigmoid":
            return torch.sigmoid(logits[self.channels[0]])
        return torch.softmax(logits, dim=0)[list(self.channels)].sum(0)

    def hard(self, logits: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return logits[self.channels[0]] > 0
        return torch.isin(logits.argmax(0), torch.tensor(self.channels, device=logits.device))

    def in_reference(self, labels: np.ndarray) -> np.ndarray:
        return np.isin(labels, self.ref_labels)

    def to_json(self) -> dict:
        return {"name": self.name, "labels": list(self.ref_labels), "output_channels": list(self.channels),
                "activation": self.activation}


def parse_target(spec: str, labels: dict[str, int], activation: str, n_outputs: int | None = None) -> Target:
    """"2", "oedema", "WT" / "TC" / "ET" or a label set "1,3", checked against the model's labels."""
    text = str(spec).strip()
    by_name = {k.lower(): v for k, v in labels.items()}
    if activation == "sigmoid":
        if text.lower() in by_name:
            channel = by_name[text.lower()]
        elif text.isdigit():
            channel = int(text)
        else:
            raise InputError(f"Target {text!r} is not an output of this region-based model ({', '.join(labels) or 'no names'}).",
                             "Give one of its output names or a channel number.")
        refs = BRATS_REGIONS.get(text.upper(), (channel + 1,))
        return Target(text, (channel,), "sigmoid", refs)
    if text.upper() in BRATS_REGIONS and text.lower() not in by_name:
        channels = BRATS_REGIONS[text.upper()]
        name = text.upper()
    elif text.lower() in by_name:
        channels, name = (by_name[text.lower()],), text
    else:
        try:
            channels = tuple(int(p) for p in text.split(","))
        except ValueError:
            raise InputError(f"Unknown target {text!r}.", f"Give a label number, a label set like 1,3, a BraTS region (WT, TC, ET) or one of: {', '.join(labels)}.") from None
        name = text
    limit = n_outputs or (max(labels.values()) + 1 if labels else None)
    if any(c <= 0 for c in channels) or (limit and any(c >= limit for c in channels)):
        raise InputError(f"Target {text!r} names labels {channels}, but the model's foreground labels are 1..{(limit or 1) - 1}.",
                         "Choose a foreground label the model predicts.")
    return Target(name, tuple(channels), "softmax", tuple(channels))
