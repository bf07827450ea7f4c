"""Checkpoints survive a kill while they are written (preemption, time limit).

The run-level tests (test_workflow.py: a killed training run resumes; test_slurm.py: a training
job requeued by SLURM resumes) need a checkpoint_latest.pth that is never half-written.
"""

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from workflow_scripts.trainers.base import PanSegTrainer


class Killed(BaseException):
    """Stands for SIGKILL/SIGTERM arriving in the middle of torch.save."""


def trainer():
    return PanSegTrainer.__new__(PanSegTrainer)  # save_checkpoint needs no initialised trainer here


def test_checkpoint_is_replaced_whole(tmp_path, monkeypatch):
    def save(self, filename):
        with open(filename, "wb") as f:
            f.write(b"epoch 2")

    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", save)
    latest = tmp_path / "checkpoint_latest.pth"
    latest.write_bytes(b"epoch 1")
    trainer().save_checkpoint(str(latest))
    assert latest.read_bytes() == b"epoch 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_kill_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    def save(self, filename):
        with open(filename, "wb") as f:
            f.write(b"epo")  # half of the new checkpoint ...
            raise Killed()  # ... when the job is killed

    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", save)
    latest = tmp_path / "checkpoint_latest.pth"
    latest.write_bytes(b"epoch 1")
    with pytest.raises(Killed):
        trainer().save_checkpoint(str(latest))
    assert latest.read_bytes() == b"epoch 1"  # a re-run resumes from epoch 1, not from garbage


def test_nothing_written_when_checkpointing_is_off(tmp_path, monkeypatch):
    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", lambda self, filename: None)
    trainer().save_checkpoint(str(tmp_path / "checkpoint_final.pth"))
    assert not list(tmp_path.iterdir())
