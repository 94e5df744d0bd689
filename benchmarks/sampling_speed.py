"""Sampling speed against the floor of streaming the weights, batched, int8 and bf16; cached against uncached decoding.

Floor part (the default). A decoding step at batch 1 is a chain of matrix-vector products: it cannot take
less than the time to read every weight it multiplies once. For each model the script measures, in the
same run, that floor (``F.linear`` over every projection the step reads, the transformer's and the output
head's, at the step's batch size, nothing else) and the decoding step of ``JukeboxPrior.sample`` (the
median gap between two sampled codes, stamped by ``on_token``, after a prompt of `--prompt` codes), and
prints the step as a fraction of the floor (1.0 would be the weights alone), and of floor+kv (the same
products and one read of the cached keys and values that the step attends to), at batch 1, 4 and 16
(`--batches`), in fp32, with int8 weights (``quantize="int8"``, the batches of `--int8-batches`, default 1
and 16) and with bf16 weights (``quantize="bf16"``, the batches of `--bf16-batches`, default 16; the floor
of the int8 and bf16 rows is still fp32's; under the table, each int8 row's products alone through the
int8 kernels, the floor of an int8 step, and as many int8 and fp32 products of a 16 x 16 weight: what each
call costs beyond its weights). The models: the CPU demo's
top prior and upsampler (``demo_top_prior``, ``demo_upsampler``) and an upsampler of width 512, depth 24,
4 heads, 2048 codes, n_ctx 1024 in blocks of 64 (``tiny_upsampler`` raised to that size, 22 M parameters).
The cases are measured in turn, `--repeats` rounds, and the medians are quoted, so that a busy machine
slows every case alike. Every step is measured under ``torch.inference_mode()`` with `--threads` threads
(default 1). The last lines say whether the targets hold for the 512 x 24 upsampler: batch 1 at least 80%
of the floor, batch 16 at least 6x the tokens/s of batch 1, int8 at least 1.8x fp32 at batch 1; then
fp32, int8 and bf16 at batch 16 against the reference (fp32, the only precision its sampling runs in on CPU).

With the demo's trained models (`--demo`, default ``runs/demo`` with codes under ``data/demo/codes``, when
both exist), it also measures what int8 and bf16 cost: bits per token of every validation window,
teacher-forced one position at a time through the decoding step in fp32, in int8 and in bf16, and how often
each agrees with fp32 on the most likely next code.

    .venv/bin/python benchmarks/sampling_speed.py                        # about 5 min on 2 cores
    .venv/bin/python benchmarks/sampling_speed.py --models upsampler_512x24 --batches 1 16

prints the configuration, then one row per model, batch and precision::

    model  batch  precision  floor ms  floor+kv ms  step ms  of floor  of floor+kv  tok/s

Cached against uncached (`--vs-uncached`). For a top prior and an upsampler built from the ``tiny_prior`` and
``tiny_upsampler`` presets, raised to the mid size of ``prior_speed.py`` (width 512, depth 8,
4 heads; `--width`/`--depth`/`--heads`, e.g. ``128 4 2`` for the presets' own sizes, whose
cached steps are mostly per-op overhead), attn_order 2 (rows, columns, previous rows) in blocks
of `--block-ctx` 64 codes as the released models, 256 codes, and n_ctx 512..8192 (`--n-ctx`):
the steady-state decoding speed near the end of a full window. Each window gets a prompt of
``n_ctx - k`` random codes and samples the last `k` (`--k`, default 16) with
``JukeboxPrior.sample(..., length=n_ctx)``, `--repeats` (3) times; an ``on_token`` callback
stamps the time after every sampled token. Decoding tokens/s is the batch over the median gap
between two stamps (k - 1 gaps per call, pooled over the repeats; the median because the
machine may be shared and noisy), with the KV cache (``use_cache=True``) and without it
(``use_cache=False``: every step runs the whole window so far). Prefill tokens/s is
``batch * (n_ctx - k)`` over the median time from the call to its first stamp less one median
decoding step: it covers the prompt fed in chunks (`--chunk-size` 32) and the window's
conditioning (the upsampler's upper-codes stack), as one window of a sampler pays them. Every
model and n_ctx is warmed up once (a cached and an uncached call of 2 codes) before it is timed;
all figures come from the same run, in fp32 under ``torch.inference_mode()``. The last line says
whether the target holds: cached at least 10x uncached at n_ctx 2048, for both models.

    .venv/bin/python benchmarks/sampling_speed.py --vs-uncached --threads 2  # about 4 min on 2 cores
    .venv/bin/python benchmarks/sampling_speed.py --vs-uncached --n-ctx 512 2048 --k 32 --batch 4

prints the configuration, then one row per model and n_ctx::

    model      n_ctx  cached tok/s  uncached tok/s  speedup  prefill tok/s

GPU part (`--released`). The wall time to sample 20 s of 44.1 kHz audio at all three levels
with the released sizes and random weights, as the ``ancestral`` sampler does it: the top
prior (`--top`, default ``prior_1b_lyrics``; ``prior_5b_lyrics`` or ``prior_5b``) over
20 s // 128 = 6890 codes, then the ``upsampler`` preset for the middle level (hop 32, 27560
codes) and again for the bottom (level 0, hop 8, 110240 codes), each from the codes of the
level above. Every level is sampled in windows with ``jukebox_pl.samplers.windows``
(`window_starts`, `window_hop`, `upper_window`) and the hop fractions of openai/jukebox
(README and ``sample.py``: ``--hop_fraction 0.5,0.5,0.125`` for levels 0, 1, 2), KV cache on,
prompts fed in chunks of 32. The priors are built without label conditioners (artist, genre and
timing embeddings once per window, a negligible cost; the 5B prior's 60 s minimum song length
would refuse 20 s); a lyrics prior gets random lyric tokens in every window. Each prior is built on the
device, cast to `--precision` (bf16 or fp16 weights, under autocast of the same type, so that
no fp32 weight is re-cast at every decoding step), sampled, and freed before the next level;
building is timed but not counted in the sampling time.

    .venv/bin/python benchmarks/sampling_speed.py --released --device cuda --precision bf16
    .venv/bin/python benchmarks/sampling_speed.py --released --device cuda --precision bf16 --top prior_5b_lyrics
    .venv/bin/python benchmarks/sampling_speed.py --released --tiny-released    # CPU smoke test, about 10 s

prints one row per level and the total against the target of 5 minutes on one H100
(openai/jukebox README: "On a V100, it takes about 3 hrs to fully sample 20 seconds of music")::

    level  model  params  n_ctx  hop frac  windows  tokens  build s  sample s  tokens/s

`--tiny-released` swaps the released presets for tiny ones of the same structure (for
``prior_1b_lyrics`` a 16-token lyric prefix read by a prime-attention layer, for
``prior_5b_lyrics`` a 32-token lyrics encoder read by cross-attention layers) and 1 s of audio,
so that the GPU path runs end to end on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import time
from typing import Any

import jukebox_reference
import torch
from torch.nn.utils import skip_init

from jukebox_pl import build
from jukebox_pl.modules.decoding import int8_linear
from jukebox_pl.registry import get
from jukebox_pl.samplers.windows import upper_window, window_hop, window_starts

SAMPLE_RATE = 44100
REFERENCE_VERSION = "4.57.6"  # the last transformers release with Jukebox (models/deprecated/jukebox)
TARGET_SECONDS = 300.0  # the target: 20 s of audio in 5 minutes on one H100
# openai/jukebox README and sample.py: hop fractions 0.5, 0.5, 0.125 for levels 0, 1, 2.
HOP_FRACTIONS = {0: 0.5, 1: 0.5, 2: 0.125}
DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZE_OF = {"fp32": "none", "int8": "int8", "bf16": "bf16"}  # a row's precision -> JukeboxPrior.sample's quantize


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def _parameters(model: torch.nn.Module) -> str:
    count = sum(p.numel() for p in model.parameters())
    return f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.2f}M"


# ---------------------------------------------------------------------- CPU: decoding against the weight floor
FLOOR_MODELS: dict[str, dict[str, Any]] = {
    # as recipes/prior/top_tiny_demo.yaml, less the label conditioner (one start vector per window)
    "demo_top_prior": {"_component_": "demo_top_prior", "lyrics": {"_component_": "lyrics", "n_tokens": 48,
                                                                   "width": 64, "depth": 2, "heads": 2, "blocks": 4}},
    "demo_upsampler": {"_component_": "demo_upsampler"},
    "upsampler_512x24": {
        "_component_": "tiny_upsampler", "width": 512, "depth": 24, "heads": 4, "codebook_size": 2048,
        "n_ctx": 1024, "blocks": 16,
        "upper": {"_component_": "upper_codes", "codebook_size": 2048, "down": 2, "stride": 2, "cond_width": 64,
                  "cond_depth": 4, "dilation_growth_rate": 3, "dilation_cycle": 8},
    },
}  # fmt: skip


def step_projections(prior: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every product one decoding step makes: each layer's projections and the output head.

    A cross layer's encoder projection runs once per window, not per step, and is left out.
    """
    projections = [
        (module.weight, module.bias)
        for name, module in prior.transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith("c_enc_kv")
    ]
    return [*projections, (prior.x_out.weight, None)]


