"""Drawing the next token from logits: temperature, top-k and top-p (nucleus) filtering.

openai/jukebox ``transformer/ops.py`` (``filter_logits``) allows top-k or top-p; here both may
be set at once: top-k keeps the k most likely tokens, then top-p keeps the most likely of
those until their probability exceeds p (the token that crosses p is kept), by openai/jukebox's
rule to the last bit. Filtered tokens get a logit of -inf, so their probability is exactly 0
and they are never drawn. The draw is ``torch.multinomial`` of the softmax, which for one token
is what openai/jukebox's ``Categorical(logits=...).sample()`` computes: the same logits and the
same random stream give the same token.

With `previous` (the codes just drawn) and ``hold="model"``, the chance of drawing the previous
code again is the model's own, before temperature and filters; only the choice among the other
codes is cooled and filtered. Temperature below 1 sharpens a distribution where one code holds
most of the mass, so it stretches held codes: a code of silence that the model would leave after
about a second at temperature 1 is held for many (docs/sampling.md measures it). ``hold="cooled"``
(the default) cools every code alike, as openai/jukebox does.

Example::

    logits = torch.randn(4, 2048)                                   # (B, vocab)
    token = sample_token(logits, temperature=0.98, top_k=200, top_p=0.9)  # (B,)
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """`logits` (..., vocab) with every token outside the top-k / top-p set at -inf; 0 turns a filter off."""
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_k must be >= 0 and top_p in [0, 1]; got top_k={top_k}, top_p={top_p}")
    logits = logits.float()
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already exceed top_p: the one that crosses p stays.
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


HOLDS = ("cooled", "model")


def sample_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
    previous: torch.Tensor | None = None,
    hold: str = "cooled",
) -> torch.Tensor:
    """One token per row of `logits` (B, vocab): divided by `temperature`, filtered, drawn: (B,) int64.

    `previous` (B,) int64 and ``hold="model"``: the previous token keeps its unfiltered probability.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if hold not in HOLDS:
        raise ValueError(f"hold is one of {HOLDS}, not {hold!r}")
    probabilities = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    if hold == "model" and previous is not None:
        index = previous[:, None]
        kept = logits.float().softmax(dim=-1).gather(1, index)  # (B, 1) the model's own chance to hold
        others = probabilities.scatter(1, index, 0.0)
        # The other tokens share the rest in their cooled, filtered proportions (none left: hold for sure).
        share = others.sum(dim=1, keepdim=True)
        others = torch.where(share > 0, others * (1 - kept) / share.clamp(min=1e-30), others)
        probabilities = others.scatter(1, index, torch.where(share > 0, kept, torch.ones_like(kept)))
    return torch.multinomial(probabilities, 1, generator=generator)[:, 0]
