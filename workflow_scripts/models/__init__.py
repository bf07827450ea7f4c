"""Network architectures of the study's models (used by the trainers in workflow_scripts.trainers)."""
