"""Data in: sources (downloads, archives, layouts), image checks, prepare, manifest, splits, synthetic demo.

From raw downloads to one validated manifest of image/label pairs and the participant-grouped folds.
"""
