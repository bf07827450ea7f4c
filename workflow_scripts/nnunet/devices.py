"""Pick the torch device a job runs on (shared by training, prediction and segmentation)."""

from __future__ import annotations


def pick_device(name: str):
    """`auto`: a GPU when torch sees one, else the CPU; `cuda` without a GPU is an error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU")
    return torch.device(name)
