"""Training cases and checkpoints for training-data influence (TracIn).

Two sources of training cases, both loaded lazily, one case at a time (a training set of hundreds of cases never
sits in memory at once):
- the demo bundles: `training.json` beside a bundle folder records the generator and the seeds of each fold's
  training cases, so they are regenerated with `SegXAILib.demo.brain.make_brain_case` (no data set is shipped);
- a user folder (`--training-dir DIR`): `DIR/cases.json`, a list of {"images": [...], "labels": path, "id": name}
  (paths relative to DIR; or {"cases": [...]}), or one subfolder per case holding one image per model input
  channel named by the channel (`T1.nii.gz`, `FLAIR.nrrd` …, as `segxai demo` writes its case) and `labels.nii.gz`.

Checkpoints: `--tracin-checkpoint PATH:LR` (repeatable), or by default `checkpoints/checkpoints.json` inside the
model folder (a list of {"file", "learning_rate"} — what scripts/train_demo_models.py writes for fold 0). State
dicts load with weights_only=True and must fit the model's module exactly (names and shapes).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import InputError
from .volumes import Case, Geometry, load_case, load_mask

DEMO_GENERATOR = "SegXAILib.demo.brain.make_brain_case"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
LABEL_NAMES = tuple(f"labels{s}" for s in IMAGE_SUFFIXES)


@dataclasses.dataclass
class TrainingCase:
    id: str
    case: Case                 # images on the case grid, as stored (the model's `prepare` runs later)
    labels: np.ndarray         # int labels on the case grid
    seed: int | None = None


@dataclasses.dataclass
class TrainingSet:
    """Case ids (and seeds, for generated cases) plus a loader for case i; `description` goes into result.json."""

    ids: list[str]
    seeds: list[int | None]
    loader: Callable[[int], TrainingCase]
    description: dict

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> TrainingCase:
        return self.loader(index)

    def subset(self, n: int | None) -> "TrainingSet":
        if n is None or n >= len(self.ids):
            return self
        return TrainingSet(self.ids[:n], self.seeds[:n], self.loader, {**self.description, "subset": f"first {n} of {len(self.ids)}"})


@dataclasses.dataclass
class Checkpoint:
    path: Path
    learning_rate: float
    label: str             # file name, or "epoch 12" where the training record says so


# ----- training cases ------------------------------------------------------------------------------------------------
def demo_training_set(model_folder: str | Path) -> TrainingSet | None:
    """The fold's training cases of a demo bundle, regenerated from the seeds in ../training.json (None if not one)."""
    folder = Path(model_folder)
    record_file = folder.parent / "training.json"
    if not folder.is_dir() or not record_file.exists():
        return None
    record = json.loads(record_file.read_text())
    if record.get("generator") != DEMO_GENERATOR:
        return None
    fold = next((f for f in record.get("folds", []) if f.get("bundle") == folder.name), None)
    if fold is None:
        return None
    seeds = [int(s) for s in fold["train_case_seeds"]]
    shape = tuple(int(s) for s in record["case_shape"])
    spacing = float(record["case_spacing_mm"])

    def load(index: int) -> TrainingCase:
        from .demo.brain import make_brain_case

        seed = seeds[index]
        brain = make_brain_case(seed, shape=shape, spacing=spacing)
        case = Case(brain.images, Geometry(brain.shape, brain.affine), list(brain.channel_names), [f"make_brain_case({seed})"] * 4)
        return TrainingCase(f"seed {seed}", case, brain.labels.astype(np.int32), seed)

    return TrainingSet([f"seed {s}" for s in seeds], list(seeds), load,
                       {"source": "demo generator", "generator": DEMO_GENERATOR, "record": str(record_file), "fold": fold.get("fold"),
                        "case_shape": list(shape), "case_spacing_mm": spacing, "n_cases": len(seeds)})


