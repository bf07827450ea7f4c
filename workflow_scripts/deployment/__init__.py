"""Deployment: model bundles, released nnU-Net v1 weights, segmenting new scans (NIfTI and DICOM)."""
