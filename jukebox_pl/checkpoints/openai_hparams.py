"""openai/jukebox's hyper-parameters in its own names (``hparams.py``), and the specs of our components they give.

openai/jukebox describes a model as a comma-separated list of hyper-parameter sets applied over
its defaults, then single values (``--hps=small_vqvae,small_prior --levels=2 --level=1``):
`setup_hparams` does the same here with `HPARAM_SETS` and `DEFAULTS`, and `parse_hps` reads the
one-string form of the command line (``small_vqvae,small_prior,level=1``). `vqvae_spec` and
`prior_spec` turn the result into the spec of our ``vqvae/jukebox`` and ``prior/jukebox``,
reading each value the way openai/jukebox's ``make_models.py`` passes it to its modules.

Every released model is one row of `HPARAM_SETS`, stated in full: the two upsamplers share
no row, so the bottom one cannot pick up the middle one's ``cond_res_scale``. The presets
``jukebox_vqvae``, ``prior_5b``, ``prior_1b_lyrics``, ``upsampler`` ... are built from the same
rows (`released_spec`).

Example::

    hps = setup_hparams("vqvae,upsampler_level_0")
    prior_spec(hps)["upper"]["res_scale"]  # False: hparams.py sets cond_res_scale for level 1 only
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from typing import Any

from jukebox_pl.errors import JukeboxError, did_you_mean
from jukebox_pl.vqvae.network import hop_lengths

# hparams.py `labels` and `labels_v3`: (genres, artists) embedding rows, timing bins, genres per song, lyric vocab.
_LABELS_V2: dict[str, Any] = {"y_bins": (120, 4111), "t_bins": 128, "max_bow_genre_size": 5, "n_vocab": 80}
_LABELS_V3: dict[str, Any] = {"y_bins": (604, 7898), "t_bins": 64, "max_bow_genre_size": 1, "n_vocab": 79}

# hparams.py, set by set: the values of each that shape a model or its training defaults. The released models
# (first six rows) are written out in full; hparams.py builds the two upsamplers from one `upsamplers` dict and
# adds cond_res_scale=True to upsampler_level_1 only.
HPARAM_SETS: dict[str, dict[str, Any]] = {
    "vqvae": {  # hparams.py `vqvae`: 5b/vqvae.pth.tar
        "levels": 3, "downs_t": (3, 2, 2), "strides_t": (2, 2, 2), "emb_width": 64, "l_bins": 2048, "l_mu": 0.99,
        "commit": 0.02, "spectral": 0.0, "multispectral": 1.0, "hvqvae_multipliers": (2, 1, 1), "loss_fn": "lmix",
        "lmix_l2": 1.0, "lmix_linf": 0.02, "width": 32, "depth": 4, "m_conv": 1.0, "dilation_growth_rate": 3,
    },
    "upsampler_level_0": {  # hparams.py `upsampler_level_0` (`upsamplers` + `labels`): 5b/prior_level_0.pth.tar
        "level": 0, "n_ctx": 8192, "prior_width": 1920, "prior_depth": 72, "heads": 1, "attn_order": 2,
        "blocks": 128, "init_scale": 0.4, "c_res": 1, "cond_width": 1024, "cond_depth": 16,
        "cond_dilation_growth_rate": 3, "cond_dilation_cycle": 8, "cond_c_res": 1,
        "cond_res_scale": False,  # not set for level 0: the default of hparams.py `cond_conv_block`
        "use_tokens": False, "prime_loss_fraction": 0.0, "fp16_params": False, **_LABELS_V2,
    },
    "upsampler_level_1": {  # hparams.py `upsampler_level_1` (`upsamplers` + `labels`): 5b/prior_level_1.pth.tar
        "level": 1, "n_ctx": 8192, "prior_width": 1920, "prior_depth": 72, "heads": 1, "attn_order": 2,
        "blocks": 128, "init_scale": 0.4, "c_res": 1, "cond_width": 1024, "cond_depth": 16,
        "cond_dilation_growth_rate": 3, "cond_dilation_cycle": 8, "cond_c_res": 1,
        "cond_res_scale": True,  # hparams.py: set for level 1 only
        "use_tokens": False, "prime_loss_fraction": 0.0, "fp16_params": False, **_LABELS_V2,
    },
    "prior_5b": {  # hparams.py `prior_5b` (+ `labels`): 5b/prior_level_2.pth.tar
        "level": 2, "n_ctx": 8192, "prior_width": 4800, "prior_depth": 72, "heads": 8, "attn_order": 2,
        "blocks": 128, "init_scale": 0.1, "c_res": 1, "beta2": 0.925, "min_duration": 60.0, "max_duration": 600.0,
        "use_tokens": False, "n_tokens": 0, "prime_loss_fraction": 0.0, "merged_decoder": True,
        "fp16_params": True, **_LABELS_V2,
    },
    "prior_5b_lyrics": {  # hparams.py `prior_5b_lyrics` (+ `labels`): 5b_lyrics/prior_level_2.pth.tar
        "level": 2, "n_ctx": 8192, "prior_width": 4800, "prior_depth": 79, "heads": 8, "attn_order": 10,
        "blocks": 128, "init_scale": 0.1, "c_res": 1, "prime_width": 1280, "prime_depth": 18, "prime_heads": 4,
        "prime_attn_order": 2, "prime_blocks": 32, "prime_init_scale": 0.7, "prime_c_res": 1,
        "min_duration": 23.8, "max_duration": 600.0, "use_tokens": True, "n_tokens": 512,
        "prime_loss_fraction": 0.4, "merged_decoder": True, "fp16_params": True, "alignment_layer": 68,
        "alignment_head": 2, **_LABELS_V2,
    },
    "prior_1b_lyrics": {  # hparams.py `prior_1b_lyrics` (+ `labels_v3`): 1b_lyrics/prior_level_2.pth.tar
        "level": 2, "n_ctx": 6144, "prior_width": 2048, "prior_depth": 72, "heads": 2, "attn_order": 12,
        "blocks": 64, "init_scale": 0.2, "c_res": 1, "labels_v3": True, "min_duration": 17.84,
        "max_duration": 600.0, "use_tokens": True, "n_tokens": 384, "prime_loss_fraction": 0.4,
        "single_enc_dec": True, "fp16_params": False, "alignment_layer": 63, "alignment_head": 0, **_LABELS_V3,
    },
    # The small models of openai/jukebox's README, to train (and fine-tune) on one's own data.
    "small_vqvae": {  # hparams.py `small_vqvae`
        "sr": 22050, "levels": 2, "downs_t": (5, 3), "strides_t": (2, 2), "emb_width": 64, "l_bins": 1024,
        "l_mu": 0.99, "commit": 0.02, "spectral": 0.0, "multispectral": 1.0, "loss_fn": "l2", "width": 32,
        "depth": 4, "m_conv": 1.0, "dilation_growth_rate": 3,
    },
    "small_prior": {  # hparams.py `small_prior`
        "n_ctx": 8192, "prior_width": 1024, "prior_depth": 48, "heads": 1, "c_res": 1, "attn_order": 2,
        "blocks": 64, "init_scale": 0.7,
    },
    "small_labelled_prior": {  # hparams.py `small_labelled_prior` (y_bins: set them to your dataset's)
        "labels": True, "labels_v3": True, "y_bins": (10, 100), "max_bow_genre_size": 1, "min_duration": 60.0,
        "max_duration": 600.0, "t_bins": 64, "n_ctx": 8192, "prior_width": 1024, "prior_depth": 48, "heads": 1,
        "c_res": 1, "attn_order": 2, "blocks": 64, "init_scale": 0.7,
    },
    "small_single_enc_dec_prior": {  # hparams.py `small_single_enc_dec_prior`
        "n_ctx": 6144, "prior_width": 1024, "prior_depth": 48, "heads": 2, "attn_order": 12, "blocks": 64,
        "init_scale": 0.7, "c_res": 1, "prime_loss_fraction": 0.4, "single_enc_dec": True, "labels": True,
        "labels_v3": True, "y_bins": (10, 100), "max_bow_genre_size": 1, "min_duration": 60.0,
        "max_duration": 600.0, "t_bins": 64, "use_tokens": True, "n_tokens": 384, "n_vocab": 79,
    },
    "small_sep_enc_dec_prior": {  # hparams.py `small_sep_enc_dec_prior`
        "n_ctx": 6144, "prior_width": 1024, "prior_depth": 50, "heads": 2, "attn_order": 8, "blocks": 64,
        "init_scale": 0.7, "c_res": 1, "prime_width": 256, "prime_depth": 9, "prime_heads": 2,
        "prime_attn_order": 2, "prime_blocks": 32, "prime_init_scale": 0.7, "prime_c_res": 1,
        "prime_loss_fraction": 0.4, "labels": True, "labels_v3": True, "y_bins": (10, 100),
        "max_bow_genre_size": 1, "min_duration": 60.0, "max_duration": 600.0, "t_bins": 64, "use_tokens": True,
        "n_tokens": 384, "n_vocab": 79,
    },
    "small_upsampler": {  # hparams.py `small_upsampler`
        "n_ctx": 8192, "prior_width": 1024, "prior_depth": 48, "heads": 1, "c_res": 1, "attn_order": 2,
        "blocks": 64, "init_scale": 0.7, "cond_width": 512, "cond_depth": 16, "cond_dilation_growth_rate": 3,
        "cond_dilation_cycle": 8, "cond_c_res": 1,
    },
    "all_fp16": {"fp16_params": True},  # hparams.py `all_fp16`: the rest is about training, not the weights
    "cpu_ema": {},  # hparams.py `cpu_ema`: training only
}  # fmt: skip

# hparams.py `DEFAULTS`, the groups a model is built from ("audio", "vqvae", "vqvae_conv_block", "prior",
# "prior_attn_block", "cond_conv_block", "prime", "prime_attn_block", "data", "opt", "train_test_eval", "fp16"):
# the values that shape the weights or that make_models.py passes on.
DEFAULTS: dict[str, Any] = {
    "sr": 44100,
    "levels": 2, "downs_t": (1, 1), "strides_t": (2, 2), "hvqvae_multipliers": None, "revival_threshold": 1.0,
    "emb_width": 64, "l_bins": 512, "l_mu": 0.99, "commit": 1.0, "spectral": 0.0, "multispectral": 1.0,
    "loss_fn": "l2", "linf_k": 2048, "lmix_l1": 0.0, "lmix_l2": 0.0, "lmix_linf": 0.0, "use_bottleneck": True,
    "depth": 3, "width": 128, "m_conv": 1.0, "dilation_growth_rate": 1, "dilation_cycle": None,
    "vqvae_reverse_decoder_dilation": True,
    "level": 0, "y_bins": 0, "t_bins": 64, "max_bow_genre_size": None, "copy_input": False,
    "merged_decoder": False, "single_enc_dec": False, "alignment_layer": None, "alignment_head": None,
    "n_ctx": 1024, "prior_depth": 3, "prior_width": 128, "heads": 1, "attn_order": 0, "blocks": None,
    "spread": None, "zero_out": False, "res_scale": False, "pos_init": False, "init_scale": 1.0, "m_attn": 0.25,
    "m_mlp": 1.0, "c_res": 0,
    "cond_depth": 3, "cond_width": 128, "cond_m_conv": 1.0, "cond_zero_out": False, "cond_res_scale": False,
    "cond_dilation_growth_rate": 1, "cond_dilation_cycle": None, "cond_c_res": 0,
    "prime_loss_fraction": 0.1,
    "prime_depth": 3, "prime_width": 128, "prime_heads": 1, "prime_attn_order": 0, "prime_blocks": None,
    "prime_spread": None, "prime_zero_out": False, "prime_res_scale": False, "prime_pos_init": False,
    "prime_init_scale": 1.0, "prime_m_attn": 0.25, "prime_m_mlp": 1.0, "prime_c_res": 0,
    "min_duration": None, "max_duration": None, "n_tokens": 0, "n_vocab": 0, "use_tokens": False,
    "lr": 0.0003, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0,
    "labels": True, "labels_v3": False,
    "fp16_params": False,
}  # fmt: skip

# What each released file is: its hyper-parameter sets, as openai/jukebox's make_models.py combines them.
RELEASED: dict[str, str] = {
    "vqvae": "vqvae",
    "prior_5b": "vqvae,prior_5b",
    "prior_5b_lyrics": "vqvae,prior_5b_lyrics",
    "prior_1b_lyrics": "vqvae,prior_1b_lyrics",
    "upsampler_level_1": "vqvae,upsampler_level_1",
    "upsampler_level_0": "vqvae,upsampler_level_0",
}


class HparamsError(JukeboxError):
    """A description in openai/jukebox's hyper-parameters that names an unknown set or key, or no model we build."""