def step_cache_floats(prior: torch.nn.Module, batch: int) -> list[int]:
    """Per layer, how many cached keys and values (floats) one decoding step's attention reads.

    The slots `StaticDecoder` reads for each pattern (`jukebox_pl.modules.decoding`): the window (dense), a
    block, one column of the blocks (transpose_block), the previous block, the prime keys and a spare slot,
    or the encoder states (cross); each slot holds a key and a value of `n_state` per sample.
    """
    counts = []
    for block in prior.transformer.blocks:
        attn = block.attn
        slots = {
            "dense": attn.n_ctx,
            "block": attn.block_ctx,
            "transpose_block": attn.n_ctx // (attn.block_ctx or 1),
            "prev_block": attn.block_ctx,
            "prime": (attn.n_prime_keys or 0) + 1,
            "cross": prior.lyrics.n_tokens if prior.lyrics is not None else 0,
        }[attn.pattern]
        counts.append(slots * batch * 2 * attn.n_state)
    return counts


def floor_seconds(
    projections: list[tuple[torch.Tensor, torch.Tensor | None]], batch: int, cache_floats: list[int], passes: int = 5
) -> tuple[float, float]:
    """(floor, floor+kv), medians of `passes`: the step's matrix products over a batch (streaming the weights
    once), and those plus one read (a sum) of a buffer of `cache_floats` floats per layer, as a step reads its
    cached keys and values.
    """
    inputs = {w.shape[1]: torch.randn(batch, w.shape[1]) for w, _ in projections}
    caches = [torch.randn(count) for count in cache_floats]
    products, totals = [], []
    for _ in range(passes):
        began = time.perf_counter()
        for weight, bias in projections:
            torch.nn.functional.linear(inputs[weight.shape[1]], weight, bias)
        read = time.perf_counter()
        for cache in caches:
            cache.sum()
        products.append(read - began)
        totals.append(time.perf_counter() - began)
    return statistics.median(products), statistics.median(totals)


