"""Writes a real nnU-Net v2 results folder with nnU-Net's own code (random weights), for the format tests.

Run as a script (nnU-Net reads its nnUNet_raw / _preprocessed / _results paths from the environment at import):
    python nnunet_results.py WORKDIR
A tiny 2-channel raw data set is written in nnU-Net's layout, fingerprinted and planned by nnU-Net's planner,
and an nnUNetTrainer for 3d_fullres fold 0 is initialised and checkpointed exactly as training would save it.
Prints the results folder.
"""

import os
import sys
from pathlib import Path


def main(work: Path) -> Path:
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{name}"] = str(work / name)
    import numpy as np
    import nibabel as nib
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args

    raw = work / "raw" / "Dataset042_Tiny"
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.2, 1.0, 1.5, 1.0])
    for case in range(3):
        shape = (36, 40, 28)
        i, j, k = np.indices(shape)
        blob = ((i - 18 - case) ** 2 / 64 + (j - 20) ** 2 / 49 + (k - 14) ** 2 / 36) <= 1
        label = blob.astype(np.uint8)
        for c in range(2):
            image = rng.normal(size=shape).astype(np.float32) + 3 * blob * (c + 1)
            nib.save(nib.Nifti1Image(image, affine), str(raw / "imagesTr" / f"tiny_{case:03d}_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(raw / "labelsTr" / f"tiny_{case:03d}.nii.gz"))
    save_json({"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 3,
               "file_ending": ".nii.gz"}, str(raw / "dataset.json"))
    extract_fingerprints([42], num_processes=1, verbose=False, show_progress_bar=False)
    plan_experiments([42])
    preprocess([42], configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    torch.manual_seed(0)
    trainer = get_trainer_from_args("42", "3d_fullres", 0, device=torch.device("cpu"))
    trainer.initialize()
    Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
    save_json(trainer.plans_manager.plans, join(trainer.output_folder_base, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, join(trainer.output_folder_base, "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(join(trainer.output_folder, "checkpoint_final.pth"))
    return Path(trainer.output_folder_base)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]).resolve()))