def parse_hps(text: str) -> tuple[list[str], dict[str, Any]]:
    """``small_vqvae,small_prior,level=1,y_bins=(10,100)`` -> set names, values (Python literals; true/false too)."""
    names: list[str] = []
    values: dict[str, Any] = {}
    for item in _split_top_level(text):
        key, equals, value = item.partition("=")
        if equals:
            values[key.strip()] = _literal(value.strip())
        elif key.strip():
            names.append(key.strip())
    return names, values


def _split_top_level(text: str) -> list[str]:
    """`text` cut at the commas outside brackets, so that ``y_bins=(10,100)`` stays whole."""
    items, depth, current = [], 0, []
    for character in text:
        depth += character in "([{"
        depth -= character in ")]}"
        if character == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(character)
    items.append("".join(current))
    return items


def _literal(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a word, such as loss_fn=lmix


def setup_hparams(description: str | Sequence[str], values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`DEFAULTS`, updated by each named set in order, then by `values`: openai/jukebox's ``setup_hparams``.

    `description` may also carry ``key=value`` items (`parse_hps`); an unknown set or key is an error.
    """
    names, parsed = parse_hps(description) if isinstance(description, str) else (list(description), {})
    hps = dict(DEFAULTS)
    for name in names:
        if name not in HPARAM_SETS:
            raise HparamsError(
                f"unknown openai/jukebox hyper-parameter set {name!r}{did_you_mean(name, HPARAM_SETS)}; "
                f"known: {', '.join(HPARAM_SETS)}"
            )
        hps.update(HPARAM_SETS[name])
    given = {**parsed, **(values or {})}
    unknown = [key for key in given if key not in DEFAULTS]
    if unknown:
        raise HparamsError(
            "; ".join(
                f"{key!r} is not an openai/jukebox hyper-parameter that shapes a model" + did_you_mean(key, DEFAULTS)
                for key in unknown
            )
        )
    hps.update(given)
    return hps


def stored_hparams(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters an openai/jukebox training run saved with its checkpoint (``hps``), over `DEFAULTS`.

    openai/jukebox's ``save_checkpoint`` stores every value of the run; the ones that do not shape
    a model (batch size, paths, ...) are left out.
    """
    return {**DEFAULTS, **{key: value for key, value in stored.items() if key in DEFAULTS}}


# ------------------------------------------------------------------------------------ translation
def vqvae_spec(hps: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``vqvae/jukebox`` spec for openai/jukebox's hyper-parameters (make_models.py ``make_vqvae``)."""
    _refuse(hps, _VQVAE_UNSUPPORTED)
    levels = int(hps["levels"])
    downs, strides = list(hps["downs_t"]), list(hps["strides_t"])
    if len(downs) != levels or len(strides) != levels:
        raise HparamsError(f"levels={levels} needs as many downs_t and strides_t, got {downs} and {strides}")
    multipliers = hps["hvqvae_multipliers"]
    return {
        "_component_": "vqvae/jukebox",
        "sample_rate": int(hps["sr"]),
        "channels": 1,  # make_vqvae: input_shape=(sample_length, 1), mono
        "downs": downs,
        "strides": strides,
        "emb_width": int(hps["emb_width"]),
        "width": int(hps["width"]),
        "depth": int(hps["depth"]),
        "multipliers": list(multipliers) if multipliers is not None else None,
        "m_conv": float(hps["m_conv"]),
        "dilation_growth_rate": int(hps["dilation_growth_rate"]),
        "dilation_cycle": hps["dilation_cycle"],
        "reverse_decoder_dilation": bool(hps["vqvae_reverse_decoder_dilation"]),
        "bottleneck": {
            "_component_": "ema_vq",
            "codebook_size": int(hps["l_bins"]),
            "mu": float(hps["l_mu"]),
            "threshold": float(hps["revival_threshold"]),
        },
        "reconstruction": _reconstruction(hps),
        "spectral": "multispectral" if hps["multispectral"] else None,
        "spectral_weight": float(hps["multispectral"]),
        "commit_weight": float(hps["commit"]),
    }


def _reconstruction(hps: Mapping[str, Any]) -> Any:
    """vqvae.py ``_loss_fn``: l1, l2, linf (the linf_k largest errors) or a mix of the three."""
    loss = hps["loss_fn"]
    if loss == "lmix":
        weights = {part: float(hps[f"lmix_{part}"]) for part in ("l1", "l2", "linf")}
        return {"_component_": "lmix", **weights, "linf_k": int(hps["linf_k"])}
    if loss == "linf":
        return {"_component_": "linf", "k": int(hps["linf_k"])}
    if loss in ("l1", "l2"):
        return loss
    raise HparamsError(f"loss_fn={loss!r} is not one of openai/jukebox's l1, l2, linf, lmix")


def prior_spec(hps: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``prior/jukebox`` spec for openai/jukebox's hyper-parameters (make_models.py ``make_prior``).

    The VQ-VAE's values (levels, downs_t, strides_t, l_bins) give the codebook, the hop length and
    the upsampling of the level above, as ``make_prior`` reads them from the VQ-VAE it is given.
    """
    _refuse(hps, _PRIOR_UNSUPPORTED)
    level, levels = int(hps["level"]), int(hps["levels"])
    downs, strides = list(hps["downs_t"]), list(hps["strides_t"])
    if not 0 <= level < levels or len(downs) != levels or len(strides) != levels:
        raise HparamsError(
            f"level={level} is not a level of a VQ-VAE with levels={levels}, downs_t={downs}, strides_t={strides}"
        )
    width, init_scale = int(hps["prior_width"]), float(hps["init_scale"])
    spec: dict[str, Any] = {
        "_component_": "prior/jukebox",
        "level": level,
        "codebook_size": int(hps["l_bins"]),
        "n_ctx": int(hps["n_ctx"]),
        "hop_length": hop_lengths(downs, strides)[level],
        "width": width,
        "depth": int(hps["prior_depth"]),
        "heads": int(hps["heads"]),
        "attn_order": int(hps["attn_order"]),
        "blocks": hps["blocks"],
        "attn_mult": float(hps["m_attn"]),
        "mlp_mult": float(hps["m_mlp"]),
        "init_scale": init_scale,
        "res_scale": bool(hps["res_scale"]),
        "zero_out": bool(hps["zero_out"]),
        "merged_decoder": bool(hps["merged_decoder"]),
        "alignment_layer": hps["alignment_layer"],
        "alignment_head": hps["alignment_head"],
        "learning_rate": float(hps["lr"]),
        "betas": [float(hps["beta1"]), float(hps["beta2"])],
        "weight_decay": float(hps["weight_decay"]),
    }
    upsampler = level != levels - 1  # prior.py: x_cond = (level != levels - 1)
    if hps["labels"]:
        spec["labels"] = _labels(hps, time_signal=not upsampler)
    if upsampler:
        spec["upper"] = {
            "_component_": "upper_codes",
            "codebook_size": int(hps["l_bins"]),
            "down": downs[level + 1],
            "stride": strides[level + 1],
            "cond_width": int(hps["cond_width"]),
            "cond_depth": int(hps["cond_depth"]),
            "dilation_growth_rate": int(hps["cond_dilation_growth_rate"]),
            "dilation_cycle": hps["cond_dilation_cycle"],
            "m_conv": float(hps["cond_m_conv"]),
            "zero_out": bool(hps["cond_zero_out"]),
            "res_scale": bool(hps["cond_res_scale"]),
            "init_scale": init_scale,
        }
    if hps["use_tokens"] and hps["n_tokens"]:
        version = "v3" if hps["labels_v3"] else "v2"
        spec["prime_loss_fraction"] = float(hps["prime_loss_fraction"])
        if hps["single_enc_dec"]:
            spec.update(n_tokens=int(hps["n_tokens"]), lyric_vocab=int(hps["n_vocab"]), lyrics_version=version)
        else:
            spec["lyrics"] = {
                "_component_": "lyrics",
                "n_tokens": int(hps["n_tokens"]),
                "vocab": int(hps["n_vocab"]),
                "width": int(hps["prime_width"]),
                "depth": int(hps["prime_depth"]),
                "heads": int(hps["prime_heads"]),
                "attn_order": int(hps["prime_attn_order"]),
                "blocks": hps["prime_blocks"],
                "attn_mult": float(hps["prime_m_attn"]),
                "mlp_mult": float(hps["prime_m_mlp"]),
                "init_scale": float(hps["prime_init_scale"]),
                "lyrics_version": version,
            }
    return spec


def _labels(hps: Mapping[str, Any], time_signal: bool) -> dict[str, Any]:
    """conditioners.py ``LabelConditioner``: y_bins is (genres, artists); the time signal only in the top prior."""
    y_bins = hps["y_bins"]
    if not isinstance(y_bins, Sequence) or len(y_bins) != 2:
        raise HparamsError(f"labels=True needs y_bins=(genres, artists), got y_bins={y_bins!r} (or set labels=False)")
    if hps["max_bow_genre_size"] is None:
        raise HparamsError("labels=True needs max_bow_genre_size, the genres per song")
    labels = {
        "_component_": "label",
        "n_artists": int(y_bins[1]),
        "n_genres": int(y_bins[0]),
        "max_genres": int(hps["max_bow_genre_size"]),
        "t_bins": int(hps["t_bins"]),
        "include_time_signal": time_signal,
        "sample_rate": int(hps["sr"]),
    }
    if time_signal:
        if hps["min_duration"] is None or hps["max_duration"] is None:
            raise HparamsError("a top-level prior with labels needs min_duration and max_duration (seconds)")
        labels.update(min_duration=float(hps["min_duration"]), max_duration=float(hps["max_duration"]))
    return labels


# Values openai/jukebox can build that jukebox-pl does not: each would change the weights' names or the computation.
_VQVAE_UNSUPPORTED = {"use_bottleneck": (False, "a VQ-VAE without its bottleneck")}
_PRIOR_UNSUPPORTED = {
    "pos_init": (True, "per-axis position embeddings"),
    "prime_pos_init": (True, "per-axis position embeddings in the lyrics encoder"),
    "copy_input": (True, "copy_input priors"),
    "prime_res_scale": (True, "a lyrics encoder with scaled residuals"),
}


def _refuse(hps: Mapping[str, Any], unsupported: Mapping[str, tuple[Any, str]]) -> None:
    found = [f"{key}={hps[key]!r} ({what})" for key, (value, what) in unsupported.items() if hps.get(key) == value]
    if found:
        raise HparamsError("jukebox-pl does not build " + "; ".join(found))


def released_spec(name: str) -> dict[str, Any]:
    """The spec of released model `name` (a key of `RELEASED`)."""
    hps = setup_hparams(RELEASED[name])
    return vqvae_spec(hps) if name == "vqvae" else prior_spec(hps)


def preset_values(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` without its ``_component_``: the values of a registered preset."""
    return {key: value for key, value in spec.items() if key != "_component_"}
