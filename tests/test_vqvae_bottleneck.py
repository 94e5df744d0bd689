"""The EMA codebook: initialisation, EMA updates, dead-code restarts, straight-through gradients."""

from __future__ import annotations

import random

import pytest
import torch

from jukebox_pl.vqvae.bottleneck import (
    TIE_TOLERANCE,
    EMABottleneck,
    entropy_bits,
    nearest_code_indices,
    nearest_codes,
)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _as_input(rows: torch.Tensor, batch: int = 2) -> torch.Tensor:
    """(N, D) rows -> (batch, D, N / batch), the inverse of the bottleneck's flattening."""
    return rows.reshape(batch, -1, rows.shape[1]).permute(0, 2, 1)


def test_codebook_starts_as_rows_of_the_first_training_batch():
    torch.manual_seed(1)
    bottleneck = EMABottleneck(emb_width=4, codebook_size=8).train()
    rows = torch.randn(40, 4, generator=_generator(2))
    bottleneck.initialise(rows)
    assert bool(bottleneck.initialised)
    matches = (bottleneck.codebook[:, None, :] == rows[None]).all(-1)  # (K, N)
    assert matches.any(1).all(), "every code is one of the batch's rows"
    assert len({tuple(c.tolist()) for c in bottleneck.codebook}) == 8
    assert torch.equal(bottleneck.code_count, torch.ones(8))


def test_a_batch_smaller_than_the_codebook_is_tiled_with_noise():
    torch.manual_seed(3)
    bottleneck = EMABottleneck(emb_width=3, codebook_size=10)
    rows = torch.randn(4, 3, generator=_generator(4))
    bottleneck.initialise(rows)
    nearest = torch.cdist(bottleneck.codebook, rows).min(dim=1).values
    assert nearest.max() < 0.05 and len(torch.unique(bottleneck.codebook, dim=0)) == 10


def test_ema_update_moves_each_code_to_the_running_mean_of_its_rows():
    mu = 0.9
    bottleneck = EMABottleneck(emb_width=2, codebook_size=3, mu=mu, threshold=0.5).train()
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    bottleneck.codebook.copy_(codebook)
    bottleneck.code_sum.copy_(codebook)
    bottleneck.code_count.fill_(1.0)
    bottleneck.initialised.fill_(True)
    rows = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [9.0, 1.0], [11.0, 3.0]])  # two rows each for codes 0 and 1
    out = bottleneck(_as_input(rows))
    assert out.codes.flatten().tolist() == [0, 0, 1, 1]
    expected_sum = mu * codebook + (1 - mu) * torch.tensor([[0.0, 2.0], [20.0, 4.0], [0.0, 0.0]])
    expected_count = mu * torch.ones(3) + (1 - mu) * torch.tensor([2.0, 2.0, 0.0])
    torch.testing.assert_close(bottleneck.code_sum, expected_sum)
    torch.testing.assert_close(bottleneck.code_count, expected_count)
    torch.testing.assert_close(bottleneck.codebook, expected_sum / expected_count[:, None])
    assert out.metrics["usage"] == 3 and out.metrics["dead"] == 0
    torch.testing.assert_close(out.metrics["entropy"], torch.tensor(1.0))  # two codes, equally used


def test_restart_revives_dead_codes_from_current_encoder_outputs():
    bottleneck = EMABottleneck(emb_width=2, codebook_size=3, mu=0.5, threshold=1.0).train()
    codebook = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-100.0, -100.0]])  # code 2 is far from all data
    bottleneck.codebook.copy_(codebook)
    bottleneck.code_sum.copy_(codebook)
    bottleneck.code_count.fill_(1.0)
    bottleneck.initialised.fill_(True)
    rows = torch.randn(32, 2, generator=_generator(5)) * 0.1 + torch.tensor([5.0, 5.0])
    rows[:16] -= 5.0
    out = bottleneck(_as_input(rows))
    assert 2 not in out.codes
    # code 2's count decayed to 0.5 < 1: it now sits on one of this batch's rows
    assert bottleneck.code_count[2] == pytest.approx(0.5)
    assert (bottleneck.codebook[2] == rows).all(1).any()
    assert out.metrics["dead"] == 1 and out.metrics["usage"] == 2


