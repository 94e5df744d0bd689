"""One level's autoregressive transformer over codes as a plain ``nn.Module``: logits, sampling, lyric alignment.

Jukebox (Dhariwal et al., 2020, section 4; openai/jukebox ``prior/autoregressive.py``) per
position: ``x_emb(token shifted right) + pos_emb + cond`` -> transformer -> ``(+ cond)`` -> ``x_out``.
The conditioners (labels, upper codes, a lyrics encoder) are given built, or left out; a
lyric prefix (`n_tokens`) puts the lyric window's tokens before the codes in a merged
vocabulary. Training (losses, optimiser, logging) is ``prior: jukebox`` in ``prior.py``.

Used alone, without Lightning::

    >>> import torch
    >>> from jukebox_pl.priors.network import PriorNetwork
    >>> net = PriorNetwork(codebook_size=32, n_ctx=16, width=32, depth=2, heads=2)
    >>> codes = torch.randint(0, 32, (2, 16))
    >>> logits, tokens = net({"codes": codes})
    >>> tuple(logits.shape)
    (2, 16, 32)
    >>> tuple(net.sample({}, 16, prompt=codes[:, :4]).shape)
    (2, 16)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from jukebox_pl.modules.decoding import CudaGraphStep, Quantize, StaticDecoder, reduced_linear
from jukebox_pl.modules.sampling import sample_token
from jukebox_pl.modules.transformer import PositionEmbedding, Transformer


class PriorNetwork(nn.Module):
    """An autoregressive transformer over one level's codes, with optional conditioners and lyric prefix."""

    def __init__(
        self,
        codebook_size: int = 2048,
        n_ctx: int = 8192,
        width: int = 128,
        depth: int = 2,
        heads: int = 1,
        attn_order: int = 0,
        blocks: int | None = None,
        attn_mult: float = 0.25,
        mlp_mult: float = 1.0,
        init_scale: float = 1.0,
        res_scale: bool = False,
        zero_out: bool = False,
        merged_decoder: bool = False,
        checkpoint_blocks: bool = False,
        n_tokens: int = 0,
        lyric_vocab: int = 80,
        alignment_layer: int | None = None,
        alignment_head: int | None = None,
        labels: nn.Module | None = None,
        upper: nn.Module | None = None,
        lyrics: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if lyrics is not None and n_tokens:
            raise ValueError("prior: give lyrics either as a prefix (n_tokens) or through a lyrics encoder, not both")
        self.codebook_size, self.n_ctx, self.n_tokens, self.lyric_vocab = codebook_size, n_ctx, n_tokens, lyric_vocab
        self.alignment_layer, self.alignment_head = alignment_layer, alignment_head
        # Single encoder-decoder: lyric tokens 0..lyric_vocab-1, then codes shifted past them.
        self.vocab = codebook_size + (lyric_vocab if n_tokens else 0)
        length = n_tokens + n_ctx
        self.labels, self.upper, self.lyrics = labels, upper, lyrics
        if self.labels is None:
            self.start_token = nn.Parameter(torch.randn(1, width) * (0.01 * init_scale))
        self.x_emb = nn.Embedding(self.vocab, width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * init_scale)
        self.pos_emb = PositionEmbedding(length, width, init_scale)
        self.transformer = Transformer(
            width, length, heads, depth, attn_order=attn_order, blocks=blocks, attn_mult=attn_mult,
            mlp_mult=mlp_mult, prime_len=n_tokens or None, encoder_width=width if self.lyrics else None,
            zero_out=zero_out, init_scale=init_scale, res_scale=res_scale, checkpoint_blocks=checkpoint_blocks,
        )  # fmt: skip
        # Jukebox: the merged 5B decoder has its own output matrix and adds the conditioning only at
        # the input; otherwise the output matrix is the input embedding and the conditioning is added
        # again after the transformer.
        self.add_cond_after = not merged_decoder
        self.x_out = nn.Linear(width, self.vocab, bias=False)
        if not merged_decoder:
            self.x_out.weight = self.x_emb.weight

    def conditioning(
        self, batch: Mapping[str, torch.Tensor], length: int | None = None, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The start vector (B, 1, width) and the per-position conditioning (B, length, width) of a batch.

        `length` and `batch_size` default to the batch's codes'; sampling passes them for a window shorter than
        n_ctx, or a prior without conditioners.
        """
        codes = batch.get("codes")
        if batch_size is None:
            batch_size = next(iter(batch.values())).shape[0] if codes is None else codes.shape[0]
        length = codes.shape[1] if length is None else length
        width = self.x_emb.embedding_dim
        positions = None
        if self.labels is not None:
            start, positions = self.labels(batch["artist"], batch["genres"], batch.get("timing"))
        else:
            start = self.start_token.expand(batch_size, 1, width)
        if self.upper is not None:
            positions = self.upper(batch["upper_codes"])
        if positions is None:
            return start, start.new_zeros((batch_size, length, width))
        return start, positions[:, :length]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, n_tokens + T, vocab) for a batch, and the target tokens (B, n_tokens + T)."""
        logits, tokens, _ = self._forward(batch)
        return logits, tokens

    def _inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Transformer input (B, L, width), conditioning (B, L, width), tokens (B, L), lyric states and logits."""
        codes = batch["codes"].long()
        start, positions = self.conditioning(batch)
        if self.n_tokens:
            tokens = torch.cat([batch["lyrics"].long(), codes + self.lyric_vocab], dim=1)
            lyric_cond = positions.new_zeros((codes.shape[0], self.n_tokens, positions.shape[-1]))
            positions = torch.cat([lyric_cond, positions], dim=1)
        else:
            tokens = codes
        x = self.x_emb(tokens)  # (B, L, width)
        x = torch.cat([start, x[:, :-1]], dim=1)  # predict token t from tokens < t; the start vector leads
        x = x + self.pos_emb(x.shape[1]) + positions
        states, lyric_logits = self.lyrics(batch["lyrics"]) if self.lyrics is not None else (None, None)
        return x, positions, tokens, states, lyric_logits

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits, target tokens, and the lyrics encoder's next-character logits (or None)."""
        x, positions, tokens, states, lyric_logits = self._inputs(batch)
        x = self.transformer(x, encoder_states=states)
        if self.add_cond_after:
            x = x + positions
        return self.x_out(x), tokens, lyric_logits

    # ------------------------------------------------------------------ sampling
    @property
    def lyric_tokens(self) -> int:
        """How many lyric tokens the prior reads per window: its prefix or its lyrics encoder's; 0 without lyrics."""
        return self.n_tokens or (self.lyrics.n_tokens if self.lyrics is not None else 0)

    @torch.no_grad()
    def sample(
        self,
        labels: Mapping[str, torch.Tensor],
        length: int,
        prompt: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        chunk_size: int = 32,
        on_token: Callable[[], None] | None = None,
        draw_from: Literal["codes", "merged"] = "codes",
        quantize: Quantize = "none",
        cuda_graphs: bool = True,
        hold: str = "cooled",
    ) -> torch.Tensor:
        """Codes (B, length) of one window: the `prompt` codes (B, P), then length - P sampled ones.

        `labels` holds what the conditioners read for this window (``artist``, ``genres``, ``timing``,
        ``upper_codes``, ``lyrics``). With `use_cache` each layer keeps its keys and values (issue-5
        KV caches): the lyric prefix and the prompt are fed in chunks of `chunk_size` positions, then
        one position per step. Without it every step runs the whole window so far (for comparison).

        With a lyric prefix (a merged vocabulary), `draw_from` decides what a step draws from:
        ``"codes"`` (the default) only the codes, renormalised; ``"merged"`` the whole vocabulary as
        openai/jukebox does (``SimplePrior.sample``): a drawn lyric token is fed back as itself for
        the rest of the window and comes out as code 0 (``prior_postprocess`` clamps it), and for
        the same logits and seed the draws are openai/jukebox's. Without a lyric prefix both are the same.

        Cached decoding runs one position per step through a `StaticDecoder` (caches allocated once per
        window, see ``jukebox_pl/modules/decoding.py``); `quantize="int8"` or ``"bf16"`` runs its projections
        with int8 or bf16 weights (opt-in: the draws differ from fp32; bf16 pays for batches). On a CUDA
        device with `cuda_graphs`, the step is captured once per window as a CUDA graph and replayed. `hold`
        decides how temperature and the filters treat drawing the previous code again
        (``jukebox_pl/modules/sampling.py``).
        """
        if not 0 < length <= self.n_ctx:
            raise ValueError(f"prior: a window holds 1 to n_ctx={self.n_ctx} codes, not {length}")
        if draw_from not in ("codes", "merged"):
            raise ValueError(f"prior: draw_from is 'codes' or 'merged', not {draw_from!r}")
        if prompt is None and not labels:
            raise ValueError("prior: sample needs labels or a prompt to know the batch size")
        batch_size = prompt.shape[0] if prompt is not None else next(iter(labels.values())).shape[0]
        start, positions = self.conditioning(labels, length, batch_size)  # (B, 1, width), (B, length, width)
        states = self.lyrics(labels["lyrics"])[0] if self.lyrics is not None else None
        shift = self.lyric_vocab if self.n_tokens else 0
        merged = draw_from == "merged" and self.n_tokens > 0
        total = self.n_tokens + length
        sequence = positions.new_zeros((batch_size, total), dtype=torch.long)  # lyric prefix, then codes + shift
        known = self.n_tokens
        if self.n_tokens:
            sequence[:, : self.n_tokens] = labels["lyrics"].long()
            positions = torch.cat([positions.new_zeros((batch_size, self.n_tokens, positions.shape[-1])), positions], 1)
        if prompt is not None and prompt.shape[1]:
            if prompt.shape[1] > length:
                raise ValueError(f"prior: a prompt of {prompt.shape[1]} codes does not fit a window of {length}")
            sequence[:, known : known + prompt.shape[1]] = prompt.long() + shift
            known += prompt.shape[1]

        def embed(first: int, count: int) -> torch.Tensor:
            # Input at position t: the start vector (t = 0) or the embedding of token t - 1.
            x = self.x_emb(sequence[:, max(first - 1, 0) : first + count - 1])
            if first == 0:
                x = torch.cat([start.to(x.dtype), x], dim=1)
            return x + self.pos_emb(count, first) + positions[:, first : first + count]

        drawn = slice(None) if merged else slice(shift, None)  # by default only codes are drawn, never lyric tokens

        def draw(position: int, h: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor] = self.x_out) -> None:
            # The token at `position` from the transformer's output there, h (B, width).
            if self.add_cond_after:
                h = h + positions[:, position]
            before = hold == "model" and position > self.n_tokens  # only that setting reads the last code
            previous = sequence[:, position - 1] - (0 if merged else shift) if before else None
            token = sample_token(head(h)[:, drawn], temperature, top_k, top_p, generator, previous, hold)
            sequence[:, position] = token if merged else token + shift
            if on_token is not None:
                on_token()

        if not use_cache:
            for position in range(known, total):
                draw(position, self.transformer(embed(0, position + 1), states)[:, -1])
            return (sequence[:, self.n_tokens :] - shift).clamp(min=0)  # a drawn lyric token (merged) is code 0

        caches = self.transformer.new_caches()
        for first in range(0, known, chunk_size):
            self.transformer(embed(first, min(chunk_size, known - first)), states, caches)
        decoder = StaticDecoder(self.transformer, batch_size, dtype=start.dtype, quantize=quantize)
        decoder.load(caches)
        del caches
        if states is not None:
            decoder.set_encoder(states)
        # Everything a step reads is made once per window: the inputs' position and conditioning terms,
        # the position tensors.
        inputs = (positions + self.pos_emb(total)).to(start.dtype)  # (B, total, width)
        steps = torch.arange(total, device=sequence.device)
        weight = self.x_emb.weight
        step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = decoder.step
        head = reduced_linear(self.x_out, quantize) if quantize != "none" else self.x_out
        for position in range(known, total):
            if position == 0:
                x = start[:, 0] + inputs[:, 0]
            else:
                x = F.embedding(sequence[:, position - 1], weight).add_(inputs[:, position])
            index = steps[position : position + 1]
            if sequence.device.type == "cuda" and cuda_graphs and step is decoder.step:
                step = CudaGraphStep(decoder, x, index)
            draw(position, step(x, index), head)
        return (sequence[:, self.n_tokens :] - shift).clamp(min=0)  # a drawn lyric token (merged) is code 0

    @torch.no_grad()
    def alignment_weights(
        self, labels: Mapping[str, torch.Tensor], codes: torch.Tensor, layer: int | None = None, head: int | None = None
    ) -> torch.Tensor:
        """Attention (B, T, lyric tokens) of the codes (B, T) of one window over its lyric tokens.

        Read from a "cross" layer (lyrics encoder) or a "prime" layer (lyric prefix): by default
        `alignment_layer` / `alignment_head` of this prior, else its last such layer and head 0.
        """
        if not self.lyric_tokens:
            raise ValueError("prior: this prior reads no lyrics, so it has no lyric alignment")
        layer = self.default_alignment_layer() if layer is None else layer
        head = (self.alignment_head if head is None else head) or 0
        if self.transformer.patterns[layer] not in ("cross", "prime"):
            raise ValueError(
                f"prior: alignment_layer {layer} is a {self.transformer.patterns[layer]!r} layer; lyric alignment "
                f"reads a 'cross' or 'prime' layer: {self._lyric_layers()}"
            )
        x, _, _, states, _ = self._inputs({**labels, "codes": codes})
        weights = self.transformer.attention_weights(x, layer, states)[:, head]  # (B, L, S)
        # prime: the code positions over the lyric prefix keys
        return weights[:, self.n_tokens :, : self.n_tokens] if self.n_tokens else weights

    def default_alignment_layer(self) -> int:
        if self.alignment_layer is not None:
            return self.alignment_layer
        layers = self._lyric_layers()
        if not layers:
            raise ValueError("prior: no 'cross' or 'prime' layer to read a lyric alignment from")
        return layers[-1]

    def _lyric_layers(self) -> list[int]:
        return [i for i, pattern in enumerate(self.transformer.patterns) if pattern in ("cross", "prime")]
