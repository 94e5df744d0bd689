"""VQ-VAE levels, bottlenecks and reconstruction losses (the compression half of Jukebox)."""
