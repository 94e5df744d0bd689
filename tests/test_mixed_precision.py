"""Mixed precision: fp16 loss scaling, the parts kept in float32, bf16 checkpoints resumed in fp32, and the GPU check.

Each test runs on the CPU and, marked ``gpu``, on a CUDA device where there is one (skipped elsewhere):
`benchmarks/gpu_check.py` runs the same paths at released sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from jukebox_pl.registry import build
from jukebox_pl.vqvae.bottleneck import EMABottleneck
from jukebox_pl.vqvae.losses import Bandwidth, MultiSpectralLoss

REPO = Path(__file__).resolve().parent.parent
CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
)
DEVICES = ["cpu", CUDA]


def _prior(device: str) -> torch.nn.Module:
    torch.manual_seed(int(torch.randint(0, 2**16, ())))
    with torch.device(device):
        return build("prior", {"_component_": "tiny_prior", "n_ctx": 64, "blocks": 8, "depth": 2})


def _batch(prior: torch.nn.Module, device: str) -> dict[str, torch.Tensor]:
    return {"codes": torch.randint(0, prior.codebook_size, (2, prior.n_ctx), device=device)}


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_loss_scaling_skips_an_overflowing_step_and_recovers(device: str) -> None:
    prior = _prior(device).train()
    batch = _batch(prior, device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**8)

    def step(overflow: bool) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.float16):
            loss, _ = prior.losses(batch)
        scaler.scale(loss * (float("inf") if overflow else 1.0)).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    first = step(overflow=False)
    before, scale = [p.detach().clone() for p in prior.parameters()], scaler.get_scale()
    step(overflow=True)
    assert scaler.get_scale() == scale / 2  # the overflow lowered the scale ...
    assert all(torch.equal(a, p) for a, p in zip(before, prior.parameters(), strict=True))  # ... and changed nothing
    losses = [step(overflow=False) for _ in range(5)]
    assert all(torch.isfinite(p).all() for p in prior.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, prior.parameters(), strict=True))
    assert losses[-1] < first  # it learns again: the same batch, six applied steps


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_the_quantiser_its_ema_update_and_the_spectral_loss_stay_in_float32_under_autocast(
    device: str, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**16, ())))
    with torch.device(device):
        bottleneck = EMABottleneck(emb_width=8, codebook_size=32).train()
    x = torch.randn(2, 8, 64, generator=generator).to(device)
    bottleneck(x)  # the codebook's initialisation, in float32
    codebook = bottleneck.codebook.detach().clone()
    with torch.autocast(device, dtype=dtype):
        out = bottleneck(x.to(dtype))  # an EMA update from a half-precision input
    assert out.quantised.dtype == torch.float32 and bottleneck.codebook.dtype == torch.float32
    assert torch.isfinite(bottleneck.codebook).all() and not torch.equal(bottleneck.codebook, codebook)
    expected = torch.cdist(x.permute(0, 2, 1).to(dtype).float(), codebook[None].expand(2, -1, -1)).argmin(-1)
    assert (out.codes == expected).float().mean() > 0.95  # distances in float32 from the rounded input

    loss = MultiSpectralLoss(log_weight=0.1)
    bandwidth = Bandwidth(l1=0.1, l2=0.02, spec=50.0)
    target = torch.randn(2, 1, 4096, generator=generator).to(device)
    output = (target + 0.1 * torch.randn(2, 1, 4096, generator=generator).to(device)).requires_grad_()
    with torch.autocast(device, dtype=dtype):
        mixed = loss(output.to(dtype), target.to(dtype), bandwidth)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, loss(output.to(dtype).float(), target.to(dtype).float(), bandwidth))
    mixed.backward()
    assert torch.isfinite(output.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_written_in_bf16_resumes_in_fp32(device: str, tmp_path: Path) -> None:
    prior = _prior("cpu")
    batches = [_batch(prior, "cpu")] * 4
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    common = {"accelerator": device, "devices": 1, "logger": False, "enable_progress_bar": False,
              "enable_model_summary": False, "enable_checkpointing": False,
              "default_root_dir": str(tmp_path)}  # fmt: skip
    trainer = pl.Trainer(max_steps=2, precision="bf16-mixed", **common)
    trainer.fit(prior, train_dataloaders=loader)
    trainer.save_checkpoint(tmp_path / "bf16.ckpt")
    saved = {name: p.detach().cpu().clone() for name, p in prior.named_parameters()}

    resumed = _prior("cpu")
    trainer = pl.Trainer(max_steps=4, precision="32-true", **common)
    trainer.fit(resumed, train_dataloaders=loader, ckpt_path=tmp_path / "bf16.ckpt")
    assert trainer.global_step == 4  # two more steps after the two in the checkpoint
    for name, parameter in resumed.named_parameters():
        assert parameter.dtype == torch.float32 and torch.isfinite(parameter).all()
        assert saved[name].dtype == torch.float32  # bf16-mixed keeps float32 weights, so the checkpoint holds them
    written = torch.load(tmp_path / "bf16.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(written[name].dtype == torch.float32 for name in saved) and written.keys() >= saved.keys()
    assert any(not torch.equal(saved[n], p.detach().cpu()) for n, p in resumed.named_parameters())


@pytest.mark.slow
def test_the_gpu_check_runs_at_tiny_size_on_the_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    vqvae = {row["precision"]: row for row in report["vqvae"]}
    assert set(vqvae) == {"32-true", "16-mixed", "bf16-mixed"}
    for row in vqvae.values():
        assert row["status"] == "ok" and row["steps"] == 3 and row["codebooks_finite"], row
        assert row["step_s"] > 0 and torch.isfinite(torch.tensor(row["loss"]))
    assert vqvae["16-mixed"]["skipped"] >= 1  # GradScaler's first scale (2**16) overflows, and those steps are skipped
    for precision in ("16-mixed", "bf16-mixed"):
        assert 0 <= vqvae[precision]["loss_vs_fp32"] < 0.2  # the same applied steps from the same seed
    assert len(report["priors"]) == 4
    for row in report["priors"]:
        assert row["status"] == "ok" and row["blocks_checkpointed"] > 0, row
        assert row["tokens_per_s"] > 0 and row["model_tflops"] > 0 and row["mfu"] is None  # no quoted CPU peak
    assert [row["stage"] for row in report["own_music"]] == ["vqvae", "top prior", "upsampler"]
    for row in report["own_music"]:  # the gpu size's steps (recipes/own_music.yaml) at the measured step time
        assert (
            row["status"] == "ok"
            and row["steps"] >= 10000
            and row["hours"] == pytest.approx(row["steps"] * row["step_s"] / 3600)
        )
    assert report["fsdp"]["status"] == "ok" and report["fsdp"]["fsdp_units"] > 1  # the whole checkpoint gathered
    assert report["sampling"]["status"] == "ok" and "tokens/s" in report["sampling"]["output"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| tiny_vqvae | 16-mixed |" in table and "fsdp_blocks on one device: ok" in table
