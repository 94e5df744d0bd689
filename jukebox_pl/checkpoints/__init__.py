"""Exported weights (safetensors + the resolved recipe) and loading them back without a Trainer."""
