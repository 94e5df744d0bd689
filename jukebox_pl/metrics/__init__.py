"""Reconstruction and codebook metrics (torchmetrics ``Metric``s) for comparing audio codecs level by level."""
