"""What is being explained: a label, a label set (BraTS WT / TC / ET) or a sigmoid output channel.

Probabilities come from the fused logits: softmax models give a region's probability as the sum of its classes'
probabilities and its hard mask as "argmax is one of its classes"; sigmoid (region-based) models give one
channel per region, thresholded at 0.5.

A reference or ground-truth label map is read with the label values the model's own metadata gives for the target
(nnU-Net's dataset.json regions, a bundle's `region_labels`, segxai.json `regions`, or --region-labels): for a
region-based model these are not the output channel numbers, and conventions differ between data sets (nnU-Net's
BraTS tumour core is labels 2 and 3, not 1 and 3), so nothing is assumed when the metadata is silent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .errors import InputError

# BraTS conventions for softmax models: labels 1 necrosis (NCR), 2 oedema (ED), 3 enhancing tumour (ET).
BRATS_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
REGION_SOURCES = "nnU-Net dataset.json regions, a MONAI bundle's outputs.pred.region_labels, segxai.json \"regions\""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    channels: tuple[int, ...]            # output channels that make up the target
    activation: str                      # "softmax" | "sigmoid"
    ref_labels: tuple[int, ...] | None   # values in a reference label map that count as the target (None: not known)

    def prob(self, logits: torch.Tensor) -> torch.Tensor:
        """Target probability per voxel from logits (K, N)."""
        if self.activation == "sigmoid":
            return torch.sigmoid(logits[self.channels[0]])
        return torch.softmax(logits, dim=0)[list(self.channels)].sum(0)

    def hard(self, logits: torch.Tensor) -> torch.Tensor:
        """Target mask per voxel from logits (K, N): the argmax class (first of tied maxima) is one of the channels.

        `max(0).indices` and a lookup table give the same mask as `isin(argmax(0), channels)` about 20× faster on
        the CPU (argmax and isin over the short class axis are slow), and this runs once per coalition."""
        if self.activation == "sigmoid":
            return logits[self.channels[0]] > 0
        member = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        member[list(self.channels)] = True
        return member[logits.max(0).indices]

    def in_reference(self, labels: np.ndarray) -> np.ndarray:
        if self.ref_labels is None:
            raise InputError(f"The model's metadata does not say which label values of a reference or ground-truth map make up "
                             f"its output {self.name!r} (a region-based model).",
                             f"Give them in the model's metadata ({REGION_SOURCES}) or with --region-labels "
                             f"'{{\"{self.name}\": [1, 2, 3]}}'.")
        return np.isin(labels, self.ref_labels)

    def to_json(self) -> dict:
        return {"name": self.name, "labels": None if self.ref_labels is None else list(self.ref_labels),
                "output_channels": list(self.channels), "activation": self.activation}


def _initials(name: str) -> str:
    """"tumor core" → "tc", "whole_tumour" → "wt": how BraTS region names are abbreviated."""
    return "".join(word[0] for word in name.replace("_", " ").replace("-", " ").split()).lower()


def _label_set(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(sorted(int(p) for p in text.split(",")))
    except ValueError:
        return None


def _sigmoid_target(text: str, labels: dict[str, int], regions: dict[str, tuple[int, ...]], n_outputs: int | None) -> Target:
    """By output name, its initials ("TC" for "tumor core"), its label set when regions are known ("2,3"), else a
    channel number."""
    initials: dict[str, list[str]] = {}
    for k in labels:
        initials.setdefault(_initials(k), []).append(k)
    names = [k for k in labels if k.lower() == text.lower()] or initials.get(text.lower(), [])
    if not names and regions:
        names = [k for k, v in regions.items() if tuple(sorted(v)) == _label_set(text)]
    if len(names) == 1:
        name = names[0]
        channel = labels[name] if name in labels else int(name)  # a region given by channel number
    elif text.isdigit() and not regions:
        name, channel = text, int(text)
    else:
        known = ", ".join(f"{k} ({_initials(k).upper()})" if len(_initials(k)) > 1 else k for k in labels) or "none named"
        raise InputError(f"Target {text!r} is not an output of this region-based model; its outputs are: {known}.",
                         "Give one of its output names, their initials, or the label set of a region (e.g. 2,3).")
    if n_outputs is not None and not 0 <= channel < n_outputs:
        raise InputError(f"Target {text!r} is output channel {channel}, but the model gives {n_outputs} output channels.",
                         "Choose one of its outputs (describe-model lists them), or correct the model's labels.")
    refs = regions.get(name, regions.get(str(channel)))
    return Target(text, (channel,), "sigmoid", tuple(refs) if refs else None)


def parse_target(spec: str, labels: dict[str, int], activation: str, n_outputs: int | None = None,
                 regions: dict[str, tuple[int, ...]] | None = None) -> Target:
    """"2", "oedema", "WT" / "TC" / "ET" or a label set "1,3", checked against the model's labels.

    Region-based (sigmoid) models name their outputs; `regions` gives each output's label values in a label map.
    """
    text = str(spec).strip()
    if activation == "sigmoid":
        return _sigmoid_target(text, labels, dict(regions or {}), n_outputs)
    by_name = {k.lower(): v for k, v in labels.items()}
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
