"""A target turns fused logits into the mask the hard value functions (Dice, TP, FP) score."""

import numpy as np
import pytest
import torch

from SegXAILib.targets import parse_target

LABELS = {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}


@pytest.mark.parametrize("text, channels", [("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)), ("2", (2,))])
def test_hard_mask_is_the_first_argmax_class_in_the_target(text, channels):
    """Small integer logits make most voxels tie; numpy's argmax (first of tied maxima) is the definition."""
    logits = torch.randint(0, 3, (4, 20_000), generator=torch.Generator().manual_seed(0)).float()
    target = parse_target(text, LABELS, "softmax", 4)
    expected = np.isin(logits.numpy().argmax(0), channels)
    assert target.channels == channels
    assert np.array_equal(target.hard(logits).numpy(), expected)
    assert 0 < expected.sum() < expected.size
