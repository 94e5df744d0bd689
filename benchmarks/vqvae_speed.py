"""VQ-VAE speed and memory: training step time, peak memory, and encode/decode real-time factor.

For a preset (default: the paper's `jukebox_vqvae`) at a fixed batch, on CPU and, when one
is visible, on a CUDA GPU (fp32 and bf16 autocast). The real-time factor is seconds of
audio processed per wall second (above 1 is faster than real time). Figures are medians
of `--repeats` timed runs after one warm-up; compare them as ratios within one run.

    .venv/bin/python benchmarks/vqvae_speed.py                       # jukebox_vqvae, batch 1 x 1 s, CPU
    .venv/bin/python benchmarks/vqvae_speed.py --preset tiny_vqvae --seconds 2 --batch 4
    .venv/bin/python benchmarks/vqvae_speed.py --device cuda --batch 4 --seconds 6   # on a GPU
    .venv/bin/python benchmarks/vqvae_speed.py --reference --seconds 5 --repeats 5    # against transformers'

`--reference` (the released VQ-VAE only; the `bench` extra) times, on the CPU, encoding every level and
decoding each level's codes with ours and with transformers 4.57.6's deprecated ``JukeboxVQVAE`` on the same
weights (`jukebox_reference.reference_vqvae`), in turns, after checking that both give the same codes.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time
from collections.abc import Callable

import jukebox_reference
import torch

from jukebox_pl import build


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    work()  # warm-up: allocator, kernels, codebook initialisation
    _synchronise(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(preset: str, device: torch.device, batch: int, seconds: float, repeats: int, bf16: bool) -> dict:
    torch.manual_seed(0)
    vqvae = build("vqvae", {"_component_": preset, "bandwidth": {"l1": 0.1, "l2": 0.02, "spec": 50.0}}).to(device)
    hop = vqvae.hop_lengths[-1]
    length = int(seconds * vqvae.sample_rate) // hop * hop
    audio = 0.1 * torch.randn(batch, 1, length, device=device)
    optimizer = torch.optim.Adam(vqvae.parameters(), lr=1e-4)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )  # the codebook and STFT losses stay in float32 inside

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = vqvae.losses(audio, vqvae(audio))
        loss.backward()
        optimizer.step()

    vqvae.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = median_seconds(train_step, device, repeats)
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()

    vqvae.eval()
    audio_seconds = batch * length / vqvae.sample_rate
    with torch.no_grad(), autocast:
        encode = median_seconds(lambda: vqvae.encode(audio), device, repeats)
        codes = vqvae.encode(audio)
        decode = [median_seconds(lambda c=c, lv=lv: vqvae.decode(c, lv), device, repeats) for lv, c in enumerate(codes)]
    return {
        "step": step,
        "memory": memory,
        "encode_rtf": audio_seconds / encode,
        "decode_rtf": [audio_seconds / d for d in decode],
        "samples": length,
    }


def against_reference(preset: str, batch: int, seconds: float, repeats: int) -> None:
    """Encode (every level) and decode (each level) with ours and with the reference, in turns, on the CPU."""
    if (missing := jukebox_reference.available()) is not None:
        print(f"reference: {missing}")
        return
    torch.manual_seed(0)
    vqvae = build("vqvae", {"_component_": preset}).eval()
    hop = vqvae.hop_lengths[-1]
    audio = 0.1 * torch.randn(batch, vqvae.channels, int(seconds * vqvae.sample_rate) // hop * hop)
    with torch.no_grad():  # codebooks drawn around the encoders' outputs, so that every code can be the nearest
        for encoder, bottleneck in zip(vqvae.encoders, vqvae.bottlenecks, strict=True):
            latents = encoder(audio[:1, :, : 16 * hop])
            bottleneck.codebook.normal_().mul_(latents.std()).add_(latents.mean())
    reference = jukebox_reference.reference_vqvae(vqvae)
    with torch.inference_mode():
        codes = vqvae.encode(audio)
        theirs = reference.encode(audio.transpose(1, 2))
        same = [float((a == b).float().mean()) for a, b in zip(codes, theirs, strict=True)]
        decoded = [(vqvae.decode(c, level), reference.decode([c], level, level + 1)) for level, c in enumerate(codes)]
        gap = max(float((a - b.transpose(1, 2)).abs().max() / a.abs().max()) for a, b in decoded)
        cases = {"encode (every level)": (lambda: vqvae.encode(audio), lambda: reference.encode(audio.transpose(1, 2)))}
        for level, c in enumerate(codes):
            cases[f"decode level {level}"] = (
                lambda c=c, level=level: vqvae.decode(c, level),
                lambda c=c, level=level: reference.decode([c], level, level + 1),
            )
        times: dict[tuple[str, int], list[float]] = {(name, side): [] for name in cases for side in (0, 1)}
        for pair in cases.values():  # warm-up
            for work in pair:
                work()
        for _ in range(repeats):
            for name, pair in cases.items():
                for side, work in enumerate(pair):
                    start = time.perf_counter()
                    work()
                    times[name, side].append(time.perf_counter() - start)
    print(f"{preset} against transformers' JukeboxVQVAE on the same weights: batch {batch} x {audio.shape[-1]} samples "
          f"({audio.shape[-1] / vqvae.sample_rate:.2f} s), {torch.get_num_threads()} threads, medians of {repeats} "
          "rounds in turns")  # fmt: skip
    print("the same codes as the reference: " + ", ".join(f"level {lv} {s:.2%}" for lv, s in enumerate(same))
          + f"; decoded audio within {gap:.1e} of its peak")  # fmt: skip
    print(f"{'':<22}{'ours s':>9}{'reference s':>13}{'ours faster':>13}")
    ratios = {}
    for name in cases:
        ours, theirs_s = statistics.median(times[name, 0]), statistics.median(times[name, 1])
        ratios[name] = theirs_s / ours
        print(f"{name:<22}{ours:>9.3f}{theirs_s:>13.3f}{ratios[name]:>12.2f}x")
    encode = ratios["encode (every level)"]
    print(f"target encode >= 1.0x the reference: {encode:.2f}x -> {'holds' if encode >= 1.0 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="jukebox_vqvae")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each item")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--reference", action="store_true", help="ours against transformers' Jukebox VQ-VAE (CPU)")
    args = parser.parse_args()
    if args.reference:
        against_reference(args.preset, args.batch, args.seconds, args.repeats)
        return
    runs = []
    if args.device in ("cpu", "all"):
        runs.append((torch.device("cpu"), False))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        runs += [(torch.device("cuda"), False), (torch.device("cuda"), True)]
    elif args.device == "cuda":
        parser.error("no CUDA device is visible to torch")
    print(f"preset {args.preset}, batch {args.batch} x {args.seconds:g} s, {torch.get_num_threads()} CPU threads")
    print(f"process RSS after imports, before any model: {peak_rss_mib():.0f} MiB")
    print(f"{'device':<14}{'train step s':>14}{'peak MiB':>10}{'encode RTF':>12}  decode RTF per level")
    for device, bf16 in runs:
        result = measure(args.preset, device, args.batch, args.seconds, args.repeats, bf16)
        name = f"{device.type}{' bf16' if bf16 else ''}"
        decode = " ".join(f"{rtf:.2f}" for rtf in result["decode_rtf"])
        print(f"{name:<14}{result['step']:>14.3f}{result['memory']:>10.0f}{result['encode_rtf']:>12.2f}  {decode}")
    print("RTF: seconds of audio per wall second. Peak memory: CUDA allocator peak on GPU, process max RSS on CPU.")


if __name__ == "__main__":
    main()
