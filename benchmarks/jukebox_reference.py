"""The reference decoder for the speed comparisons: transformers' deprecated Jukebox port, on our weights.

transformers 4.57.6 is the last release with Jukebox (``transformers.models.deprecated.jukebox``); it is
the optional ``bench`` extra (``pip install -e ".[bench]"``), never a dependency of jukebox-pl. `reference_prior`
builds its ``JukeboxConditionalAutoregressive`` with a prior's sizes and copies the prior's weights into it
(its ``JukeboxConv1D`` keeps weights as (in, out), ours as (out, in)), for priors with rows, columns and
previous rows (attn_order 2) and no lyrics, which is what its ``raw_column_previous_row_attention``
pattern covers. `reference_step_seconds` times its ``sample`` the way ``sampling_speed.py`` times ours:
the median gap between two codes.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def available() -> str | None:
    """Why the reference cannot run here, or None when it can."""
    try:
        import transformers
        from transformers.models.deprecated.jukebox import modeling_jukebox  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure means "not installed"
        return f"transformers with Jukebox is not importable ({type(error).__name__}); pip install -e '.[bench]'"
    return None if transformers.__version__ else "transformers has no version"


def reference_prior(prior: torch.nn.Module) -> Any:
    """transformers' autoregressive Jukebox transformer with `prior`'s sizes and weights (eval mode)."""
    from transformers.models.deprecated.jukebox.configuration_jukebox import JukeboxPriorConfig
    from transformers.models.deprecated.jukebox.modeling_jukebox import JukeboxConditionalAutoregressive

    transformer = prior.transformer
    if set(transformer.patterns) - {"block", "transpose_block", "prev_block"} or prior.lyric_tokens:
        raise ValueError("the reference covers rows, columns and previous rows without lyrics (attn_order 2)")
    attn = transformer.blocks[0].attn
    width = prior.x_emb.embedding_dim
    config = JukeboxPriorConfig(
        hidden_size=width, num_layers=len(transformer.blocks), n_heads=attn.heads,
        attention_pattern="raw_column_previous_row_attention", blocks=attn.n_ctx // attn.block_ctx,
        n_ctx=prior.n_ctx, music_vocab_size=prior.codebook_size, attention_multiplier=attn.n_state / width,
        mlp_multiplier=transformer.blocks[0].mlp.c_fc.out_features / width, merged_decoder=False,
        is_encoder_decoder=False, nb_relevant_lyric_tokens=0, zero_out=False, attn_res_scale=False,
    )  # fmt: skip
    reference = JukeboxConditionalAutoregressive(config, audio_conditioning=prior.upper is not None).eval()
    ours = prior.state_dict()
    state = {"embed_tokens.weight": ours["x_emb.weight"], "pos_emb.pos_emb": ours["pos_emb.weight"]}
    if "start_token" in ours:
        state["start_token"] = ours["start_token"]
    for i in range(len(transformer.blocks)):
        for theirs, mine in (("layer_norm_0", "ln_0"), ("layer_norm_1", "ln_1")):
            for name in ("weight", "bias"):
                state[f"transformer._attn_mods.{i}.{theirs}.{name}"] = ours[f"transformer.blocks.{i}.{mine}.{name}"]
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            state[f"transformer._attn_mods.{i}.{part}.weight"] = ours[f"transformer.blocks.{i}.{part}.weight"].t()
            state[f"transformer._attn_mods.{i}.{part}.bias"] = ours[f"transformer.blocks.{i}.{part}.bias"]
    state["fc_proj_out.weight"] = ours["x_emb.weight"]  # tied, as ours
    missing, unexpected = reference.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if not name.startswith("start_token")]:
        raise ValueError(f"reference weights: missing {missing}, unexpected {unexpected}")
    return reference


def reference_vqvae(vqvae: torch.nn.Module) -> Any:
    """transformers' ``JukeboxVQVAE`` (its default configuration, the released VQ-VAE) with `vqvae`'s weights.

    The two name their layers differently, so each level's convolutions are paired in the order a call applies
    them (the encoder's from the audio, the decoder's from the latents), shapes checked; then the codebooks.
    """
    from transformers.models.deprecated.jukebox.configuration_jukebox import JukeboxVQVAEConfig
    from transformers.models.deprecated.jukebox.modeling_jukebox import JukeboxVQVAE

    reference = JukeboxVQVAE(JukeboxVQVAEConfig()).eval()
    hops = [int(hop) for hop in reference.hop_lengths]
    if hops != list(vqvae.hop_lengths):
        raise ValueError(f"the reference is the released VQ-VAE, hops {hops}, not {vqvae.hop_lengths}")
    length = 4 * vqvae.hop_lengths[-1]
    audio = torch.zeros(1, vqvae.channels, length)
    with torch.no_grad():
        for level in range(vqvae.levels):
            codebook = vqvae.bottlenecks[level].codebook
            latents = torch.zeros(1, codebook.shape[1], length // vqvae.hop_lengths[level])
            encoders = (vqvae.encoders[level], reference.encoders[level])
            decoders = (vqvae.decoders[level], reference.decoders[level])
            pairs = [
                (_convolutions(encoders[0], functools.partial(encoders[0], audio)),
                 _convolutions(encoders[1], functools.partial(encoders[1], audio))),
                (_convolutions(decoders[0], functools.partial(decoders[0], latents)),
                 _convolutions(decoders[1], functools.partial(decoders[1], [latents], all_levels=False))),
            ]  # fmt: skip
            for ours, theirs in pairs:
                if [m.weight.shape for m in ours] != [m.weight.shape for m in theirs]:
                    raise ValueError(f"level {level}: the reference's convolutions do not match ours")
                for mine, other in zip(ours, theirs, strict=True):
                    other.weight.copy_(mine.weight)
                    other.bias.copy_(mine.bias)
            reference.bottleneck.level_blocks[level].codebook.copy_(codebook)
    return reference


def _convolutions(module: torch.nn.Module, run: Callable[[], object]) -> list[torch.nn.Module]:
    """The convolutions of `module` in the order that `run` applies them."""
    order: list[torch.nn.Module] = []
    kinds = (torch.nn.Conv1d, torch.nn.ConvTranspose1d)
    hooks = [m.register_forward_hook(lambda m, *_: order.append(m)) for m in module.modules() if isinstance(m, kinds)]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return order


class _Stamps:
    """Stands in for the reference's tqdm progress bar: stamps the time as each code is drawn."""

    def __init__(self, iterable: Any, **_: Any) -> None:
        self.iterable, self.stamps = iterable, []

    def __iter__(self) -> Any:
        for item in self.iterable:
            yield item
            self.stamps.append(time.perf_counter())

    def set_description(self, *_: Any, **__: Any) -> None:
        pass


def reference_step_seconds(reference: Any, conditioning: torch.Tensor | None, codes: int, last: int) -> float:
    """The median gap between the `last` codes of ``reference.sample`` drawing `codes` codes from position 0.

    `conditioning` (B, n_ctx, width) is the upsampler's per-position conditioning, or None; it sets the batch.
    """
    batch = 1 if conditioning is None else conditioning.shape[0]
    from transformers.models.deprecated.jukebox import modeling_jukebox

    bars: list[_Stamps] = []
    original = modeling_jukebox.tqdm
    modeling_jukebox.tqdm = lambda iterable, **kwargs: bars.append(_Stamps(iterable)) or bars[-1]
    try:
        reference.sample(batch, audio_conditioning=conditioning, sample_tokens=codes)
    finally:
        modeling_jukebox.tqdm = original
    return statistics.median(b - a for a, b in itertools.pairwise(bars[0].stamps[-last:]))
