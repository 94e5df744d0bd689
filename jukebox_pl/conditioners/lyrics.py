"""``lyrics``: Jukebox's separate lyrics encoder, whose states the prior's cross-attention layers read.

openai/jukebox ``prior/prior.py`` (the ``prime_prior`` of the 5B lyrics model): the lyric
window's characters are modelled autoregressively by a small transformer of their own
(width 1280, depth 18, 4 heads in the 5B model); its last layer, projected to the prior's
width and layer-normed, gives the keys and values that the prior's ``cross`` layers attend
to, and an output matrix on those states predicts the next character (the lyric loss).

Example::

    encoder = LyricsEncoder(prior_width=64, n_tokens=32, width=32, depth=2, heads=2, blocks=4)
    tokens = encoder.tokenize("la la la", total_length=44100 * 10, offset=0, window=44100)  # (32,)
    states, logits = encoder(tokens[None])  # (1, 32, 64) for the prior, (1, 32, 80) next-character logits
"""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn

from jukebox_pl.data.text import LyricsProcessor, lyric_window
from jukebox_pl.modules.attention import init_linear_
from jukebox_pl.modules.transformer import PositionEmbedding, Transformer
from jukebox_pl.registry import register


@register("conditioner", "lyrics")
class LyricsEncoder(pl.LightningModule):
    """Lyric window tokens (B, n_tokens) -> states (B, n_tokens, prior_width) and next-character logits."""

    def __init__(
        self,
        prior_width: int,
        n_tokens: int = 512,
        vocab: int = 80,
        width: int = 1280,
        depth: int = 18,
        heads: int = 4,
        attn_order: int = 2,
        blocks: int | None = 32,
        attn_mult: float = 0.25,
        mlp_mult: float = 1.0,
        init_scale: float = 0.7,
        prior_init_scale: float = 1.0,
        lyrics_version: Literal["v2", "v3"] = "v2",
    ) -> None:
        super().__init__()
        if n_tokens < 1:
            raise ValueError(f"lyrics: n_tokens must be positive, got {n_tokens}")
        self.n_tokens, self.vocab = n_tokens, vocab
        self.processor = LyricsProcessor(lyrics_version)
        if self.processor.n_vocab != vocab:
            raise ValueError(f"lyrics: vocab {vocab} does not match lyrics_version {lyrics_version!r} "
                             f"({self.processor.n_vocab} tokens)")  # fmt: skip
        self.start_token = nn.Parameter(torch.randn(1, width) * (0.01 * init_scale))
        self.x_emb = nn.Embedding(vocab, width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * init_scale)
        self.pos_emb = PositionEmbedding(n_tokens, width, init_scale)
        self.transformer = Transformer(
            width, n_tokens, heads, depth, attn_order=attn_order, blocks=blocks, attn_mult=attn_mult,
            mlp_mult=mlp_mult, init_scale=init_scale,
        )  # fmt: skip
        # Jukebox: prime_state_proj (a Conv1D, N(0, 0.02 * init_scale), zero bias), then prime_state_ln.
        self.proj = nn.Linear(width, prior_width)
        init_linear_(self.proj, init_scale)
        self.ln = nn.LayerNorm(prior_width)
        self.x_out = nn.Linear(prior_width, vocab, bias=False)
        nn.init.normal_(self.x_out.weight, std=0.02 * prior_init_scale)

    def tokenize(self, lyrics: str, total_length: int, offset: int, window: int) -> torch.Tensor:
        """The lyric window (n_tokens,) of a crop at `offset` of `window` samples in a song of `total_length`."""
        tokens, _ = lyric_window(self.processor.tokenize(lyrics), self.n_tokens, total_length, offset, window)
        return torch.from_numpy(tokens)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` (B, n_tokens) -> (states (B, n_tokens, prior_width), logits (B, n_tokens, vocab))."""
        if tokens.shape[1] != self.n_tokens:
            raise ValueError(f"lyrics: expected {self.n_tokens} tokens per item, got {tokens.shape[1]}")
        x = self.x_emb(tokens.long())  # (B, n_tokens, width)
        start = self.start_token.expand(x.shape[0], 1, x.shape[2])
        x = torch.cat([start, x[:, :-1]], dim=1) + self.pos_emb(self.n_tokens)  # predict token t from < t
        states = self.ln(self.proj(self.transformer(x)))
        return states, self.x_out(states)
