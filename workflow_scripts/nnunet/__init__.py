"""nnU-Net v2: raw dataset, plans and preprocessing, the training recipe, training, prediction, resampling.

Also the prediction step of models nnU-Net does not train (``prompted``: SAM / MedSAM given a box).
The trainer classes and networks live in ``workflow_scripts.trainers`` and ``workflow_scripts.models``
(import paths that training recipes and exported bundles hold, so they do not move).
"""