def test_evaluation_leaves_the_codebook_alone():
    torch.manual_seed(6)
    bottleneck = EMABottleneck(emb_width=4, codebook_size=16).train()
    bottleneck(torch.randn(2, 4, 32, generator=_generator(7)))
    state = {k: v.clone() for k, v in bottleneck.state_dict().items()}
    bottleneck.eval()
    out = bottleneck(torch.randn(2, 4, 32, generator=_generator(8)))
    assert all(torch.equal(state[k], v) for k, v in bottleneck.state_dict().items())
    assert set(out.metrics) >= {"fit", "entropy", "used_curr"}


def test_straight_through_gradient_reaches_the_encoder_unchanged():
    torch.manual_seed(9)
    bottleneck = EMABottleneck(emb_width=4, codebook_size=8).train()
    x = torch.randn(2, 4, 16, generator=_generator(10), requires_grad=True)
    bottleneck(x)
    codebook = bottleneck.codebook.clone()  # training moves it after quantising, so keep this step's
    out = bottleneck(x)
    weights = torch.randn_like(out.quantised)
    (out.quantised * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights)  # d quantised / d x is the identity
    # ...while the forward value is the codebook vector
    torch.testing.assert_close(out.quantised.detach(), codebook[out.codes].permute(0, 2, 1))


def test_commit_loss_is_the_mean_squared_distance_to_the_codes_and_trains_only_the_encoder():
    torch.manual_seed(11)
    bottleneck = EMABottleneck(emb_width=4, codebook_size=8).eval()
    bottleneck.initialise(torch.randn(64, 4, generator=_generator(12)))
    x = torch.randn(2, 4, 16, generator=_generator(13), requires_grad=True)
    out = bottleneck(x)
    codes_as_vectors = bottleneck.decode(out.codes)
    expected = ((x.detach() - codes_as_vectors) ** 2).mean()
    torch.testing.assert_close(out.commit_loss, expected)
    out.commit_loss.backward()
    torch.testing.assert_close(x.grad, 2 * (x.detach() - codes_as_vectors) / x.numel())


def test_encode_and_decode_agree_with_the_forward_pass():
    torch.manual_seed(14)
    bottleneck = EMABottleneck(emb_width=4, codebook_size=8).train()
    x = torch.randn(3, 4, 20, generator=_generator(15))
    bottleneck(x)
    bottleneck.eval()
    out = bottleneck(x)
    assert torch.equal(bottleneck.encode(x), out.codes)
    brute = torch.cdist(x.permute(0, 2, 1), bottleneck.codebook[None].expand(3, -1, -1)).argmin(-1)
    assert torch.equal(out.codes, brute)


def test_mixed_precision_keeps_the_codebook_maths_in_float32():
    torch.manual_seed(16)
    bottleneck = EMABottleneck(emb_width=8, codebook_size=32).train()
    x = torch.randn(2, 8, 64, generator=_generator(17))
    bottleneck(x)
    bottleneck.eval()
    reference = bottleneck(x).codes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bottleneck(x.bfloat16())
    assert out.quantised.dtype == torch.float32 and bottleneck.codebook.dtype == torch.float32
    agreement = (out.codes == reference).float().mean()
    assert agreement > 0.95  # only rounding of the bf16 input may move a row across a boundary