def _image_file(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.exists():
            return path
    return None


def folder_training_set(folder: str | Path, channel_names: list[str] | None) -> TrainingSet:
    """A user's training cases: DIR/cases.json, or one subfolder per case (images named by channel, labels.nii.gz)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"The training folder {folder} does not exist.", "Pass --training-dir DIR (cases.json, or one subfolder per case).")
    listing = folder / "cases.json"
    entries: list[dict] = []
    if listing.exists():
        try:
            raw = json.loads(listing.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{listing} is not valid JSON: {exc}", "Write a list of {\"images\": [...], \"labels\": path}.") from None
        raw = raw.get("cases", []) if isinstance(raw, dict) else raw
        for n, item in enumerate(raw if isinstance(raw, list) else []):
            if not isinstance(item, dict) or not item.get("images") or not item.get("labels"):
                raise InputError(f"Entry {n} of {listing} lacks \"images\" or \"labels\".",
                                 "Give each case as {\"images\": [one path per channel], \"labels\": path}.")
            images = [folder / p for p in ([item["images"]] if isinstance(item["images"], str) else item["images"])]
            entries.append({"id": str(item.get("id", Path(str(item["labels"])).parent.name or f"case {n}")),
                            "images": images, "labels": folder / item["labels"]})
    else:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            labels = next((sub / n for n in LABEL_NAMES if (sub / n).exists()), None)
            if labels is None:
                continue
            if channel_names:
                images = [_image_file(sub, name) for name in channel_names]
                if any(p is None for p in images):
                    missing = [n for n, p in zip(channel_names, images) if p is None]
                    raise InputError(f"The training case {sub} has no image for channel(s) {', '.join(missing)}.",
                                     f"Name one image per channel {', '.join(channel_names)} (e.g. {channel_names[0]}.nii.gz).")
            else:
                images = sorted(p for p in sub.iterdir() if p.name.endswith(IMAGE_SUFFIXES) and p.name not in LABEL_NAMES)
                if len(images) != 1:
                    raise InputError(f"Cannot tell the channel order of the images in {sub}: the model does not name its channels.",
                                     "Pass --channels NAME,... and name each image by its channel, or list the cases in cases.json.")
            entries.append({"id": sub.name, "images": images, "labels": labels})
    if not entries:
        raise InputError(f"No training case found in {folder}.",
                         "Give cases.json, or one subfolder per case with an image per channel and labels.nii.gz.")
    for e in entries:
        for p in [*e["images"], e["labels"]]:
            if not Path(p).exists():
                raise InputError(f"The training case {e['id']} names {p}, which does not exist.", "Fix the paths (relative to the training folder).")

    def load(index: int) -> TrainingCase:
        e = entries[index]
        case = load_case([str(p) for p in e["images"]], channel_names if channel_names and len(channel_names) == len(e["images"]) else None)
        return TrainingCase(e["id"], case, load_mask(e["labels"], case.geometry, f"labels of training case {e['id']}"))

    return TrainingSet([e["id"] for e in entries], [None] * len(entries), load,
                       {"source": "folder", "folder": str(folder), "listing": "cases.json" if listing.exists() else "subfolders",
                        "n_cases": len(entries)})


def training_set(model_source: str, training_dir: str | None, channel_names: list[str] | None) -> TrainingSet:
    if training_dir:
        return folder_training_set(training_dir, channel_names)
    demo = demo_training_set(model_source)
    if demo is None:
        raise InputError("TracIn needs the model's training cases.",
                         "Pass --training-dir DIR (cases.json, or one subfolder per case with its images and labels.nii.gz).")
    return demo


# ----- checkpoints ---------------------------------------------------------------------------------------------------
def parse_checkpoint(spec: str) -> Checkpoint:
    """"PATH:LR" (split at the last colon, so Windows drive letters survive)."""
    path, sep, lr = str(spec).rpartition(":")
    try:
        rate = float(lr) if sep else float("nan")
    except ValueError:
        rate = float("nan")
    if not sep or not path or not np.isfinite(rate) or rate <= 0:
        raise InputError(f"Cannot read the checkpoint {spec!r}.", "Give each checkpoint as PATH:LEARNING_RATE, e.g. epoch_10.pt:0.001.")
    if not Path(path).is_file():
        raise InputError(f"The checkpoint {path} does not exist.", "Check the --tracin-checkpoint path.")
    return Checkpoint(Path(path), rate, Path(path).name)


def folder_checkpoints(model_folder: str | Path) -> list[Checkpoint]:
    """`checkpoints/checkpoints.json` inside a model folder: [{"file", "learning_rate"}, ...] (empty if none).

    Where the record also gives the mean learning rate since the previous checkpoint (the demo training does), that
    is the weight: TracIn's sum over training steps Σ_t η_t ⟨∇ℓ_test, ∇ℓ_z⟩ is approximated per checkpoint interval,
    whose steps' learning rates it sums (intervals are equally long)."""
    record = Path(model_folder) / "checkpoints" / "checkpoints.json"
    if not record.exists():
        return []
    out = []
    for entry in json.loads(record.read_text()):
        rate = float(entry.get("mean_learning_rate_since_previous", entry.get("learning_rate", 0.0)))
        label = f"epoch {entry['epoch']}" if "epoch" in entry else str(entry["file"])
        out.append(Checkpoint(record.parent / entry["file"], rate, label))
    return out


def resolve_checkpoints(model_source: str, specs: list[str] | None) -> list[Checkpoint]:
    checkpoints = [parse_checkpoint(s) for s in specs] if specs else folder_checkpoints(model_source)
    if not checkpoints:
        raise InputError("TracIn needs checkpoints saved during training, and none were given.",
                         "Pass --tracin-checkpoint PATH:LR once per saved checkpoint (state dict and its learning rate).")
    return checkpoints


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_checkpoint_state(checkpoint: Checkpoint, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict (weights_only=True), checked to fit `module` exactly, in its dtypes."""
    try:
        state = torch.load(str(checkpoint.path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"Cannot read the checkpoint {checkpoint.path} as a state dict (weights_only=True): {exc}",
                         "Save checkpoints with torch.save(model.state_dict(), path).") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "network_weights"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"The checkpoint {checkpoint.path} is not a state dict of tensors.", "Save checkpoints with torch.save(model.state_dict(), path).")
    state = {_strip(k): v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"missing {', '.join(missing[:3])}" if missing else "", f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
                 f"shapes differ: {'; '.join(shapes[:3])}" if shapes else ""]
        raise InputError(f"The checkpoint {checkpoint.path} does not fit the model: {'; '.join(p for p in parts if p)}.",
                         "Give checkpoints saved from this very network (same architecture and configuration) during its training.")
    return {k: state[k].to(v.dtype) for k, v in own.items()}
