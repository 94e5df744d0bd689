"""Autoregressive priors over VQ-VAE codes: the top level and the upsamplers."""
