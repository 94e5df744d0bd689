"""The decoding step with static KV caches (``jukebox_pl.modules.decoding``) and the priors' sampling through it."""

from __future__ import annotations

import logging

import pytest
import torch
from sampling_models import PRIOR, TOP, TOP_PREFIX, UPSAMPLER

from jukebox_pl.errors import JukeboxError
from jukebox_pl.modules import decoding
from jukebox_pl.modules.decoding import CudaGraphStep, StaticDecoder, _pick, bf16_linear, int8_linear
from jukebox_pl.modules.sampling import HOLDS
from jukebox_pl.modules.transformer import Transformer
from jukebox_pl.registry import build

WIDTH, HEADS, N_CTX, BLOCKS, PRIME_LEN, N_ENCODER = 16, 2, 24, 4, 5, 7  # block_ctx 6, prime keys 8


def random_transformer(
    attn_order: int, depth: int, seed: int, res_scale: bool = False, std: float = 0.2, width: int = WIDTH
) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(width, N_CTX, HEADS, depth, attn_order, blocks=BLOCKS, prime_len=PRIME_LEN,
                        encoder_width=width, res_scale=res_scale).eval()  # fmt: skip
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero everywhere, so that zero-initialised (cross) layers take part
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def static_steps(model: Transformer, x: torch.Tensor, encoder: torch.Tensor, prompt: int, **options) -> torch.Tensor:
    """Outputs (B, T - prompt, width): the prompt through KV caches in one chunk, then one static step each."""
    caches = model.new_caches()
    if prompt:
        model(x[:, :prompt], encoder, caches)
    decoder = StaticDecoder(model, x.shape[0], **options)
    decoder.load(caches)
    decoder.set_encoder(encoder)
    positions = torch.arange(x.shape[1])
    return torch.stack([decoder.step(x[:, t], positions[t : t + 1]) for t in range(prompt, x.shape[1])], dim=1)


@pytest.mark.parametrize("prompt", [0, 5, 13])
@pytest.mark.parametrize(
    ("attn_order", "depth", "res_scale"),
    [(0, 2, False), (2, 3, False), (6, 4, True), (9, 4, False), (12, 16, False)],
    ids=["dense", "rows-columns-previous", "with-cross-res-scale", "with-dense", "with-prime"],
)
@pytest.mark.parametrize("batch", [1, 3])  # batch 1 folds the biases into rows ending in 1 (`_Layer._fuse`)
def test_static_decoding_equals_the_full_pass(
    attn_order: int, depth: int, res_scale: bool, prompt: int, batch: int
) -> None:
    model = random_transformer(attn_order, depth, seed=attn_order + prompt, res_scale=res_scale)
    generator = torch.Generator().manual_seed(prompt)
    x = torch.randn(batch, N_CTX, WIDTH, generator=generator)
    encoder = torch.randn(batch, N_ENCODER, WIDTH, generator=generator)
    with torch.no_grad():
        full = model(x, encoder)
        stepped = static_steps(model, x, encoder, prompt)
    assert (stepped - full[:, prompt:]).abs().max() < 1e-4


@pytest.mark.parametrize("quantize", ["int8", "bf16"])
def test_reduced_precision_decoding_stays_close_to_fp32(quantize: str) -> None:
    # Weights at the scale of Jukebox's init (0.02 / sqrt(width / 64)) rather than the large ones above.
    model = random_transformer(2, 3, seed=3, std=0.05, width=64)
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = torch.randn(2, N_CTX, 64, generator=generator)
    encoder = torch.randn(2, N_ENCODER, 64, generator=generator)
    with torch.no_grad():
        fp32 = static_steps(model, x, encoder, 6)
        reduced = static_steps(model, x, encoder, 6, quantize=quantize)
    relative = (reduced - fp32).norm() / fp32.norm()
    # int8: activations rounded to 7 bits per call (fbgemm's reduce_range), weights to 8 per channel; bf16:
    # inputs and weights to 8 significant bits. About 3e-4 through three random layers (200 draws: at most
    # 3.7e-4); the quick GELU's factors folded into the wrong bias once cost 4e-2, which this bound catches.
    assert 0 < relative < 5e-3
    assert reduced.dtype == torch.float32


