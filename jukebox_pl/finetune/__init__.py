"""Fine-tuning a trained prior: new artists and genres in its vocabulary, and which parameters train."""
