"""Samplers: turn trained priors into codes and audio; windowed sampling, lyric alignment."""