def test_nearest_codes_and_entropy_helpers():
    codebook = torch.tensor([[0.0], [1.0], [3.0]])
    codes, squared = nearest_codes(torch.tensor([[0.2], [2.4], [0.9]]), codebook)
    assert codes.tolist() == [0, 2, 1]
    torch.testing.assert_close(squared, torch.tensor([0.04, 0.36, 0.01]))
    assert entropy_bits(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(2.0)
    assert entropy_bits(torch.tensor([5.0, 0.0])) == pytest.approx(0.0)


@pytest.mark.parametrize("search", ["distances", "indices"])
def test_each_row_gets_its_exact_nearest_code_whatever_rows_and_threads_surround_it(search: str):
    find = (lambda rows, codebook: nearest_codes(rows, codebook)[0]) if search == "distances" else nearest_code_indices
    seed = random.randrange(2**31)
    generator = _generator(seed)
    # Codes far from the origin and close together: in float32, ||x||^2 - 2 x.c + ||c||^2 cancels down to its
    # rounding there, and which code won changed with the batch and the thread count.
    codebook = 300.0 + 0.05 * torch.randn(64, 16, generator=generator)
    codebook[40] = codebook[5]  # the same code twice: a true tie, which goes to the lower index
    rows = codebook[torch.randint(0, 64, (500,), generator=generator)]
    rows = rows + 0.02 * torch.randn(500, 16, generator=generator)
    exact = ((rows.double()[:, None] - codebook.double()[None]) ** 2).sum(-1)  # (N, K), one distance at a time
    scale = rows.double().pow(2).sum(1, keepdim=True) + codebook.double().pow(2).sum(1).max()
    expected = (exact <= exact.min(1, keepdim=True).values + TIE_TOLERANCE * scale).to(torch.uint8).argmax(1)
    assert (expected != 40).all() and (expected == 5).any()
    threads = torch.get_num_threads()
    try:
        for thread_count in (1, 2):
            torch.set_num_threads(thread_count)
            for batch in (1, 7, 500):
                order = torch.randperm(500, generator=generator)
                codes = torch.empty(500, dtype=torch.long)
                for chunk in order.split(batch):
                    codes[chunk] = find(rows[chunk], codebook)
                assert torch.equal(codes, expected), (seed, thread_count, batch)
    finally:
        torch.set_num_threads(threads)
    squared = nearest_codes(rows, codebook)[1]
    torch.testing.assert_close(squared.double(), exact.gather(1, expected[:, None])[:, 0], rtol=1e-6, atol=1e-6)


def test_the_screened_search_finds_the_codes_of_the_float64_one():
    # Encoding's search screens in float32 and settles only the close calls in float64; its codes are those of
    # `nearest_codes`, at every scale, with planted ties (a code twice, rows exactly on a code) and near ties.
    generator = _generator(random.randrange(2**31))
    for scale in (1e-3, 1.0, 1e3):
        codebook = scale * torch.randn(256, 16, generator=generator)
        codebook[200] = codebook[3]
        rows = codebook[torch.randint(0, 256, (3000,), generator=generator)]
        rows = rows + 0.5 * scale * torch.randn(3000, 16, generator=generator)
        rows[:20] = codebook[3]
        rows[20:40] = (codebook[7] + codebook[8]) / 2
        expected = nearest_codes(rows, codebook)[0]
        assert torch.equal(nearest_code_indices(rows, codebook), expected)
        assert (expected[:20] == 3).all() and len(set(expected.tolist())) > 100
    assert nearest_code_indices(torch.zeros(0, 16), codebook).shape == (0,)
    precision = torch.get_float32_matmul_precision()
    try:  # float32 products that may run in lower precision: every row through the float64 search
        torch.set_float32_matmul_precision("medium")
        assert torch.equal(nearest_code_indices(rows, codebook), expected)
    finally:
        torch.set_float32_matmul_precision(precision)


def test_bad_bottleneck_arguments_are_refused():
    with pytest.raises(ValueError, match="codebook_size"):
        EMABottleneck(emb_width=4, codebook_size=1)
    with pytest.raises(ValueError, match="mu"):
        EMABottleneck(emb_width=4, mu=1.0)


def _constructed(mu: float = 0.9) -> EMABottleneck:
    bottleneck = EMABottleneck(emb_width=2, codebook_size=3, mu=mu, threshold=0.5).train()
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    bottleneck.codebook.copy_(codebook)
    bottleneck.code_sum.copy_(codebook)
    bottleneck.code_count.fill_(1.0)
    bottleneck.initialised.fill_(True)
    return bottleneck


def _rank(rank: int, world_size: int, init_file: str, rows: list[torch.Tensor], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        bottleneck = _constructed()
        bottleneck(_as_input(rows[rank]))
        torch.save(bottleneck.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ema_statistics_are_summed_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    generator = _generator(18)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    rows = [centres[torch.randint(0, 3, (8,), generator=generator)] + 0.3 * torch.randn(8, 2, generator=generator)
            for _ in range(2)]  # fmt: skip
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), rows, str(tmp_path / "state")), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"state.{rank}", weights_only=True) for rank in range(2)]
    single = _constructed()
    single(_as_input(torch.cat(rows)))  # one process seeing both ranks' rows
    for name in ("code_sum", "code_count", "codebook"):
        torch.testing.assert_close(states[0][name], states[1][name])
        torch.testing.assert_close(states[0][name], single.state_dict()[name])