@pytest.mark.parametrize(("attn_order", "res_scale"), [(2, False), (6, True)], ids=["rows-columns", "cross-res-scale"])
def test_the_scripted_int8_step_is_the_python_step_on_the_same_int8_weights(
    attn_order: int, res_scale: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The int8 layer runs its products and the operations around them as TorchScript functions (for speed);
    # the generic step, given products that call the same packed weights from Python, gives the same numbers.
    model = random_transformer(attn_order, 4, seed=int(torch.randint(0, 1000, ())), res_scale=res_scale, std=0.05)
    x, encoder = torch.randn(2, N_CTX, WIDTH), torch.randn(2, N_ENCODER, WIDTH)

    def through_python(decoder: StaticDecoder) -> None:
        for layer in decoder.layers:
            layer.int8 = False
            layer.products = {
                name: lambda h, packed=packed: torch.ops.quantized.linear_dynamic(h, packed, True)
                for name, packed in layer.packed.items()
            }

    with torch.no_grad():
        scripted = static_steps(model, x, encoder, 5, quantize="int8")
        original = StaticDecoder.__init__

        def patched(self, *args, **kwargs) -> None:
            original(self, *args, **kwargs)
            through_python(self)

        monkeypatch.setattr(StaticDecoder, "__init__", patched)
        python = static_steps(model, x, encoder, 5, quantize="int8")
    assert torch.equal(scripted, python) and scripted.abs().max() > 0


def test_int8_linear_is_the_linear_to_within_its_rounding() -> None:
    torch.manual_seed(5)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(4, 64)
    with torch.no_grad():
        exact = x @ linear.weight.T + 4.0 * linear.bias  # addmm's alpha and beta
        approximate = int8_linear(linear, alpha=1.0, beta=4.0)(x)
    assert (approximate - exact).abs().max() < 0.05 * exact.abs().max()


def test_a_column_is_read_alike_as_a_view_and_as_a_gather() -> None:
    # The CPU step reads a column or half of a cache as a view (an int), a CUDA graph as a gather (a tensor).
    cache = torch.randn(int(torch.randint(2, 9, ())), 5, 3, 4)
    for index in range(cache.shape[0]):
        view, gathered = _pick(cache, index), _pick(cache, torch.tensor([index]))
        assert torch.equal(view, gathered) and view.data_ptr() == cache[index].data_ptr()


def test_bf16_linear_is_the_linear_to_within_its_rounding() -> None:
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(4, 64)
    with torch.no_grad():
        exact = 0.5 * (x @ linear.weight.T) + 2.0 * linear.bias  # addmm's alpha and beta
        approximate = bf16_linear(linear, alpha=0.5, beta=2.0)(x)
        no_bias = torch.nn.Linear(64, 48, bias=False)
        without = bf16_linear(no_bias)(x) - no_bias(x)
    assert approximate.dtype == torch.float32
    assert 0 < (approximate - exact).abs().max() < 0.02 * exact.abs().max()
    assert without.abs().max() < 0.02 * no_bias(x).abs().max()


def test_bf16_on_a_cpu_without_bf16_arithmetic_warns_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(decoding, "cpu_has_bf16", lambda: False)
    decoding.warn_emulated_bf16.cache_clear()
    model = random_transformer(2, 3, seed=int(torch.randint(0, 100, ())))
    with caplog.at_level(logging.WARNING, logger="jukebox_pl"):
        for _ in range(3):  # a decoder per window
            StaticDecoder(model, 2, quantize="bf16")
        StaticDecoder(model, 2, quantize="int8")
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == len(caplog.records) == 1
    assert "no bf16 arithmetic" in caplog.records[0].message
    decoding.warn_emulated_bf16.cache_clear()


def test_unknown_quantization_is_refused() -> None:
    with pytest.raises(ValueError, match="'none', 'int8' or 'bf16'"):
        StaticDecoder(random_transformer(2, 3, seed=0), 1, quantize="int4")
    with pytest.raises(JukeboxError, match="quantize is 'none', 'int8' or 'bf16'"):
        build("sampler", {"_component_": "ancestral", "vqvae": "unused", "quantize": "fp8"})


def labels_for(prior: torch.nn.Module, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    labels = {
        "artist": torch.tensor([1, 2] * (batch // 2)),
        "genres": torch.tensor([[1, -1, -1, -1, -1]] * batch),
        "timing": torch.tensor([[22050, 0, 32 * 16]] * batch),
    }
    if prior.lyric_tokens:
        labels["lyrics"] = torch.randint(1, 79, (batch, prior.lyric_tokens), generator=generator)
    if prior.upper is not None:
        labels["upper_codes"] = torch.randint(0, 256, (batch, prior.n_ctx // prior.upper.ratio), generator=generator)
    return labels


@pytest.mark.parametrize("spec", [TOP, TOP_PREFIX, UPSAMPLER], ids=["lyrics-encoder", "lyric-prefix", "upsampler"])
def test_sampling_through_the_static_cache_draws_the_codes_of_the_full_pass(spec: dict) -> None:
    # The uncached path runs the whole window through Transformer.forward at every step: the reference.
    torch.manual_seed(6)
    prior = build(None, spec).eval()
    with torch.no_grad():
        for parameter in prior.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.02)
    generator = torch.Generator().manual_seed(7)
    labels = labels_for(prior, 4, generator)
    prompt = torch.randint(0, 256, (4, 5), generator=generator)
    draws = [
        prior.sample(labels, 32, prompt, generator=torch.Generator().manual_seed(8), use_cache=cache, chunk_size=4)
        for cache in (True, False)
    ]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0][:, :5], prompt)


@pytest.mark.parametrize("quantize", ["int8", "bf16"])
def test_reduced_precision_sampling_draws_codes_of_the_vocabulary(quantize: str) -> None:
    torch.manual_seed(9)
    prior = build(None, {**PRIOR, "level": 1, "hop_length": 16, "depth": 2, "attn_order": 2}).eval()
    codes = prior.sample({"artist": torch.zeros(2, dtype=torch.long)}, 32, quantize=quantize,
                         generator=torch.Generator().manual_seed(10))  # fmt: skip
    assert codes.shape == (2, 32) and 0 <= int(codes.min()) and int(codes.max()) < 256


def test_hold_model_at_temperature_one_draws_the_codes_of_plain_sampling() -> None:
    # At temperature 1 without filters the model's chance to repeat is the cooled one: same draws.
    torch.manual_seed(11)
    prior = build(None, {**PRIOR, "level": 1, "hop_length": 16, "depth": 2, "attn_order": 2}).eval()
    labels = {"artist": torch.zeros(3, dtype=torch.long)}
    draws = [prior.sample(labels, 24, hold=hold, generator=torch.Generator().manual_seed(12)) for hold in HOLDS]
    assert torch.equal(draws[0], draws[1])
    with pytest.raises(JukeboxError, match="hold is 'cooled' or 'model'"):
        build("sampler", {"_component_": "ancestral", "vqvae": "unused", "hold": "always"})


def test_the_reference_implementation_draws_our_codes_from_our_weights(jukebox_reference) -> None:
    # transformers' deprecated Jukebox (the optional `bench` extra), given our upsampler's weights and the same
    # random stream, draws the same codes: the speed comparison compares the same computation.
    reference = jukebox_reference
    torch.manual_seed(12)
    prior = build(None, {**UPSAMPLER, "labels": None}).eval()  # a start vector: the reference has no labels here
    theirs = reference.reference_prior(prior)
    labels = {"artist": torch.zeros(2, dtype=torch.long), "upper_codes": torch.randint(0, 256, (2, 16))}
    with torch.inference_mode():
        conditioning = prior.conditioning(labels, prior.n_ctx)[1]
        torch.manual_seed(13)
        ours = prior.sample(labels, 20)
        torch.manual_seed(13)
        assert torch.equal(theirs.sample(2, audio_conditioning=conditioning, sample_tokens=20), ours)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_cuda_graph_replays_the_static_step() -> None:
    device = torch.device("cuda")
    model = random_transformer(2, 3, seed=11).to(device)
    x = torch.randn(2, N_CTX, WIDTH, device=device)
    positions = torch.arange(N_CTX, device=device)
    with torch.no_grad():
        full = model(x)
        decoder = StaticDecoder(model, 2)
        graph = CudaGraphStep(decoder, x[:, 0], positions[:1])
        stepped = torch.stack([graph(x[:, t], positions[t : t + 1]).clone() for t in range(N_CTX)], dim=1)
    assert (stepped - full).abs().max() < 1e-3
