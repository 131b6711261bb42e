"""Writes a real nnU-Net v2 results folder with nnU-Net's own code (random weights), for the format tests.

Run as a script (nnU-Net reads its nnUNet_raw / _preprocessed / _results paths from the environment at import):
    python nnunet_results.py WORKDIR [--regions]
A tiny 2-channel raw data set is written in nnU-Net's layout, fingerprinted and planned by nnU-Net's planner,
and an nnUNetTrainer for 3d_fullres fold 0 is initialised and checkpointed exactly as training would save it.
With --regions the data set is region-based, as nnU-Net's own BraTS conversion writes it: nested labels 1 (oedema),
2 (non-enhancing core), 3 (enhancing), and the regions whole tumor (1, 2, 3), tumor core (2, 3), enhancing tumor (3)
with `regions_class_order`, so the network has one sigmoid output per region. Prints the results folder.
"""

import os
import sys
from pathlib import Path

REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


def main(work: Path, regions: bool = False) -> Path:
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{name}"] = str(work / name)
    import numpy as np
    import nibabel as nib
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args

    dataset_id, name = (43, "Dataset043_TinyRegions") if regions else (42, "Dataset042_Tiny")
    raw = work / "raw" / name
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.2, 1.0, 1.5, 1.0])
    for case in range(3):
        shape = (36, 40, 28)
        i, j, k = np.indices(shape)
        r2 = (i - 18 - case) ** 2 / 64 + (j - 20) ** 2 / 49 + (k - 14) ** 2 / 36
        blob = r2 <= 1
        label = (blob.astype(np.uint8) + (r2 <= 0.4) + (r2 <= 0.15)) if regions else blob.astype(np.uint8)
        for c in range(2):
            image = rng.normal(size=shape).astype(np.float32) + 3 * blob * (c + 1) + (2 * (r2 <= 0.15) if regions and c == 0 else 0)
            nib.save(nib.Nifti1Image(image, affine), str(raw / "imagesTr" / f"tiny_{case:03d}_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(raw / "labelsTr" / f"tiny_{case:03d}.nii.gz"))
    dataset = {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 3,
               "file_ending": ".nii.gz"}
    if regions:
        dataset.update(labels=REGION_LABELS, regions_class_order=[1, 2, 3])
    save_json(dataset, str(raw / "dataset.json"), sort_keys=False)
    extract_fingerprints([dataset_id], num_processes=1, verbose=False, show_progress_bar=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    torch.manual_seed(0)
    trainer = get_trainer_from_args(str(dataset_id), "3d_fullres", 0, device=torch.device("cpu"))
    trainer.initialize()
    Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
    save_json(trainer.plans_manager.plans, join(trainer.output_folder_base, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, join(trainer.output_folder_base, "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(join(trainer.output_folder, "checkpoint_final.pth"))
    return Path(trainer.output_folder_base)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]).resolve(), regions="--regions" in sys.argv[2:]))
