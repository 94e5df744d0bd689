"""The jukebox-pl-fsq plugin: found through its entry point only, and its quantiser's maths."""

from __future__ import annotations

import importlib.metadata as metadata
import math
import textwrap
from pathlib import Path

import jukebox_pl_fsq
import pytest
import torch
from conftest import run_python
from jukebox_pl_fsq import FSQBottleneck

import jukebox_pl
from jukebox_pl.registry import ENTRY_POINT_GROUP


def paper_bound(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The paper's bound (Appendix A.1, eps 1e-3, atanh shift), written out as the reference; `levels`
    broadcasts against `z`. Rounding it and dividing by ``levels // 2`` gives the grid point in [-1, 1]."""
    half_l = (levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    return torch.tanh(z + torch.atanh(offset / half_l)) * half_l - offset


def paper_unbound(grid: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """An input that `paper_bound` takes exactly to `grid` (in [-1, 1]) times ``levels // 2``."""
    half_l = (levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    return torch.atanh((grid * (levels // 2) + offset) / half_l) - torch.atanh(offset / half_l)


def _identity_projections(fsq: FSQBottleneck) -> FSQBottleneck:
    """With emb_width == len(levels), make both projections the identity, exposing the grid itself."""
    with torch.no_grad():
        for layer in (fsq.project_in, fsq.project_out):
            layer.weight.copy_(torch.eye(layer.weight.shape[0]))
            layer.bias.zero_()
    return fsq


def test_the_distribution_declares_the_fsq_entry_point():
    (entry_point,) = metadata.entry_points(group=ENTRY_POINT_GROUP, name="fsq")
    assert entry_point.value == "jukebox_pl_fsq"
    assert entry_point.dist is not None and entry_point.dist.name == "jukebox-pl-fsq"


def test_the_registry_finds_fsq_through_plugin_discovery(tmp_path):
    code = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("ignore")
        from jukebox_pl import registry
        assert "jukebox_pl_fsq" not in sys.modules
        component = registry.find("fsq")
        (plugin,) = [p for p in registry.REGISTRY.plugins if p.entry_point == "fsq"]
        print(component.kind, component.provider, component.path, plugin.distribution, plugin.error)
        """
    )
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "bottleneck",
        "jukebox-pl-fsq",
        "jukebox_pl_fsq:FSQBottleneck",
        "jukebox-pl-fsq",
        "None",
    ]


def test_jukebox_pl_never_imports_the_plugin():
    package = Path(jukebox_pl.__file__).parent
    sources = list(package.rglob("*.py"))
    assert sources
    assert [str(p) for p in sources if "jukebox_pl_fsq" in p.read_text()] == []


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 6, 5], [7, 5, 5, 5, 5], [3], [3, 4]])
def test_codebook_size_is_the_product_of_the_levels(levels):
    fsq = FSQBottleneck(emb_width=8, levels=levels)
    assert fsq.codebook_size == math.prod(levels)
    assert fsq.project_in.out_features == len(levels)


def test_default_levels_are_the_papers_thousand_code_set():
    fsq = FSQBottleneck(emb_width=8)
    assert fsq.levels.tolist() == [8, 5, 5, 5]
    assert fsq.codebook_size == 1000


def test_codes_stay_within_the_codebook():
    fsq = FSQBottleneck(emb_width=16, levels=[8, 6, 5])
    x = torch.randn(3, 16, 200) * 10  # large enough to reach the outermost levels
    codes = fsq(x).codes
    assert codes.shape == (3, 200) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < fsq.codebook_size


def test_decoding_the_codes_gives_the_quantised_output():
    fsq = FSQBottleneck(emb_width=32).eval()
    x = torch.randn(2, 32, 100)
    out = fsq(x)
    codes = fsq.encode(x)
    assert torch.equal(codes, out.codes)
    assert torch.equal(fsq.decode(codes), out.quantised)


def test_every_code_decodes_to_its_own_grid_point_and_encodes_back():
    levels = [8, 5, 3, 4]
    fsq = _identity_projections(FSQBottleneck(emb_width=len(levels), levels=levels)).eval()
    codes = torch.arange(fsq.codebook_size)[None]  # (1, K)
    grid = fsq.decode(codes)  # (1, d, K)
    assert len(torch.unique(grid[0].t(), dim=0)) == fsq.codebook_size
    assert torch.equal(fsq.encode(paper_unbound(grid, torch.tensor(levels)[:, None])), codes)


def test_a_code_decodes_to_the_grid_point_its_input_rounds_to():
    levels = [8, 5, 4, 3]
    fsq = _identity_projections(FSQBottleneck(emb_width=len(levels), levels=levels)).eval()
    x = torch.randn(4, len(levels), 300) * 3
    expected = paper_bound(x, fsq.levels[:, None]).round() / (fsq.levels[:, None] // 2)
    torch.testing.assert_close(fsq.decode(fsq.encode(x)), expected)
    grid = fsq.decode(torch.arange(fsq.codebook_size)[None]).squeeze(0).t()  # (K, d)
    assert len(torch.unique(grid, dim=0)) == fsq.codebook_size
    assert grid.min() >= -1 and grid.max() <= 1


@pytest.mark.parametrize("levels", [[3, 5, 7], [4, 6, 8]], ids=["odd", "even"])
def test_each_channel_takes_exactly_its_number_of_levels(levels):
    fsq = _identity_projections(FSQBottleneck(emb_width=len(levels), levels=levels)).eval()
    sweep = torch.linspace(-12, 12, 20001).expand(1, len(levels), -1)  # (1, d, N)
    grid = fsq.decode(fsq.encode(sweep))[0]  # (d, N)
    for channel, n in enumerate(levels):
        values = torch.unique(grid[channel])
        half_width = n // 2
        assert len(values) == n
        assert values.min() == -1
        torch.testing.assert_close(torch.diff(values), torch.full((n - 1,), 1 / half_width))
    assert (fsq.decode(fsq.encode(torch.zeros(1, len(levels), 1))) == 0).all()  # zero sits on the grid


def test_gradient_reaches_project_in_and_the_input_through_the_rounding():
    fsq = FSQBottleneck(emb_width=16).train()
    x = torch.randn(2, 16, 64, requires_grad=True)
    fsq(x).quantised.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert fsq.project_in.weight.grad is not None and fsq.project_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("levels", [[1, 5], [2, 5], [], [5, 2.5], [True, 5], "85", 5])
def test_bad_levels_are_refused_naming_the_argument(levels):
    with pytest.raises(ValueError, match="levels"):
        FSQBottleneck(emb_width=8, levels=levels)


def test_autocast_leaves_quantisation_in_float32():
    fsq = FSQBottleneck(emb_width=16).eval()
    x = torch.randn(2, 16, 80)
    reference = fsq(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fsq(x)
        decoded = fsq.decode(out.codes)
    assert out.quantised.dtype == torch.float32 and decoded.dtype == torch.float32
    assert torch.equal(out.codes, reference.codes)
    torch.testing.assert_close(out.quantised, reference.quantised)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_reports_this_batchs_codebook_usage_and_no_commitment_loss(training):
    fsq = FSQBottleneck(emb_width=16, levels=[4, 3]).train(training)
    out = fsq(torch.randn(2, 16, 50) * 3)
    counts = torch.bincount(out.codes.flatten(), minlength=fsq.codebook_size).double()
    probs = counts[counts > 0] / counts.sum()
    used = len(torch.unique(out.codes))
    assert out.metrics["used_curr"].item() == used
    assert out.metrics["usage"].item() == pytest.approx(used / 12)
    assert out.metrics["entropy"].item() == pytest.approx(-(probs * probs.log2()).sum().item(), rel=1e-5)
    assert out.commit_loss.shape == () and out.commit_loss.item() == 0.0


def test_usage_metrics_of_a_known_histogram():
    metrics = jukebox_pl_fsq.code_metrics(torch.tensor([[0, 0, 1, 1]]), codebook_size=4)
    assert {name: value.item() for name, value in metrics.items()} == {"usage": 0.5, "entropy": 1.0, "used_curr": 2}
