"""Prior training throughput and peak memory against context length.

For a mid-size prior (width 512, depth 8, 4 heads by default) and n_ctx 1024..8192: training
tokens per second (forward, backward and Adam step at batch 1) and peak memory, with
Jukebox's factorized attention (attn_order 2: rows, columns, previous rows; blocks of 64)
and, for comparison, dense attention. Each configuration runs in a fresh process so that
the CPU peak (max RSS) is its own. On a GPU, `--device cuda` adds bf16 autocast, the CUDA
allocator's peak and model FLOPs utilisation against `--peak-tflops`.

    .venv/bin/python benchmarks/prior_speed.py
    .venv/bin/python benchmarks/prior_speed.py --device cuda --precision bf16 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def measure(config: dict) -> dict:
    """One configuration, in this process: median step time, tokens/s, peak memory."""
    from jukebox_pl import build

    device = torch.device(config["device"])
    torch.manual_seed(0)
    n_ctx = config["n_ctx"]
    prior = build("prior", {"_component_": "jukebox", "level": 0, "codebook_size": 2048, "n_ctx": n_ctx,
                            "width": config["width"], "depth": config["depth"], "heads": config["heads"],
                            "attn_order": config["attn_order"], "blocks": n_ctx // 64}).to(device)  # fmt: skip
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-4)
    batch = {"codes": torch.randint(0, 2048, (config["batch"], n_ctx), device=device)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["precision"] == "bf16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = prior.losses(batch)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up
    times = []
    for _ in range(config["repeats"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    parameters = sum(p.numel() for p in prior.parameters())
    tokens = config["batch"] * n_ctx / seconds
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"seconds": seconds, "tokens_per_s": tokens, "memory_mib": memory, "parameters": parameters}
    if config["peak_tflops"]:
        # 6 N FLOPs per token for a forward and backward pass (Kaplan et al., 2020), attention excluded.
        result["mfu"] = 6 * parameters * tokens / (config["peak_tflops"] * 1e12)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, for MFU")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one JSON config, print the result
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    print(f"prior width {args.width}, depth {args.depth}, {args.heads} heads, batch {args.batch}, "
          f"{args.device} {args.precision}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'attention':<12}{'n_ctx':>7}{'step s':>9}{'tokens/s':>10}{'peak MiB':>10}{'MFU':>7}")
    for attn_order, name in ((2, "factorized"), (0, "dense")):
        for n_ctx in args.n_ctx:
            config = dict(
                n_ctx=n_ctx, width=args.width, depth=args.depth, heads=args.heads, batch=args.batch,
                repeats=args.repeats, device=args.device, precision=args.precision, attn_order=attn_order,
                peak_tflops=args.peak_tflops,
            )  # fmt: skip
            run = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True
            )
            if run.returncode:
                print(f"{name:<12}{n_ctx:>7}  failed: {run.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
            print(f"{name:<12}{n_ctx:>7}{r['seconds']:>9.3f}{r['tokens_per_s']:>10.0f}{r['memory_mib']:>10.0f}{mfu:>7}")


if __name__ == "__main__":
    main()
