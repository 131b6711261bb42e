"""What the panel shows for a given parameter node, as plain values (the widget only applies them to Qt)."""

from __future__ import annotations


def channel_rows(names: list[str], chosen: list[bool]) -> list[tuple[bool, str | None]]:
    """(visible, label) per volume selector: the model's channels when known, else the rows filled so far plus one
    empty row; label None means the generic "Channel n:"."""
    rows = []
    for c in range(len(chosen)):
        visible = c < len(names) if names else (c == 0 or chosen[c] or chosen[c - 1])
        rows.append((visible, f"{names[c]}:" if c < len(names) else None))
    return rows


def target_choices(labels: dict) -> list[str]:
    """The model's foreground labels, plus the BraTS regions when it has labels 1, 2 and 3."""
    brats = ["WT", "TC", "ET"] if {"1", "2", "3"} <= {str(v) for v in labels.values()} else []
    return [str(k) for k, v in labels.items() if int(v) > 0] + brats


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class NoSignals:
    """Blocks a widget's signals for the duration of a with-block."""

    def __init__(self, widget):
        self.widget = widget

    def __enter__(self):
        self.previous = self.widget.blockSignals(True)

    def __exit__(self, *exc):
        self.widget.blockSignals(self.previous)
