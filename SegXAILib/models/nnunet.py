"""nnU-Net v2 results folders: plans, dataset.json, one model per fold, nnU-Net's own preprocessing and fusion.

Everything that defines the model's behaviour goes through nnU-Net's code: `nnUNetPredictor` builds the
network from the plans and loads each fold's checkpoint, `run_case_npy` crops, normalises and resamples,
and the window forward is nnU-Net's own mirror-averaged prediction. The case is handed to nnU-Net in the
axis order nnU-Net's SimpleITK reader would give it ((k, j, i), spacing reversed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError, TrustError, brief
from ..result import sha256
from ..volumes import Case, Geometry
from ..windows import WindowSpec
from .base import LoadedModel, Prepared, region_labels
from .options import ModelOptions


def is_nnunet_folder(path: Path) -> bool:
    return path.is_dir() and (path / "plans.json").exists() and (path / "dataset.json").exists()


def nnunet_folds(path: Path, checkpoint: str) -> list[str]:
    return sorted(p.name[len("fold_"):] for p in path.glob("fold_*") if (p / checkpoint).exists())


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"Cannot read {file} as JSON: {brief(exc)}.",
                         f"Restore {file.name} as nnU-Net wrote it (it is copied from the nnU-Net preprocessed data set).") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{file} holds a JSON {type(data).__name__}, not the object nnU-Net writes.", f"Restore {file.name} as nnU-Net wrote it.")
    return data


def nnunet_metadata(path: Path) -> dict:
    """Channels, labels, regions and patch size from dataset.json / plans.json (no code runs).

    Regions are read by nnU-Net's own LabelManager: a data set with label tuples is region-based, with one sigmoid
    output per region in dataset.json order (background and the ignore label excluded).
    """
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dataset, plans = _read_json(path / "dataset.json"), _read_json(path / "plans.json")
    configuration = path.name.split("__")[-1] if "__" in path.name else "3d_fullres"
    try:
        configs = plans["configurations"]
        config = configs.get(configuration) or next(iter(configs.values()))
        channels = [str(dataset["channel_names"][k]) for k in sorted(dataset["channel_names"], key=int)]
        raw = dataset["labels"]
        manager = LabelManager(raw, dataset.get("regions_class_order"))
        patch_size = config.get("patch_size")
    except Exception as exc:
        raise ModelError(f"The nnU-Net dataset.json / plans.json in {path} are not what nnU-Net v2 writes: {brief(exc)}.",
                         "Restore dataset.json and plans.json as nnU-Net wrote them (channel_names, labels, configurations).") from exc
    names = [k for k in raw if k not in ("background", "ignore")]
    if manager.has_regions:  # names in the order of nnU-Net's own region list
        regions = {name: tuple(int(v) for v in np.atleast_1d(raw[name])) for name in names}
        regions = {name: r for name, r in regions.items() if set(r) != {0}}
        labels = {name: i for i, name in enumerate(regions)}
    else:
        regions, labels = {}, {name: int(v) for name, v in raw.items() if name != "ignore"}
    return {"channels": channels, "labels": labels, "regions": regions, "has_regions": manager.has_regions,
            "configuration": configuration, "patch_size": patch_size}


def load_nnunet(path: Path, options: ModelOptions) -> list[LoadedModel]:
    meta = nnunet_metadata(path)
    folds = options.folds or nnunet_folds(path, options.checkpoint)
    if not folds:
        raise ModelError(f"{path} has no fold_*/{options.checkpoint}.", "Point to a trained nnU-Net results folder, or set the checkpoint name.")
    if not options.trust:
        raise TrustError(f"{path} holds nnU-Net checkpoints, which are pickles: loading them executes code stored in the files.",
                         "Only if you trust the model's author, pass --trust.")
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    labels = options.labels or meta["labels"]
    regions = region_labels(labels, options.regions, "--region-labels", InputError) or meta["regions"]
    overlap = options.overlap if options.overlap is not None else 0.5
    models = []
    for fold in folds:
        predictor = nnUNetPredictor(tile_step_size=1.0 - overlap, use_gaussian=True, use_mirroring=options.mirroring,
                                    perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                    allow_tqdm=False)
        try:
            predictor.initialize_from_trained_model_folder(str(path), use_folds=(fold if fold == "all" else int(fold),),
                                                           checkpoint_name=options.checkpoint)
        except Exception as exc:
            raise ModelError(f"nnU-Net could not load fold {fold} of {path}: {brief(exc)}", "Check that the folder was written by nnU-Net v2.") from exc
        predictor.network.eval()
        checkpoint = path / f"fold_{fold}" / options.checkpoint
        models.append(LoadedModel(
            name=f"{path.name}/fold_{fold}", format="nnunet-v2", source=str(checkpoint), sha256=sha256(checkpoint),
            forward=predictor._internal_maybe_mirror_and_predict, module=predictor.network,
            in_channels=len(meta["channels"]), channel_names=options.channels or meta["channels"],
            labels=labels, activation="sigmoid" if meta["has_regions"] else "softmax",
            window=WindowSpec("nnunet", tuple(predictor.configuration_manager.patch_size), overlap, "gaussian", 1.0 / 8),
            prepare=_nnunet_prepare(predictor), preprocessing=f"nnU-Net {meta['configuration']} (crop, normalise, resample)",
            regions=regions))
    return models


def _nnunet_prepare(predictor):
    def prepare(case: Case) -> Prepared:
        plans, config = predictor.plans_manager, predictor.configuration_manager
        data = case.images.transpose(0, 3, 2, 1)  # (c, k, j, i) as SimpleITK reads it
        props = {"spacing": [float(s) for s in case.geometry.spacing[::-1]]}
        preprocessor = config.preprocessor_class(verbose=False)
        data, _, props = preprocessor.run_case_npy(data, None, props, plans, config, predictor.dataset_json)
        # Geometry of the model grid: axis permutation, nnU-Net's transpose, crop, then resampling whose voxel
        # centres map back as in = (out + 0.5) * scale - 0.5.
        perm = [2, 1, 0]
        perm = [perm[t] for t in plans.transpose_forward]
        affine = case.geometry.affine.copy()
        affine[:3, :3] = affine[:3, :3][:, perm]
        lo = np.array([b[0] for b in props["bbox_used_for_cropping"]], dtype=float)
        cropped = np.array(props["shape_after_cropping_and_before_resampling"], dtype=float)
        scale = cropped / np.array(data.shape[1:], dtype=float)
        step = np.eye(4)
        step[:3, :3] = np.diag(scale)
        step[:3, 3] = lo + (scale - 1) / 2
        return Prepared(np.ascontiguousarray(data, dtype=np.float32), Geometry(tuple(data.shape[1:]), affine @ step))

    return prepare
