"""Proof on a GPU in one command: fp32, fp16 and bf16 training of the VQ-VAE, released-size prior steps with their
memory and model FLOPs utilisation, FSDP per block on one device, and the sampling benchmark.

GPU time comes in short slots, so every part runs within its share of a time budget (`--minutes`) and a part that
runs out of time says so in the table instead of holding up the rest:

    .venv/bin/python benchmarks/gpu_check.py                          # the CUDA device, 8 minutes
    .venv/bin/python benchmarks/gpu_check.py --minutes 5 --out runs/gpu_check
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny      # the same code paths at tiny size (CI)

Writes OUT/gpu_check.json (every figure) and OUT/gpu_check.md (the tables for docs/scaling.md):

- **VQ-VAE** (`jukebox_vqvae` at 44.1 kHz; `tiny_vqvae` with `--tiny`): `--steps` training steps from the same
  seed on the same audio in ``32-true``, ``16-mixed`` (autocast and a GradScaler, the loss scaling of Lightning's
  mixed precision) and ``bf16-mixed``: the median step time, the peak memory, the loss after the last step and its
  relative difference from fp32's, and whether every codebook is finite.
- **Priors** (`prior_1b_lyrics` and `upsampler`, random weights; tiny ones of the same structure with `--tiny`): one
  training step at batch 1 with every transformer block's activations recomputed in the backward pass
  (``checkpoint_blocks``), in ``bf16-mixed`` and ``16-mixed``: step time, peak memory, tokens/s and MFU, the model
  FLOPs (3 times the forward's, counted by ``torch.utils.flop_counter``; the recomputed forwards are not model
  FLOPs) per second over the device's quoted dense peak for that precision.
- **own_music at size gpu**: a few training steps of each model that ``jukebox-pl run own_music vars.size=gpu``
  trains (built from their recipes, batch 16, bf16-mixed): step time, peak memory, and the hours that size's steps
  take at that speed (data loading and validation left out).
- **fsdp_blocks** on one device: a tiny prior trained a few steps by Lightning with the strategy, then its whole
  checkpoint gathered and written: a smoke run of the wrapping, mixed precision and state-dict gathering (on one
  device torch's FSDP shards nothing: NO_SHARD; the two-process CPU tests run the sharding itself).
- **Sampling**: `benchmarks/sampling_speed.py --released` (20 s at three levels, bf16; its tiny presets on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from jukebox_pl import build, recipes
from jukebox_pl.atomic import atomic_write_text

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import sampling_speed  # noqa: E402  (this folder's benchmark, for its released and tiny prior specs)

# Dense (no sparsity) tensor peaks in TFLOP/s for bf16 and fp16 from NVIDIA's datasheets (H100 SXM and H200: 989;
# H100 PCIe: 756; A100: 312). Another device needs --peak-tflops for its MFU.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
PRECISIONS = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
MAX_SKIPPED = 24  # fp16 steps skipped for overflow before the check gives up: GradScaler starts at 2**16
SHARES = {"vqvae": 0.2, "priors": 0.3, "own_music": 0.1, "fsdp": 0.05, "sampling": 0.35}  # of the budget, in this order


class Budget:
    """Wall-clock deadlines: each part gets its share of the budget, plus what the parts before it left."""

    def __init__(self, minutes: float) -> None:
        self.start, self.total = time.monotonic(), minutes * 60.0
        self.used_shares = 0.0

    def part(self, share: float) -> float:
        """The deadline (monotonic seconds) of the next part."""
        self.used_shares += share
        return self.start + self.total * min(1.0, self.used_shares)

    def left(self, deadline: float) -> float:
        return deadline - time.monotonic()


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """The CUDA allocator's peak since `reset_peak`; on a CPU the process's peak RSS so far (it never resets)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def device_peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def test_audio(batch: int, length: int, sample_rate: int, device: torch.device) -> torch.Tensor:
    """Chords of a few partials with a little noise: a loss that falls, the same for every precision."""
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(length) / sample_rate
    audio = torch.zeros(batch, 1, length)
    for item in range(batch):
        for _ in range(4):
            pitch = 110.0 * 2 ** (float(torch.randint(0, 36, (), generator=generator)) / 12)
            for partial in range(1, 4):
                audio[item, 0] += 0.05 / partial * torch.sin(2 * math.pi * pitch * partial * t)
    audio += 0.003 * torch.randn(audio.shape, generator=generator)
    return audio.to(device)


