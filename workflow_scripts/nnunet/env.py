"""Set up nnU-Net's environment before nnunetv2 is imported.

nnU-Net reads its folders and process counts from environment variables, some of them at import
time, so every entry point calls ``configure`` first and imports nnunetv2 afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure(raw=None, preprocessed=None, results=None, threads: int = 1, da_processes: int = 0) -> None:
    """Point nnU-Net at our folders and keep its process counts inside the job's threads.

    `da_processes=0` runs data augmentation in the training process (nnU-Net's default would
    start up to 12 workers; on a 2-core job they only fight over the cores).
    """
    for name, value in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed), ("nnUNet_results", results)):
        if value is not None:
            os.environ[name] = str(Path(value).resolve())
    threads = max(1, int(threads))
    os.environ["nnUNet_def_n_proc"] = str(threads)
    os.environ["nnUNet_n_proc_DA"] = str(da_processes)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


def dataset_name(dataset_id: int, modality: str) -> str:
    """nnU-Net's folder name for one modality's dataset, e.g. Dataset501_T1."""
    return f"Dataset{int(dataset_id):03d}_{modality}"