def int8_products(projections: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[Any]:
    """The step's products as the int8 decoder runs them (`int8_linear`, packed once)."""
    products = []
    for weight, bias in projections:
        # skip_init: the weights are copied in, so no initialisation is drawn (nor its time spent)
        linear = skip_init(torch.nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        products.append((weight.shape[1], int8_linear(linear)))
    return products


def int8_floor_seconds(products: list[Any], batch: int, passes: int = 5) -> float:
    """The median time of the int8 products alone over a batch: what an int8 step cannot go below."""
    inputs = {width: torch.randn(batch, width) for width, _ in products}
    times = []
    for _ in range(passes):
        began = time.perf_counter()
        for width, product in products:
            product(inputs[width])
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def call_cost_seconds(count: int, batch: int, passes: int = 5) -> tuple[float, float]:
    """(int8, fp32): `count` products of a 16 x 16 weight over a batch, medians of `passes`.

    Such a product reads next to nothing, so this is what the kernel costs per call beyond reading its
    weights, paid by every product of an int8 step (`count` of them).
    """
    weight, bias = torch.randn(16, 16), torch.randn(16)
    (_, int8), x = int8_products([(weight, bias)])[0], torch.randn(batch, 16)
    times: dict[str, list[float]] = {"int8": [], "fp32": []}
    for _ in range(passes):
        for name, product in (("int8", int8), ("fp32", lambda x: torch.nn.functional.linear(x, weight, bias))):
            began = time.perf_counter()
            for _ in range(count):
                product(x)
            times[name].append(time.perf_counter() - began)
    return statistics.median(times["int8"]), statistics.median(times["fp32"])


def decoding_step_seconds(
    prior: torch.nn.Module, batch: int, prompt_length: int, k: int, quantize: str, seed: int
) -> float:
    """The median gap between two codes that ``prior.sample`` draws after a random prompt."""
    generator = torch.Generator().manual_seed(seed)
    length = prompt_length + k
    prompt = torch.randint(0, prior.codebook_size, (batch, prompt_length), generator=generator)
    labels: dict[str, torch.Tensor] = {"artist": torch.zeros(batch, dtype=torch.long)}
    if prior.labels is not None:
        labels["genres"] = torch.zeros(batch, prior.labels.max_genres, dtype=torch.long)
        labels["timing"] = torch.tensor([[1_000_000, 0, 100_000]] * batch)
    if prior.lyrics is not None:
        shape = (batch, prior.lyrics.n_tokens)
        labels["lyrics"] = torch.randint(0, prior.lyrics.vocab, shape, generator=generator)
    if prior.upper is not None:
        shape = (batch, prior.n_ctx // prior.upper.ratio)
        labels["upper_codes"] = torch.randint(0, prior.upper.codebook_size, shape, generator=generator)
    stamps: list[float] = []
    prior.sample(labels, length, prompt, generator=generator, quantize=quantize,
                 on_token=lambda: stamps.append(time.perf_counter()))  # fmt: skip
    return statistics.median(b - a for a, b in itertools.pairwise(stamps))


def floor_benchmark(args: argparse.Namespace) -> None:
    print(f"CPU decoding against the floor: {torch.get_num_threads()} thread(s), fp32 unless said, "
          f"{args.k} codes drawn after a prompt of {args.prompt}, medians of {args.repeats} rounds "
          "(cases in turn)")  # fmt: skip
    print("floor: every matrix product of one step (layers and output head) on the step's batch, nothing else; "
          "floor+kv: those products and one read of the cached keys and values the step attends to; "
          "of floor = floor / step")  # fmt: skip
    results: dict[tuple[str, int, str], dict[str, float]] = {}
    reference_missing = "left out (--no-reference)" if args.no_reference else jukebox_reference.available()
    print(f"reference (transformers {REFERENCE_VERSION}'s Jukebox on the same weights, rows 'reference'): "
          f"{reference_missing or 'measured where it covers the model (attn_order 2, no lyrics)'}")  # fmt: skip
    print(f"{'model':<18}{'params':>8}{'batch':>6}{'precision':>10}{'floor ms':>10}{'floor+kv ms':>12}{'step ms':>9}"
          f"{'of floor':>9}{'of floor+kv':>12}{'tok/s':>9}")  # fmt: skip
    for name in args.models:
        torch.manual_seed(0)
        prior = build("prior", FLOOR_MODELS[name]).eval()
        projections = step_projections(prior)
        cases = [(batch, "fp32") for batch in args.batches]
        if not args.no_int8:
            cases += [(batch, "int8") for batch in args.int8_batches]
        packed = int8_products(projections) if any(precision == "int8" for _, precision in cases) else []
        cases += [(batch, "bf16") for batch in args.bf16_batches]
        reference = None
        if not args.no_reference and reference_missing is None:
            with contextlib.suppress(ValueError):  # a pattern or lyrics the reference does not cover
                reference = jukebox_reference.reference_prior(prior)
        if reference is not None:
            cases += [(batch, "reference") for batch in args.batches]
        cache_floats = {batch: step_cache_floats(prior, batch) for batch, _ in cases}
        timings: dict[tuple[int, str], dict[str, list[float]]] = {
            case: {"floor": [], "floor_kv": [], "step": [], "int8_floor": [], "int8_calls": [], "fp32_calls": []}
            for case in cases
        }
        with torch.inference_mode():
            for batch, precision in cases:  # warm-up: allocations, int8 packing, first-call costs
                if precision != "reference":
                    decoding_step_seconds(prior, batch, args.prompt, 3, QUANTIZE_OF[precision], 0)
            for repeat in range(args.repeats):
                for batch, precision in cases:
                    floor, floor_kv = floor_seconds(projections, batch, cache_floats[batch])
                    timings[batch, precision]["floor"].append(floor)
                    timings[batch, precision]["floor_kv"].append(floor_kv)
                    if precision == "int8":
                        timings[batch, precision]["int8_floor"].append(int8_floor_seconds(packed, batch))
                        int8_calls, fp32_calls = call_cost_seconds(len(packed), batch)
                        timings[batch, precision]["int8_calls"].append(int8_calls)
                        timings[batch, precision]["fp32_calls"].append(fp32_calls)
                    if precision == "reference":  # the same positions: prompt + k codes from 0, the last k timed
                        conditioning = reference_conditioning(prior, batch)
                        step = jukebox_reference.reference_step_seconds(
                            reference, conditioning, args.prompt + args.k, args.k
                        )
                    else:
                        step = decoding_step_seconds(prior, batch, args.prompt, args.k, QUANTIZE_OF[precision], repeat)
                    timings[batch, precision]["step"].append(step)
        for batch, precision in cases:
            floor = statistics.median(timings[batch, precision]["floor"])
            floor_kv = statistics.median(timings[batch, precision]["floor_kv"])
            step = statistics.median(timings[batch, precision]["step"])
            results[name, batch, precision] = {"floor": floor, "floor_kv": floor_kv, "step": step, "rate": batch / step}
            print(f"{name:<18}{_parameters(prior):>8}{batch:>6}{precision:>10}{floor * 1e3:>10.2f}"
                  f"{floor_kv * 1e3:>12.2f}{step * 1e3:>9.2f}{floor / step:>9.2f}{floor_kv / step:>12.2f}"
                  f"{batch / step:>9.0f}", flush=True)  # fmt: skip
        for batch, precision in cases:
            if precision == "int8":
                products = statistics.median(timings[batch, precision]["int8_floor"])
                step = results[name, batch, precision]["step"]
                results[name, batch, precision]["int8_floor"] = products
                timing = timings[batch, precision]
                calls = {kind: statistics.median(timing[f"{kind}_calls"]) for kind in ("int8", "fp32")}
                print(f"  {name} int8 batch {batch}: its products alone {products * 1e3:.2f} ms, "
                      f"{products / step:.0%} of the int8 step; as many products of a 16 x 16 weight "
                      f"({len(packed)}) {calls['int8'] * 1e3:.2f} ms in int8, {calls['fp32'] * 1e3:.2f} ms in fp32: "
                      f"{calls['int8'] / len(packed) * 1e6:.0f} us a call")  # fmt: skip
    name = "upsampler_512x24"
    if name not in args.models:
        return
    one = results.get((name, 1, "fp32"))
    sixteen = results.get((name, 16, "fp32"))
    int8 = results.get((name, 1, "int8"))
    if one:
        fraction = one["floor"] / one["step"]
        verdict = "holds" if fraction >= 0.8 else "MISSED"
        print(f"target batch 1 >= 80% of the floor ({name}): {fraction:.1%} -> {verdict}")
    if one and sixteen:
        scale = sixteen["rate"] / one["rate"]
        print(f"target batch 16 >= 6x batch 1 tokens/s ({name}): {scale:.1f}x -> {'holds' if scale >= 6 else 'MISSED'}")
    if one and int8:
        gain = int8["rate"] / one["rate"]
        print(f"target int8 >= 1.8x fp32 at batch 1 ({name}): {gain:.2f}x -> {'holds' if gain >= 1.8 else 'MISSED'}")
    for batch in args.batches:
        ours, theirs = results.get((name, batch, "fp32")), results.get((name, batch, "reference"))
        if ours and theirs:
            ratio = ours["rate"] / theirs["rate"]
            target = f" (target at batch 16: >= 2x -> {'holds' if ratio >= 2 else 'MISSED'})" if batch == 16 else ""
            print(f"against the reference at batch {batch} ({name}): {ratio:.2f}x{target}")
            # A step that only read its weights and its cache once would be this much faster than the reference.
            bound = theirs["step"] / ours["floor_kv"]
            print(f"  the reference's step over our floor+kv at batch {batch}: {bound:.2f}x "
                  "(the most an fp32 step reading its weights and cache once could gain)")  # fmt: skip
            for reduced in ("int8", "bf16"):
                row = results.get((name, batch, reduced))
                if row:
                    against, ratio = row["rate"] / theirs["rate"], row["rate"] / ours["rate"]
                    print(f"  {reduced} weights against the fp32 reference at batch {batch}: {against:.2f}x; "
                          f"against our fp32: {ratio:.2f}x")  # fmt: skip


def reference_conditioning(prior: torch.nn.Module, batch: int) -> torch.Tensor | None:
    """The per-position conditioning (B, n_ctx, width) of random upper codes, as the reference takes it."""
    if prior.upper is None:
        return None
    generator = torch.Generator().manual_seed(batch)
    upper = torch.randint(0, prior.upper.codebook_size, (batch, prior.n_ctx // prior.upper.ratio), generator=generator)
    return prior.conditioning({"upper_codes": upper}, prior.n_ctx)[1]


def teacher_forced_logits(prior: torch.nn.Module, batch: dict[str, torch.Tensor], quantize: str) -> torch.Tensor:
    """Logits (B, L, vocab) of a batch's windows, one position at a time through the decoding step."""
    from jukebox_pl.modules.decoding import StaticDecoder, reduced_linear

    x, positions, _, states, _ = prior._inputs(batch)
    decoder = StaticDecoder(prior.transformer, x.shape[0], quantize=quantize)
    if states is not None:
        decoder.set_encoder(states)
    head = reduced_linear(prior.x_out, quantize) if quantize != "none" else prior.x_out  # as JukeboxPrior.sample
    steps = torch.arange(x.shape[1])
    logits = []
    for t in range(x.shape[1]):
        h = decoder.step(x[:, t], steps[t : t + 1])
        logits.append(head(h + positions[:, t] if prior.add_cond_after else h))
    return torch.stack(logits, dim=1)


def reduced_precision_quality(args: argparse.Namespace) -> None:
    """Bits per token and top-1 agreement, fp32 against int8 and bf16, on the demo's validation windows."""
    from pathlib import Path

    from jukebox_pl.checkpoints.export import load
    from jukebox_pl.pipelines.evidence import validation_windows
    from jukebox_pl.priors.prior import bits_per_token

    runs, codes = Path(args.demo), Path(args.demo_codes)
    if not (runs / "top_prior" / "model").is_dir() or not codes.is_dir():
        print(f"int8 and bf16 quality: not measured, no trained demo models in {runs} or codes in {codes} (make demo)")
        return
    reduced = [q for q in ("int8", "bf16") if not (q == "int8" and args.no_int8)]
    print(f"{' and '.join(reduced)} quality on the demo's validation windows ({runs}, {codes}), teacher-forced "
          "through the step:")  # fmt: skip
    print(f"{'model':<12}{'precision':>10}{'windows':>8}{'fp32 bits':>10}{'bits':>8}{'difference':>11}"
          f"{'top-1 agree':>12}")  # fmt: skip
    for name in ("top_prior", "upsampler"):
        prior = load(runs / name / "model").eval()
        batches = validation_windows(prior, codes, batch_size=16)[: args.quality_batches]
        bits: dict[str, float] = dict.fromkeys(["none", *reduced], 0.0)
        agree, total, windows = dict.fromkeys(reduced, 0), 0, 0
        with torch.inference_mode():
            for batch in batches:
                tokens = batch["codes"].long()
                mask = batch.get("mask")
                logits = {quantize: teacher_forced_logits(prior, batch, quantize) for quantize in bits}
                for quantize, value in logits.items():
                    bits[quantize] += float(bits_per_token(value, tokens, mask)) * tokens.shape[0]
                for quantize in reduced:
                    agree[quantize] += int((logits["none"].argmax(-1) == logits[quantize].argmax(-1)).sum())
                total += tokens.numel()
                windows += tokens.shape[0]
        fp32_bits = bits["none"] / windows
        for quantize in reduced:
            ours = bits[quantize] / windows
            print(f"{name:<12}{quantize:>10}{windows:>8}{fp32_bits:>10.4f}{ours:>8.4f}{ours - fp32_bits:>+11.4f}"
                  f"{agree[quantize] / total:>12.2%}", flush=True)  # fmt: skip


# ---------------------------------------------------------------------- CPU: cached against uncached decoding
def cpu_prior(model: str, n_ctx: int, args: argparse.Namespace) -> torch.nn.Module:
    """The top prior or the upsampler at context `n_ctx`, from the tiny presets with the chosen sizes."""
    torch.manual_seed(0)
    preset = "tiny_prior" if model == "top prior" else "tiny_upsampler"
    overrides = {"n_ctx": n_ctx, "blocks": n_ctx // args.block_ctx}
    overrides.update(width=args.width, depth=args.depth, heads=args.heads)
    return build("prior", {"_component_": preset, **overrides}).eval()


def decode_window(
    prior: torch.nn.Module, n_ctx: int, k: int, use_cache: bool, args: argparse.Namespace, repeats: int = 1
) -> dict[str, float]:
    """Sample the last `k` codes of a full window after a random prompt, `repeats` times.

    Returns the median gap between two sampled codes over every repeat, and the median prefill seconds.
    """
    generator = torch.Generator().manual_seed(k)
    prompt = torch.randint(0, prior.codebook_size, (args.batch, n_ctx - k), generator=generator)
    labels: dict[str, torch.Tensor] = {"artist": torch.zeros(args.batch, dtype=torch.long)}
    if prior.upper is not None:
        shape = (args.batch, n_ctx // prior.upper.ratio)
        labels["upper_codes"] = torch.randint(0, prior.upper.codebook_size, shape, generator=generator)
    gaps, firsts = [], []
    for _ in range(repeats):
        stamps: list[float] = []
        start = time.perf_counter()
        with torch.inference_mode():
            prior.sample(
                labels, n_ctx, prompt, generator=generator, use_cache=use_cache, chunk_size=args.chunk_size,
                on_token=lambda stamps=stamps: stamps.append(time.perf_counter()),
            )  # fmt: skip
        gaps += [b - a for a, b in itertools.pairwise(stamps)]
        firsts.append(stamps[0] - start)
    step = statistics.median(gaps)
    return {"step": step, "prefill": statistics.median(firsts) - step}


def cpu_benchmark(args: argparse.Namespace) -> None:
    k_uncached = args.k_uncached or args.k
    if min(args.k, k_uncached) < 2:
        raise SystemExit("--k and --k-uncached must be at least 2 (decoding speed is read between two tokens)")
    print(f"CPU decoding near the end of a full window: the last {args.k} codes (uncached: {k_uncached}) after a "
          f"prompt of n_ctx - k random codes; batch {args.batch}, fp32, {torch.get_num_threads()} threads, "
          f"prompt chunks of {args.chunk_size}")  # fmt: skip
    for model in ("top prior", "upsampler"):
        prior = cpu_prior(model, args.n_ctx[0], args)
        t = prior.transformer
        upper = f", upper codes {prior.upper.ratio}x" if prior.upper is not None else ""
        print(f"  {model}: {'tiny_prior' if prior.upper is None else 'tiny_upsampler'} preset with width "
              f"{prior.x_emb.embedding_dim}, depth {len(t.blocks)}, {t.blocks[0].attn.heads} heads, layers "
              f"{'/'.join(t.patterns[:3])}, blocks of {args.block_ctx} codes, {prior.codebook_size} codes"
              f"{upper}, {_parameters(prior)} parameters")  # fmt: skip
    print(f"{'model':<11}{'n_ctx':>6}{'cached tok/s':>14}{'uncached tok/s':>16}{'speedup':>9}{'prefill tok/s':>15}")
    speedups: dict[tuple[str, int], float] = {}
    for model in ("top prior", "upsampler"):
        for n_ctx in args.n_ctx:
            prior = cpu_prior(model, n_ctx, args)
            decode_window(prior, n_ctx, 2, True, args)  # warm-up
            decode_window(prior, n_ctx, 2, False, args)
            cached = decode_window(prior, n_ctx, args.k, True, args, args.repeats)
            uncached = decode_window(prior, n_ctx, k_uncached, False, args, args.repeats)
            cached_rate, uncached_rate = args.batch / cached["step"], args.batch / uncached["step"]
            prefill_rate = args.batch * (n_ctx - args.k) / cached["prefill"]
            speedups[model, n_ctx] = cached_rate / uncached_rate
            print(f"{model:<11}{n_ctx:>6}{cached_rate:>14.1f}{uncached_rate:>16.2f}{speedups[model, n_ctx]:>8.1f}x"
                  f"{prefill_rate:>15.0f}", flush=True)  # fmt: skip
    print("tok/s: codes per second over the batch; decoding from the median gap between two sampled codes, prefill "
          "from the time to the first code less one decoding step")  # fmt: skip
    at_2048 = {model: speedups.get((model, 2048)) for model in ("top prior", "upsampler")}
    if None in at_2048.values():
        print("target (cached >= 10x uncached at n_ctx 2048, both models): not measured, n_ctx 2048 is not in --n-ctx")
        return
    holds = all(speedup >= 10 for speedup in at_2048.values())
    figures = ", ".join(f"{model} {speedup:.1f}x" for model, speedup in at_2048.items())
    print(f"target (cached >= 10x uncached at n_ctx 2048, both models): {figures} -> {'holds' if holds else 'MISSED'}")


# ---------------------------------------------------------------------- GPU: 20 s at all three levels
def level_specs(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(name, spec) of the top, middle and bottom priors: the released presets, or tiny ones of the same shape."""
    if not args.tiny_released:
        return [
            (args.top, {"_component_": args.top, "labels": None}),
            ("upsampler", {"_component_": "upsampler", "labels": None}),
            ("upsampler (level 0)", {"_component_": "upsampler", "labels": None, "level": 0, "hop_length": 8}),
        ]
    top: dict[str, Any] = {"_component_": "tiny_prior", "level": 2, "hop_length": 128, "codebook_size": 2048}
    if args.top == "prior_1b_lyrics":  # a lyric prefix in a merged vocabulary; layer 15 is prime attention
        top.update(n_tokens=16, lyric_vocab=79, lyrics_version="v3", attn_order=12, depth=16)
    elif args.top == "prior_5b_lyrics":  # a separate lyrics encoder; every 4th layer is cross attention
        lyrics = {"_component_": "lyrics", "n_tokens": 32, "vocab": 80, "width": 64, "depth": 2, "heads": 2,
                  "attn_order": 2, "blocks": 4}  # fmt: skip
        top.update(attn_order=6, lyrics=lyrics)
    upper = {"_component_": "upper_codes", "codebook_size": 2048, "down": 2, "stride": 2, "cond_width": 64,
             "cond_depth": 4, "dilation_growth_rate": 3, "dilation_cycle": 8}  # fmt: skip
    return [
        (f"tiny {args.top}", top),
        ("tiny upsampler", {"_component_": "tiny_upsampler", "level": 1, "hop_length": 32, "codebook_size": 2048,
                            "upper": upper}),
        ("tiny upsampler (0)", {"_component_": "tiny_upsampler", "level": 0, "hop_length": 8, "codebook_size": 2048,
                                "upper": upper}),
    ]  # fmt: skip


def window_labels(
    prior: torch.nn.Module, batch: int, start: int, total: int, upper: torch.Tensor | None, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """What the prior's conditioners read for the window at code `start`: random lyrics, the upper codes."""
    device = generator.device
    labels = {"artist": torch.zeros(batch, dtype=torch.long, device=device)}
    if prior.lyric_tokens:
        vocab = prior.lyrics.vocab if prior.lyrics is not None else prior.lyric_vocab
        shape = (batch, prior.lyric_tokens)
        labels["lyrics"] = torch.randint(0, vocab, shape, generator=generator, device=device)
    if prior.upper is not None:
        length = min(prior.n_ctx, total - start)  # as Sampler.window_labels
        labels["upper_codes"] = upper_window(upper, start, length, prior.upper.ratio)
    return labels


def sample_level(
    prior: torch.nn.Module, total: int, upper: torch.Tensor | None, args: argparse.Namespace, device: torch.device
) -> tuple[torch.Tensor, int]:
    """All `total` codes (B, total) of one level, window by window as ``Sampler.sample_level``; and the windows."""
    ratio = prior.upper.ratio if prior.upper is not None else 1
    hop = window_hop(prior.n_ctx, HOP_FRACTIONS[prior.level], ratio)
    generator = torch.Generator(device).manual_seed(prior.level)
    current = torch.zeros(args.batch, 0, dtype=torch.long, device=device)
    starts = window_starts(total, prior.n_ctx, hop)
    for start in starts:
        end = min(start + prior.n_ctx, total)
        labels = window_labels(prior, args.batch, start, total, upper, generator)
        window = prior.sample(
            labels, end - start, current[:, start:], temperature=0.99, generator=generator, use_cache=True,
            chunk_size=args.chunk_size,
        )  # fmt: skip
        current = torch.cat([current, window[:, current.shape[1] - start :]], dim=1)
    return current, len(starts)


def released_against_reference(prior: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    """Batch-1 tokens/s of our decoding and the reference's on the same weights, the first codes of a window."""
    try:
        reference = jukebox_reference.reference_prior(prior.float().cpu())
    except ValueError as error:
        print(f"{'':<6}reference: not measured ({error})")
        prior.to(device, DTYPES[args.precision])
        return
    prior.to(device, DTYPES[args.precision])
    reference = reference.to(device, DTYPES[args.precision])
    codes, last = args.reference_codes, args.reference_codes - 1
    conditioning = None
    if prior.upper is not None:
        upper = torch.randint(0, prior.upper.codebook_size, (1, prior.n_ctx // prior.upper.ratio), device=device)
        conditioning = prior.conditioning({"upper_codes": upper}, prior.n_ctx)[1]
    stamps: list[float] = []

    def stamp() -> None:
        _synchronise(device)
        stamps.append(time.perf_counter())

    with torch.inference_mode(), _autocast(device, args.precision):
        labels = {"artist": torch.zeros(1, dtype=torch.long, device=device)}
        if prior.upper is not None:
            labels["upper_codes"] = upper
        prior.sample(labels, codes, on_token=stamp)
        ours = statistics.median(b - a for a, b in itertools.pairwise(stamps[-last:]))
        theirs = jukebox_reference.reference_step_seconds(reference, conditioning, codes, last)
    print(f"{'':<6}batch 1, first {codes} codes: ours {1 / ours:.1f} tok/s, reference {1 / theirs:.1f} tok/s, "
          f"{theirs / ours:.1f}x (target on a GPU: >= 10x)")  # fmt: skip
    del reference


def released_benchmark(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if device.type == "cpu" and not args.tiny_released:
        raise SystemExit("--released samples with 1B to 5B-parameter priors, hours on a CPU: use --device cuda, "
                         "or --tiny-released for the CPU smoke test")  # fmt: skip
    seconds = args.seconds or (1.0 if args.tiny_released else 20.0)
    total_samples = int(seconds * SAMPLE_RATE) // 128 * 128  # a whole number of top-level codes
    dtype = DTYPES[args.precision]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    weights = "fp32 weights" if args.precision == "32" else f"{args.precision} weights + autocast"
    print(f"sampling {seconds:g} s ({total_samples} samples at {SAMPLE_RATE} Hz) at three levels: {name}, {weights}, "
          f"batch {args.batch}, KV cache, prompt chunks of {args.chunk_size}, random weights"
          f"{' (tiny presets)' if args.tiny_released else ''}")  # fmt: skip
    print(f"{'level':<6}{'model':<20}{'params':>8}{'n_ctx':>7}{'hop frac':>9}{'windows':>8}{'tokens':>9}"
          f"{'build s':>9}{'sample s':>10}{'tokens/s':>10}")  # fmt: skip
    specs = level_specs(args)
    for _, spec in specs:  # the registry imports its modules on the first lookup: not part of a build's time
        get("prior", spec["_component_"])
    upper: torch.Tensor | None = None
    upper_hop = None
    sampling = 0.0
    reference_missing = jukebox_reference.available() if args.reference_codes else "left out (--reference-codes 0)"
    print(f"reference (transformers {REFERENCE_VERSION}'s Jukebox, batch 1, same weights, the first "
          f"{args.reference_codes} codes): {reference_missing or 'measured for the levels it covers'}")  # fmt: skip
    for label, spec in specs:
        began = time.perf_counter()
        torch.manual_seed(0)
        with torch.device(device):
            prior = build("prior", spec)
        prior = prior.to(dtype).eval()
        _synchronise(device)
        built = time.perf_counter() - began
        if upper_hop is not None and upper_hop != prior.hop_length * prior.upper.ratio:
            raise SystemExit(f"{label}: hop {prior.hop_length} x {prior.upper.ratio} is not the upper hop {upper_hop}")
        total = total_samples // prior.hop_length
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        with torch.inference_mode(), _autocast(device, args.precision):
            codes, windows = sample_level(prior, total, upper, args, device)
        _synchronise(device)
        took = time.perf_counter() - began
        sampling += took
        tokens = args.batch * total
        print(f"{prior.level:<6}{label:<20}{_parameters(prior):>8}{prior.n_ctx:>7}{HOP_FRACTIONS[prior.level]:>9g}"
              f"{windows:>8}{tokens:>9}{built:>9.1f}{took:>10.1f}{tokens / took:>10.1f}", flush=True)  # fmt: skip
        if device.type == "cuda":
            print(f"{'':<6}peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
        if args.reference_codes and reference_missing is None:
            released_against_reference(prior, args, device)
        upper, upper_hop = codes, prior.hop_length
        del prior
        if device.type == "cuda":
            torch.cuda.empty_cache()
    verdict = "met" if sampling <= TARGET_SECONDS else "MISSED"
    if args.tiny_released or seconds != 20 or device.type != "cuda":
        verdict = "not judged (tiny presets, another length or no GPU)"
    print(f"total sampling wall time: {sampling:.1f} s ({sampling / 60:.1f} min) for {seconds:g} s of audio, batch "
          f"{args.batch}; target 5 min for 20 s on one H100 -> {verdict}")  # fmt: skip
    print("reference: openai/jukebox README, about 3 hours on a V100 for 20 s of audio (10800 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--k", type=int, default=16, help="codes sampled at the end of each window")
    parser.add_argument("--k-uncached", type=int, default=0, help="codes sampled without the cache (default: --k)")
    parser.add_argument("--block-ctx", type=int, default=64, help="codes per block of the factorized attention")
    parser.add_argument("--width", type=int, default=512, help="the tiny presets have 128")
    parser.add_argument("--depth", type=int, default=8, help="the tiny presets have 4")
    parser.add_argument("--heads", type=int, default=4, help="the tiny presets have 2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per model, n_ctx and path")
    parser.add_argument("--chunk-size", type=int, default=32, help="prompt positions per prefill call")
    parser.add_argument("--threads", type=int, default=None, help="default: 1 (floor part), every core (others)")
    parser.add_argument("--released", action="store_true", help="sample 20 s at three levels with released sizes")
    parser.add_argument("--top", choices=["prior_1b_lyrics", "prior_5b_lyrics", "prior_5b"], default="prior_1b_lyrics")
    parser.add_argument("--tiny-released", action="store_true", help="--released with tiny presets and 1 s (smoke)")
    parser.add_argument("--seconds", type=float, default=0.0, help="audio to sample (default 20, 1 with --tiny-...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=list(DTYPES), default="32")
    parser.add_argument("--vs-uncached", action="store_true", help="cached against uncached decoding, by n_ctx")
    parser.add_argument("--models", nargs="+", choices=list(FLOOR_MODELS), default=list(FLOOR_MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--prompt", type=int, default=128, help="prompt codes before the timed ones (floor part)")
    parser.add_argument("--no-int8", action="store_true", help="leave out the int8 rows")
    parser.add_argument("--int8-batches", type=int, nargs="*", default=[1, 16], help="batches of the int8 rows")
    parser.add_argument("--bf16-batches", type=int, nargs="*", default=[16], help="batches of the bf16 rows")
    parser.add_argument("--no-reference", action="store_true", help="leave out the reference rows")
    parser.add_argument("--reference-codes", type=int, default=64, help="--released: codes per reference timing")
    parser.add_argument("--demo", default="runs/demo", help="the trained demo models, for the int8 and bf16 quality")
    parser.add_argument("--demo-codes", default="data/demo/codes")
    parser.add_argument("--quality-batches", type=int, default=4, help="validation batches of 16 windows")
    args = parser.parse_args()
    if args.threads is None:
        every_core = args.vs_uncached or args.released or args.tiny_released
        args.threads = len(os.sched_getaffinity(0)) if every_core else 1
    torch.set_num_threads(args.threads)
    if args.released or args.tiny_released:
        released_benchmark(args)
        return
    if not args.vs_uncached:
        floor_benchmark(args)
        reduced_precision_quality(args)
        return
    bad = [n for n in args.n_ctx if n % args.block_ctx or n <= max(args.k, args.k_uncached)]
    if bad:
        parser.error(f"--n-ctx {bad}: each must be a multiple of --block-ctx {args.block_ctx} and more than --k")
    cpu_benchmark(args)


if __name__ == "__main__":
    main()
