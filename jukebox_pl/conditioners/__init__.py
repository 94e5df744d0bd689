"""Conditioners: metadata and upper-level codes turned into embeddings for the priors."""
