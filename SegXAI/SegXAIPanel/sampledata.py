"""The demo case in Slicer's Sample Data module, so a first-time user can try SegXAI with one click.

The case (four MRI contrasts and tumour labels, the synthetic subject `segxai demo` explains) ships with the
extension, so its URIs are local files, checked by SHA-256 as SampleData checks downloads. The five demo models are
MONAI bundle folders, which SampleData cannot load into a scene: `DEMO_MODELS` lists them for the panel's
"Demo models" button.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CATEGORY = "SegXAI"
CHANNELS = ("T1", "T1c", "T2", "FLAIR")


def resources() -> Path:
    """SegXAILib/Resources, where the extension installs it (beside the module) or in a source checkout."""
    import SegXAILib

    return Path(SegXAILib.__file__).resolve().parent / "Resources"


def demo_case_files() -> dict[str, Path]:
    folder = resources() / "demo_case"
    return {**{c: folder / f"{c}.nii.gz" for c in CHANNELS}, "labels": folder / "labels.nii.gz"}


def demo_models() -> list[Path]:
    """The five cross-validation folds (MONAI bundles) trained on the demo subjects."""
    return sorted(p for p in (resources() / "demo_models").glob("fold*") if (p / "configs" / "inference.json").exists())


def sample_sources(thumbnail: str | None = None) -> list[dict]:
    """Keyword arguments for SampleDataLogic.registerCustomSampleDataSource, one dict per sample."""
    files = demo_case_files()
    names = [*CHANNELS, "labels"]
    return [{
        "category": CATEGORY,
        "sampleName": "SegXAIBrainDemo",
        "thumbnailFileName": thumbnail,
        "uris": [files[n].resolve().as_uri() for n in names],
        "fileNames": [files[n].name for n in names],
        "nodeNames": [f"SegXAI demo {n}" for n in names],
        "checksums": [f"SHA256:{hashlib.sha256(files[n].read_bytes()).hexdigest()}" for n in names],
        "loadFileTypes": ["VolumeFile"] * len(CHANNELS) + ["SegmentationFile"],
    }]


def register(thumbnail: str | None = None) -> None:
    """Called on Slicer's startupCompleted (SampleData may load after this module)."""
    import SampleData

    for source in sample_sources(thumbnail):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)
