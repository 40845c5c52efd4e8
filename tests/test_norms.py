"""SwitchableNorm: reduces to IN / LN / BN with one-hot mixing (train and eval, 2D and 3D), gradients,
state dict, batch size 1, bf16 autocast, and batch statistics synced across DDP ranks."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from strokelab.nn.blocks import make_norm
from strokelab.nn.norms import SWITCHABLE_STATS, SwitchableNorm

pytestmark = pytest.mark.usefixtures("single_thread")

INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SHAPES = {2: (4, 3, 6, 5), 3: (3, 3, 4, 5, 3)}
TOL = dict(atol=1e-5, rtol=1e-5)


def one_hot(sn: SwitchableNorm, kind: str) -> SwitchableNorm:
    """Force the softmax mixing to select one statistic (exactly: exp(-2e4) underflows to 0)."""
    logits = torch.full((3,), -1e4)
    logits[SWITCHABLE_STATS.index(kind)] = 1e4
    with torch.no_grad():
        sn.mean_weight.copy_(logits)
        sn.var_weight.copy_(logits)
    return sn


def random_affine(sn: SwitchableNorm, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sn.weight.copy_(torch.rand(sn.channels, generator=gen) + 0.5)
        sn.bias.copy_(torch.randn(sn.channels, generator=gen))
    return sn.weight.detach().clone(), sn.bias.detach().clone()


def affine(y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (y.dim() - 2)
    return y * w.reshape(shape) + b.reshape(shape)


def batches(dims: int, n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # Channels with different offsets and scales, so that IN, LN and BN statistics all differ.
    shape = SHAPES[dims]
    offset = torch.tensor([2.0, -1.0, 0.5]).reshape((1, 3) + (1,) * dims)
    scale = torch.tensor([1.0, 3.0, 0.5]).reshape((1, 3) + (1,) * dims)
    sample_offset = (shape[0], 1) + (1,) * dims
    return [torch.randn(shape, generator=gen) * scale + offset + torch.randn(sample_offset, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_hot_instance_equals_instance_norm(dims, mode):
    sn = one_hot(SwitchableNorm(3, spatial_dims=dims), "instance")
    w, b = random_affine(sn)
    ref = INSTANCE_NORM[dims](3, affine=False)
    sn.train(mode == "train")
    ref.train(mode == "train")
    for x in batches(dims, 2):
        torch.testing.assert_close(sn(x), affine(ref(x), w, b), **TOL)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_hot_layer_equals_layer_norm_over_channels_and_space(dims, mode):
    sn = one_hot(SwitchableNorm(3, spatial_dims=dims), "layer")
    w, b = random_affine(sn)
    sn.train(mode == "train")
    for x in batches(dims, 2):
        expected = affine(F.layer_norm(x, x.shape[1:], eps=sn.eps), w, b)
        torch.testing.assert_close(sn(x), expected, **TOL)


@pytest.mark.parametrize("dims", [2, 3])
def test_one_hot_batch_equals_batch_norm_in_train_and_eval(dims):
    sn = one_hot(SwitchableNorm(3, spatial_dims=dims), "batch")
    w, b = random_affine(sn)
    ref = BATCH_NORM[dims](3)
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    sn.train()
    ref.train()
    train, test = batches(dims, 4), batches(dims, 2, seed=1)
    for x in train:
        torch.testing.assert_close(sn(x), ref(x), **TOL)
    torch.testing.assert_close(sn.running_mean, ref.running_mean, **TOL)
    torch.testing.assert_close(sn.running_var, ref.running_var, **TOL)  # unbiased, as BatchNorm keeps it
    assert int(sn.num_batches_tracked) == int(ref.num_batches_tracked) == 4
    sn.eval()
    ref.eval()
    for x in test:
        torch.testing.assert_close(sn(x), ref(x), **TOL)
    assert int(sn.num_batches_tracked) == 4  # eval mode leaves the running statistics alone


def test_eval_is_per_sample_and_does_not_depend_on_the_rest_of_the_batch():
    sn = SwitchableNorm(3, spatial_dims=2)  # equal mixing: IN + LN + BN(running)
    for x in batches(2, 3):
        sn(x)
    sn.eval()
    x = batches(2, 1, seed=5)[0]
    whole = sn(x)
    for i in range(x.shape[0]):
        torch.testing.assert_close(sn(x[i : i + 1]), whole[i : i + 1], **TOL)


def test_without_running_stats_eval_uses_batch_statistics_like_batch_norm():
    sn = one_hot(SwitchableNorm(3, spatial_dims=2, track_running_stats=False), "batch")
    ref = nn.BatchNorm2d(3, track_running_stats=False)
    assert sn.running_mean is None and "running_mean" not in sn.state_dict()
    sn.eval()
    ref.eval()
    x = batches(2, 1)[0]
    torch.testing.assert_close(sn(x), ref(x), **TOL)


def test_cumulative_moving_average_with_momentum_none():
    sn = one_hot(SwitchableNorm(3, spatial_dims=2, momentum=None), "batch")
    ref = nn.BatchNorm2d(3, momentum=None)
    for x in batches(2, 3):
        sn(x)
        ref(x)
    torch.testing.assert_close(sn.running_mean, ref.running_mean, **TOL)
    torch.testing.assert_close(sn.running_var, ref.running_var, **TOL)


def test_mixing_is_a_convex_combination_of_the_three_statistics():
    """With a pure mean selection and mixed variances, the output is (x - mu) / sqrt(sum w_k var_k + eps)."""
    torch.manual_seed(0)
    sn = SwitchableNorm(3, spatial_dims=2, affine=False)
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([1e4, -1e4, -1e4]))
        sn.var_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
    x = batches(2, 1)[0]
    dims = (2, 3)
    mu_in, var_in = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, correction=0)
    var_ln = x.var((1, 2, 3), keepdim=True, correction=0)
    var_bn = x.var((0, 2, 3), keepdim=True, correction=0)
    share = torch.softmax(torch.tensor([0.3, -0.2, 0.5]), 0)
    var = share[0] * var_in + share[1] * var_ln + share[2] * var_bn
    torch.testing.assert_close(sn(x), (x - mu_in) / torch.sqrt(var + sn.eps), **TOL)
    mean_share, var_share = sn.mixing_weights()
    torch.testing.assert_close(var_share, share)
    assert mean_share[0] == 1


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_float64(dims, mode):
    torch.manual_seed(0)
    sn = SwitchableNorm(2, spatial_dims=dims).double()
    with torch.no_grad():
        sn.mean_weight.copy_(torch.randn(3))
        sn.var_weight.copy_(torch.randn(3))
        sn.weight.uniform_(0.5, 1.5)
        sn.bias.normal_()
        sn.running_mean.normal_()
        sn.running_var.uniform_(0.5, 2.0)
    sn.train(mode == "train")
    shape = (2, 2, 3, 2) if dims == 2 else (2, 2, 2, 3, 2)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = (sn.weight, sn.bias, sn.mean_weight, sn.var_weight)
    assert torch.autograd.gradcheck(lambda inp, *_: sn(inp), (x,) + params)


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    sn = SwitchableNorm(3, spatial_dims=3)
    opt = torch.optim.SGD(sn.parameters(), lr=0.5)
    for x in batches(3, 3):
        opt.zero_grad()
        (sn(x) * torch.linspace(-1, 1, x.numel()).reshape(x.shape)).sum().backward()
        opt.step()
    assert not torch.equal(sn.mean_weight.detach(), torch.ones(3))  # training moved the mixing logits
    path = tmp_path / "sn.pt"
    torch.save(sn.state_dict(), path)
    fresh = SwitchableNorm(3, spatial_dims=3)
    fresh.load_state_dict(torch.load(path))
    keys = {"weight", "bias", "mean_weight", "var_weight", "running_mean", "running_var", "num_batches_tracked"}
    assert set(sn.state_dict()) == keys
    x = batches(3, 1, seed=3)[0]
    for mode in (False, True):  # eval first: train mode would update the running statistics
        sn.train(mode)
        fresh.train(mode)
        assert torch.equal(sn(x), fresh(x))


def test_batch_size_one_trains_and_equals_instance_norm_for_the_batch_part():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 5) * 2 + 1
    sn = one_hot(SwitchableNorm(3, spatial_dims=2), "batch").train()
    torch.testing.assert_close(sn(x), F.instance_norm(x), **TOL)  # one sample: BN stats = its IN stats
    mixed = SwitchableNorm(3, spatial_dims=2).train()
    y = mixed(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in mixed.parameters())


@pytest.mark.parametrize("batch", [1, 2])
def test_spatial_extent_one_gives_no_nan(batch):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 1, 1, 1, requires_grad=True)
    sn = SwitchableNorm(4, spatial_dims=3).train()
    y = sn(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in sn.parameters())
    assert torch.isfinite(sn.running_var).all()
    sn.eval()
    assert torch.isfinite(sn(x)).all()


def test_bf16_autocast_statistics_in_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 8, 8) * 3 + 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        assert h.dtype == torch.bfloat16  # the norm really gets a bf16 input
        sn_bf = SwitchableNorm(3, spatial_dims=2).train()
        y_bf = sn_bf(h)
    sn_fp = SwitchableNorm(3, spatial_dims=2).train()
    y_fp = sn_fp(h.float())  # same (bf16-valued) input, computed in float32 outside autocast
    assert y_bf.dtype == torch.bfloat16 and torch.isfinite(y_bf).all()
    torch.testing.assert_close(y_bf.float(), y_fp, atol=2e-2, rtol=1e-2)
    # The statistics themselves are float32 computations: identical running stats, not bf16-rounded ones.
    assert sn_bf.running_mean.dtype == torch.float32
    torch.testing.assert_close(sn_bf.running_mean, sn_fp.running_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sn_bf.running_var, sn_fp.running_var, atol=1e-6, rtol=1e-6)


def test_make_norm_switchable_and_input_checks():
    for dims in (2, 3):
        layer = make_norm("switchable", 8, spatial_dims=dims)
        assert isinstance(layer, SwitchableNorm) and layer.spatial_dims == dims and layer.channels == 8
    with pytest.raises(ValueError, match="2 spatial dims"):
        SwitchableNorm(3, spatial_dims=2)(torch.randn(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="3 channels"):
        SwitchableNorm(3)(torch.randn(1, 4, 4, 4))
    assert torch.isfinite(SwitchableNorm(3)(torch.randn(2, 3, 5))).all()  # spatial_dims=None: any


# ---------------------------------------------------------------- DDP: batch statistics across ranks


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 6, generator=gen) * torch.tensor([1.0, 2.0, 0.5]).reshape(1, 3, 1, 1) + 1.0
    grad_weights = torch.randn(5, 3, 4, 6, generator=gen)
    return x, grad_weights, [slice(0, 3), slice(3, 5)]  # ranks hold 3 and 2 samples


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, gw, parts = _ddp_data()
        local = x[parts[rank]].clone().requires_grad_(True)
        sn = SwitchableNorm(3, spatial_dims=2)  # sync=None: on, because the process group is initialised
        with torch.no_grad():
            sn.mean_weight.copy_(torch.tensor([0.2, -0.3, 0.4]))
            sn.var_weight.copy_(torch.tensor([-0.1, 0.3, 0.2]))
        y = sn.train()(local)
        (y * gw[parts[rank]]).sum().backward()
        torch.save(
            {"y": y.detach(), "grad": local.grad, "running_mean": sn.running_mean, "running_var": sn.running_var},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_sync_batch_statistics_equal_those_of_the_whole_batch(tmp_path):
    mp = pytest.importorskip("torch.multiprocessing")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    x, gw, parts = _ddp_data()
    x = x.clone().requires_grad_(True)
    ref = SwitchableNorm(3, spatial_dims=2, sync=False)
    with torch.no_grad():
        ref.mean_weight.copy_(torch.tensor([0.2, -0.3, 0.4]))
        ref.var_weight.copy_(torch.tensor([-0.1, 0.3, 0.2]))
    y = ref.train()(x)
    (y * gw).sum().backward()  # the sum over ranks of their losses

    for r, part in enumerate(parts):
        torch.testing.assert_close(ranks[r]["y"], y.detach()[part], **TOL)
        torch.testing.assert_close(ranks[r]["grad"], x.grad[part], **TOL)  # gradients flow across ranks
        torch.testing.assert_close(ranks[r]["running_mean"], ref.running_mean, **TOL)
        torch.testing.assert_close(ranks[r]["running_var"], ref.running_var, **TOL)
    # Without syncing, rank 1's 2-sample statistics would differ from the whole batch's.
    alone = SwitchableNorm(3, spatial_dims=2, sync=False)
    with torch.no_grad():
        alone.mean_weight.copy_(ref.mean_weight)
        alone.var_weight.copy_(ref.var_weight)
    assert not torch.allclose(alone.train()(x.detach()[parts[1]]), y.detach()[parts[1]], atol=1e-3)
