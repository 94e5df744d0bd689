"""The VQ-VAE and prior networks work on their own: their docstring examples run without Lightning."""

import textwrap

import pytest
from conftest import REPO_DIR, run_python


@pytest.mark.parametrize("module", ["jukebox_pl.vqvae.network", "jukebox_pl.priors.network"])
def test_network_examples_run_without_lightning(tmp_path, module):
    code = textwrap.dedent(
        f"""
        import doctest, sys
        import {module} as network
        result = doctest.testmod(network, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted >= 5 and result.failed == 0, result
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("pytorch_lightning", "lightning"))
        assert not loaded, loaded
        print("ok")
        """
    )
    result = run_python(code, cwd=tmp_path, extra_path=REPO_DIR, OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"


def test_the_lightning_modules_keep_the_networks_parameter_names():
    from jukebox_pl.priors.network import PriorNetwork
    from jukebox_pl.priors.prior import tiny_prior
    from jukebox_pl.vqvae.model import tiny_vqvae
    from jukebox_pl.vqvae.network import VQVAENetwork

    vqvae = tiny_vqvae()
    network = VQVAENetwork(sample_rate=22050, downs=[2, 2], strides=[2, 2], emb_width=32, width=32, depth=3)
    assert set(network.state_dict()) <= set(vqvae.state_dict())
    assert set(vqvae.state_dict()) - set(network.state_dict()) == {"bandwidth"}
    prior = tiny_prior()
    network = PriorNetwork(codebook_size=256, n_ctx=256, width=128, depth=4, heads=2, attn_order=2, blocks=16)
    assert set(network.state_dict()) == set(prior.state_dict())


def test_a_vqvae_asks_for_its_bandwidth_to_be_measured_only_until_it_is_handed_one():
    import torch

    from jukebox_pl.vqvae.losses import Bandwidth
    from jukebox_pl.vqvae.model import MeasureBandwidth, tiny_vqvae

    vqvae = tiny_vqvae()
    assert [type(callback) for callback in vqvae.configure_callbacks()] == [MeasureBandwidth]
    audio = torch.randn(2, 1, 2048)
    with pytest.raises(RuntimeError, match="bandwidth is not measured"):
        vqvae.losses(audio, vqvae(audio))
    vqvae.set_bandwidth(Bandwidth(l1=0.5, l2=0.25, spec=10.0))
    assert vqvae.configure_callbacks() == []
    total, logs = vqvae.losses(audio, vqvae(audio))
    assert torch.isfinite(total) and "train/recons_l1" in logs