def vqvae_rows(device: torch.device, tiny: bool, steps: int, deadline: float, budget: Budget) -> list[dict[str, Any]]:
    preset = "tiny_vqvae" if tiny else "jukebox_vqvae"
    batch, length = (2, 4096) if tiny else (2, 2**17)
    rows: list[dict[str, Any]] = []
    fp32_loss = None
    for precision in PRECISIONS:
        row: dict[str, Any] = {"model": preset, "precision": precision, "batch": f"{batch} x {length}"}
        rows.append(row)
        if budget.left(deadline) <= 0:
            row["status"] = "not run: out of its time"
            continue
        torch.manual_seed(0)
        with torch.device(device):  # a fixed loss bandwidth: no pass over a dataset to measure it
            vqvae = build("vqvae", {"_component_": preset, "bandwidth": {"l1": 0.1, "l2": 0.02, "spec": 50.0}})
        audio = test_audio(batch, length, vqvae.sample_rate, device)
        optimizer = torch.optim.Adam(vqvae.parameters(), lr=3e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        vqvae.train()
        reset_peak(device)
        times, loss, skipped = [], None, 0
        while len(times) - skipped < steps and skipped <= MAX_SKIPPED:  # fp16: the steps the scaler skips are
            if budget.left(deadline) <= 0:  # not counted, so that every precision applies the same updates
                row["status"] = f"stopped by its time after {len(times) - skipped} steps"
                break
            began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                total, _ = vqvae.losses(audio, vqvae(audio))
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            synchronise(device)
            times.append(time.perf_counter() - began)
            skipped += scaler.is_enabled() and scaler.get_scale() < scale  # an overflow: the scale was lowered
            loss = float(total.detach())
        else:
            row["status"] = "ok" if skipped <= MAX_SKIPPED else f"FAILED: {skipped} steps skipped for overflow"
        row.update(steps=len(times) - skipped, skipped=skipped, peak_mib=peak_mib(device))
        row["step_s"] = statistics.median(times) if times else None
        row["loss"] = loss
        row["codebooks_finite"] = all(bool(b.codebook.isfinite().all()) for b in vqvae.bottlenecks)
        if precision == "32-true":
            fp32_loss = loss
        elif loss is not None and fp32_loss is not None and len(times) - skipped == steps:
            row["loss_vs_fp32"] = abs(loss - fp32_loss) / abs(fp32_loss)
        if scaler.is_enabled():
            row["loss_scale"] = scaler.get_scale()
        del vqvae, optimizer
    return rows


def prior_batch(prior: torch.nn.Module, device: torch.device, items: int = 1) -> dict[str, torch.Tensor]:
    """A batch of windows of random codes and the lyrics and upper codes that the prior's conditioners read."""
    generator = torch.Generator(device).manual_seed(0)
    shape = (items, prior.n_ctx)
    batch = {"codes": torch.randint(0, prior.codebook_size, shape, generator=generator, device=device)}
    if prior.lyric_tokens:
        vocab = prior.lyrics.vocab if prior.lyrics is not None else prior.lyric_vocab
        batch["lyrics"] = torch.randint(0, vocab, (items, prior.lyric_tokens), generator=generator, device=device)
    if prior.upper is not None:
        shape = (items, prior.n_ctx // prior.upper.ratio)
        batch["upper_codes"] = torch.randint(0, prior.upper.codebook_size, shape, generator=generator, device=device)
    return batch


def prior_rows(
    device: torch.device, tiny: bool, peak: float | None, deadline: float, budget: Budget
) -> list[dict[str, Any]]:
    specs = sampling_speed.level_specs(argparse.Namespace(tiny_released=tiny, top="prior_1b_lyrics"))[:2]
    rows: list[dict[str, Any]] = []
    for name, spec in specs:
        for precision in ("bf16-mixed", "16-mixed"):
            row: dict[str, Any] = {"model": name, "precision": precision, "batch": 1}
            rows.append(row)
            if budget.left(deadline) <= 0:
                row["status"] = "not run: out of its time"
                continue
            torch.manual_seed(0)
            with torch.device(device):
                prior = build("prior", {**spec, "checkpoint_blocks": True})
            batch = prior_batch(prior, device)
            row["blocks_checkpointed"] = len(prior.transformer.blocks) if prior.transformer.checkpoint_blocks else 0
            with autocast(device, precision), FlopCounterMode(display=False) as counter:  # a forward that keeps
                prior.losses(batch)  # only the blocks' inputs: the counter's module hooks need gradients on
            model_flops = 3 * counter.get_total_flops()
            optimizer = torch.optim.Adam(prior.parameters(), lr=1e-5)
            scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
            prior.train()
            reset_peak(device)
            times = []
            for _ in range(2):  # the first step allocates Adam's state and warms the kernels up: the second is timed
                began = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    loss, _ = prior.losses(batch)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                synchronise(device)
                times.append(time.perf_counter() - began)
                if budget.left(deadline) <= 0:
                    break
            step = times[-1]
            tokens = batch["codes"].numel()
            row.update(
                status="ok" if len(times) == 2 else "one step only (out of its time): includes the warm-up",
                parameters=sum(p.numel() for p in prior.parameters()),
                n_ctx=prior.n_ctx,
                step_s=step,
                peak_mib=peak_mib(device),
                tokens_per_s=tokens / step,
                model_tflops=model_flops / 1e12,
                loss=float(loss.detach()),
            )
            row["mfu"] = model_flops / step / (peak * 1e12) if peak else None
            del prior, optimizer
    return rows


OWN_MUSIC_LABELS = [
    "model.prior.labels.n_artists=1024",
    "model.prior.labels.n_genres=256",
    "model.prior.labels.max_duration=1200",
]  # as recipes/own_music.yaml


def own_music_models(batch: int, device: torch.device) -> list[tuple[str, str, torch.nn.Module, dict[str, Any]]]:
    """(stage, steps key, model, batch) of the three models `own_music` trains, built from their recipes."""
    vqvae_recipe = recipes.load("vqvae/tiny_demo").resolved()
    spec = {**vqvae_recipe["model"]["vqvae"], "bandwidth": {"l1": 0.1, "l2": 0.02, "spec": 50.0}}
    with torch.device(device):
        vqvae = build("vqvae", spec)
    audio = test_audio(batch, vqvae_recipe["data"]["sample_length"], vqvae.sample_rate, device)
    models = [("vqvae", "vqvae_steps", vqvae, {"audio": audio})]
    generator = torch.Generator(device).manual_seed(0)
    for stage, name, steps in (("top prior", "prior/top_tiny_demo", "prior_steps"),
                               ("upsampler", "prior/upsampler_tiny_demo", "upsampler_steps")):  # fmt: skip
        spec = recipes.load(name, OWN_MUSIC_LABELS).resolved()["model"]["prior"]
        with torch.device(device):
            prior = build("prior", spec)
        window = prior_batch(prior, device, batch)
        labels = spec["labels"]
        window["artist"] = torch.randint(0, labels["n_artists"], (batch,), generator=generator, device=device)
        window["genres"] = torch.randint(0, labels["n_genres"], (batch, 5), generator=generator, device=device)
        crop = prior.n_ctx * prior.hop_length  # a crop at the start of a minute-long song, in samples
        window["timing"] = torch.tensor([[60.0 * labels["sample_rate"], 0.0, crop]] * batch, device=device)
        models.append((stage, steps, prior, window))
    return models


def own_music_rows(device: torch.device, tiny: bool, deadline: float, budget: Budget) -> list[dict[str, Any]]:
    """Training steps of `own_music`'s models at its `gpu` size (batch 16, bf16-mixed) and the hours its steps
    take at that speed (data loading and validation left out)."""
    sizes = recipes.load("own_music", ["vars.audio=."]).resolved(allow_missing=True)["vars"]["sizes"]["gpu"]
    batch, timed = (2, 1) if tiny else (sizes["batch_size"], 3)
    rows: list[dict[str, Any]] = []
    for stage, steps, model, inputs in own_music_models(batch, device):
        row: dict[str, Any] = {"stage": stage, "batch": batch, "precision": sizes["precision"], "steps": sizes[steps]}
        rows.append(row)
        if budget.left(deadline) <= 0:
            row["status"] = "not run: out of its time"
            continue
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.train()
        reset_peak(device)
        times = []
        for _ in range(1 + timed):  # the first step allocates Adam's state and warms the kernels up
            began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, sizes["precision"]):
                audio = inputs.get("audio")  # a VQ-VAE's loss compares its output with its input; a prior's is its own
                loss = model.losses(audio, model(audio))[0] if audio is not None else model.losses(inputs)[0]
            loss.backward()
            optimizer.step()
            synchronise(device)
            times.append(time.perf_counter() - began)
            if budget.left(deadline) <= 0:
                break
        step = statistics.median(times[1:] or times)
        row.update(status="ok" if len(times) == 1 + timed else "stopped by its time", step_s=step,
                   peak_mib=peak_mib(device), hours=sizes[steps] * step / 3600)  # fmt: skip
        del optimizer
    return rows


def fsdp_smoke(device: torch.device, out: Path, deadline: float, budget: Budget) -> dict[str, Any]:
    """A tiny prior trained three steps by Lightning with ``fsdp_blocks`` on one device."""
    import pytorch_lightning as pl
    from torch.distributed.fsdp import FullyShardedDataParallel

    if budget.left(deadline) <= 0:
        return {"status": "not run: out of its time"}
    torch.manual_seed(0)
    prior = build("prior", {"_component_": "tiny_prior"})
    generator = torch.Generator().manual_seed(0)
    batches = [{"codes": torch.randint(0, prior.codebook_size, (2, prior.n_ctx), generator=generator)}] * 3
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, index: int) -> None:
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        accelerator=device.type, devices=1, strategy=build("strategy", {"_component_": "fsdp_blocks"}),
        precision="bf16-mixed" if device.type == "cuda" else "32-true", max_steps=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Losses()],
        default_root_dir=str(out / "fsdp"),
    )  # fmt: skip
    began = time.perf_counter()
    trainer.fit(prior, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    units = [module for module in trainer.strategy.model.modules() if isinstance(module, FullyShardedDataParallel)]
    checkpoint = out / "fsdp" / "last.ckpt"
    trainer.save_checkpoint(checkpoint)  # the whole state dict and optimizer state gathered from the shards
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    whole = saved.keys() == prior.state_dict().keys() and all(
        saved[name].shape == tensor.shape for name, tensor in prior.state_dict().items()
    )
    checkpoint.unlink()
    problems = [] if len(losses) == 3 and all(map(math.isfinite, losses)) else ["a loss is not finite"]
    problems += [] if whole else ["the checkpoint does not hold the whole model"]
    return {
        "status": "FAILED: " + "; ".join(problems) if problems else "ok",
        "steps": len(losses),
        "losses": losses,
        "fsdp_units": len(units),
        "sharding": units[0].sharding_strategy.name if units else None,  # one device: NO_SHARD, whatever was asked
        "seconds": time.perf_counter() - began,
    }


def sampling(device: torch.device, tiny: bool, deadline: float, budget: Budget) -> dict[str, Any]:
    if budget.left(deadline) <= 0:
        return {"status": "not run: out of its time"}
    command = [sys.executable, "benchmarks/sampling_speed.py", "--released", "--device", device.type]
    command += ["--tiny-released"] if tiny else ["--precision", "bf16"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=max(1.0, budget.left(deadline)), cwd=BENCHMARKS.parent
        )
    except subprocess.TimeoutExpired as stopped:
        output = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else stopped.stdout or ""
        return {"status": "stopped by its time", "command": " ".join(command[1:]), "output": output}
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode}): {done.stderr.strip()[-500:]}"
    return {"status": status, "command": " ".join(command[1:]), "output": done.stdout}


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"GPU check: {report['device']}, torch {report['torch']}, budget {report['minutes']} min, "
             f"{report['seconds']:.0f} s in all{' (tiny sizes)' if report['tiny'] else ''}", ""]  # fmt: skip
    lines += [
        _row(
            "VQ-VAE",
            "precision",
            "batch",
            "steps (skipped)",
            "step s",
            "peak MiB",
            "loss",
            "vs fp32",
            "codebooks finite",
            "status",
        ),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in report["vqvae"]:
        vs = f"{100 * r['loss_vs_fp32']:.2f}%" if r.get("loss_vs_fp32") is not None else "-"
        steps = f"{_cell(r.get('steps'))} ({_cell(r.get('skipped'))})"
        lines.append(_row(r["model"], r["precision"], r["batch"], steps, _cell(r.get("step_s")),
                          _cell(r.get("peak_mib"), 5), _cell(r.get("loss"), 5), vs, _cell(r.get("codebooks_finite")),
                          r["status"]))  # fmt: skip
    lines += [
        "",
        "| prior | precision | parameters | n_ctx | step s | peak MiB | tokens/s | model TFLOP | MFU | status |",
    ]
    lines += ["| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report["priors"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"| {r['model']} | {r['precision']} | {_cell(r.get('parameters'))} | {_cell(r.get('n_ctx'))} | "
                     f"{_cell(r.get('step_s'))} | {_cell(r.get('peak_mib'), 5)} | {_cell(r.get('tokens_per_s'), 4)} | "
                     f"{_cell(r.get('model_tflops'))} | {mfu} | {r['status']} |")  # fmt: skip
    lines += ["", _row("own_music, size gpu", "batch", "precision", "step s", "peak MiB", "steps", "hours", "status"),
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for r in report["own_music"]:
        figures = [_cell(r.get("step_s")), _cell(r.get("peak_mib"), 5), str(r["steps"]), _cell(r.get("hours"), 2)]
        lines.append(_row(r["stage"], str(r["batch"]), r["precision"], *figures, r["status"]))
    fsdp = report["fsdp"]
    lines += ["", f"fsdp_blocks on one device: {fsdp['status']}"
              + (f", {fsdp['steps']} steps, {fsdp['fsdp_units']} FSDP units ({fsdp['sharding']}), losses "
                 + ", ".join(f"{x:.4f}" for x in fsdp["losses"]) if "losses" in fsdp else "")]  # fmt: skip
    lines += [
        "",
        f"Sampling (`{report['sampling'].get('command', 'sampling_speed.py')}`): {report['sampling']['status']}",
    ]
    if report["sampling"].get("output"):
        lines += ["", "```", report["sampling"]["output"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models of the same structure (the CPU run)")
    parser.add_argument("--minutes", type=float, default=8.0, help="the whole check's time budget")
    parser.add_argument("--steps", type=int, default=None, help="VQ-VAE steps per precision (20; 3 with --tiny)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16/fp16 peak")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is visible to torch: run it where one is, or with --device cpu --tiny")
    budget = Budget(args.minutes)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = device_peak_tflops(device, args.peak_tflops)
    steps = args.steps or (3 if args.tiny else 20)
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "minutes": args.minutes, "tiny": args.tiny,
                              "peak_tflops": peak}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    report["vqvae"] = vqvae_rows(device, args.tiny, steps, budget.part(SHARES["vqvae"]), budget)
    report["priors"] = prior_rows(device, args.tiny, peak, budget.part(SHARES["priors"]), budget)
    report["own_music"] = own_music_rows(device, args.tiny, budget.part(SHARES["own_music"]), budget)
    report["fsdp"] = fsdp_smoke(device, args.out, budget.part(SHARES["fsdp"]), budget)
    report["sampling"] = sampling(device, args.tiny, budget.part(SHARES["sampling"]), budget)
    report["seconds"] = time.monotonic() - budget.start
    atomic_write_text(args.out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    atomic_write_text(args.out / "gpu_check.md", table)
    print(table)


if __name__ == "__main__":
    main()
