"""Value functions v(S) on the ROI: how much of the target segmentation survives when only coalition S is present.

All take the fused logits at the ROI voxels (K, N), a Target and the reference mask at the same voxels, and
return a float. Conventions for empty sets are fixed here so a value is never NaN:
- dice / soft-dice: 1.0 when prediction and reference are both empty inside the ROI (they agree), else the usual ratio;
- tp-rate: 0.0 when the reference is empty inside the ROI; fp-rate: 0.0 when the ROI is all reference;
- tp / fp are voxel counts inside the ROI; mean-prob is the mean target probability over the ROI.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import InputError
from .targets import Target

ValueFn = Callable[[torch.Tensor, Target, torch.Tensor], float]


def _ratio(num: torch.Tensor, den: torch.Tensor, empty: float) -> float:
    den = float(den)
    return empty if den == 0 else float(num) / den


def dice(logits, target: Target, ref) -> float:
    pred = target.hard(logits)
    return _ratio(2 * (pred & ref).sum(), pred.sum() + ref.sum(), 1.0)


def soft_dice(logits, target: Target, ref) -> float:
    p = target.prob(logits).double()
    return _ratio(2 * (p * ref).sum(), p.sum() + ref.sum(), 1.0)


def tp(logits, target: Target, ref) -> float:
    return float((target.hard(logits) & ref).sum())


def fp(logits, target: Target, ref) -> float:
    return float((target.hard(logits) & ~ref).sum())


def tp_rate(logits, target: Target, ref) -> float:
    return _ratio((target.hard(logits) & ref).sum(), ref.sum(), 0.0)


def fp_rate(logits, target: Target, ref) -> float:
    return _ratio((target.hard(logits) & ~ref).sum(), (~ref).sum(), 0.0)


def mean_prob(logits, target: Target, ref) -> float:
    return float(target.prob(logits).double().mean())


VALUE_FUNCTIONS: dict[str, ValueFn] = {"dice": dice, "soft-dice": soft_dice, "tp": tp, "fp": fp, "tp-rate": tp_rate,
                                       "fp-rate": fp_rate, "mean-prob": mean_prob}


def value_function(name: str) -> ValueFn:
    try:
        return VALUE_FUNCTIONS[name]
    except KeyError:
        raise InputError(f"Unknown value function {name!r}.", f"Choose one of: {', '.join(VALUE_FUNCTIONS)}.") from None
