"""UNet (2D and 3D; UNet3D is its 3D alias) and building blocks: shapes, deep supervision, errors, norms,
initialisation, capacity, ability to learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from strokelab.losses import DeepSupervisionLoss, DiceCELoss
from strokelab.nn.blocks import NORM_KINDS, ConvBlock, ResidualBlock, as_stride, make_block, make_norm
from strokelab.nn.norms import SwitchableNorm
from strokelab.nn.unet import UNet, UNet3D

ANISO_STRIDES = [[2, 2, 1], [2, 2, 2], [2, 2, 2]]


pytestmark = pytest.mark.usefixtures("single_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("residual", [False, True])
def test_output_shape_equals_input_shape_with_anisotropic_strides(residual):
    model = UNet3D(4, 1, channels=[4, 8, 16, 16], strides=ANISO_STRIDES, residual=residual).eval()
    assert model.required_divisor == (8, 8, 4)
    x = torch.randn(2, 4, 16, 24, 4)
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 1, 16, 24, 4)


def test_default_strides_are_two_everywhere():
    model = UNet3D(1, channels=[4, 8, 16])
    assert model.required_divisor == (4, 4, 4)
    assert model.strides == ((2, 2, 2), (2, 2, 2))


def test_deep_supervision_list_in_train_mode_single_tensor_in_eval_mode():
    model = UNet3D(2, 3, channels=[4, 8, 8, 8], strides=ANISO_STRIDES, deep_supervision=True)
    x = torch.randn(1, 2, 16, 16, 8)
    model.train()
    outs = model(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 16, 16, 8), (1, 3, 8, 8, 8), (1, 3, 4, 4, 4)]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 16, 16, 8)


def test_deep_supervision_weights_load_into_model_without_it():
    torch.manual_seed(0)
    with_ds = UNet3D(1, channels=[4, 8, 8], deep_supervision=True).eval()
    without = UNet3D(1, channels=[4, 8, 8], deep_supervision=False).eval()
    result = without.load_state_dict(with_ds.state_dict(), strict=False)
    assert not result.missing_keys and all(k.startswith("ds_heads.") for k in result.unexpected_keys)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(without(x), with_ds(x))


def test_without_deep_supervision_train_mode_returns_a_tensor():
    model = UNet3D(1, channels=[4, 8]).train()
    assert isinstance(model(torch.randn(1, 1, 4, 4, 4)), torch.Tensor)


def test_non_divisible_input_raises_clear_error():
    model = UNet3D(1, channels=[4, 8, 8, 8], strides=ANISO_STRIDES)
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 1, 16, 20, 6))
    msg = str(err.value)
    assert "(16, 20, 6)" in msg and "(8, 8, 4)" in msg


def test_wrong_channel_count_and_bad_config_raise():
    model = UNet3D(4, channels=[4, 8])
    with pytest.raises(ValueError, match="4 input channels"):
        model(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="one stride per down-sampling step"):
        UNet3D(1, channels=[4, 8, 16], strides=[[2, 2, 1]])
    with pytest.raises(ValueError, match="unknown norm"):
        UNet3D(1, channels=[4, 8], norm="layer")


@pytest.mark.parametrize("norm", NORM_KINDS)
@pytest.mark.parametrize("residual", [False, True])
def test_every_norm_works_forward_and_backward(norm, residual):
    model = UNet3D(2, 1, channels=[6, 12], norm=norm, residual=residual, dropout=0.1, deep_supervision=True)
    model.train()
    outs = model(torch.randn(2, 2, 8, 8, 8))
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, 8, 8, 8))
    assert out.shape == (1, 1, 8, 8, 8) and torch.isfinite(out).all()


def test_make_norm_kinds():
    assert isinstance(make_norm("instance", 16), nn.InstanceNorm3d) and make_norm("instance", 16).affine
    assert isinstance(make_norm("batch", 16), nn.BatchNorm3d)
    group = make_norm("group", 12)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 6  # largest divisor <= 8
    assert make_norm("group", 32).num_groups == 8
    assert make_norm("group", 7).num_groups == 7
    assert isinstance(make_norm("none", 16), nn.Identity)
    assert isinstance(make_norm("switchable", 16), SwitchableNorm)
    with pytest.raises(ValueError, match="instance, batch, group, none, switchable"):
        make_norm("bogus", 4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_instance_norm_matches_torch_forward_and_backward(spatial_dims):
    """make_norm("instance") computes instance norm through group_norm (faster on CPU): the same output and
    gradients as torch's InstanceNorm with the same parameters, and the same state_dict keys (old checkpoints load)."""
    torch.manual_seed(0)
    ours = make_norm("instance", 6, spatial_dims=spatial_dims)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    ref = (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(6, affine=True)
    ref.load_state_dict(ours.state_dict())
    assert type(ours) is not type(ref) and list(ours.state_dict()) == ["weight", "bias"]
    x = (torch.randn(3, 6, *([7] * spatial_dims)) * 5 + 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(3, 6, *([7] * spatial_dims))
    ours(x).backward(grad)
    ref(x_ref).backward(grad)
    torch.testing.assert_close(ours(x), ref(x_ref))
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    torch.testing.assert_close(ours(x[0]), ref(x_ref[0]))  # unbatched input: torch's own path


def test_make_norm_in_2d():
    assert isinstance(make_norm("instance", 8, spatial_dims=2), nn.InstanceNorm2d)
    assert isinstance(make_norm("batch", 8, spatial_dims=2), nn.BatchNorm2d)
    assert make_norm("switchable", 8, spatial_dims=2).spatial_dims == 2
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        make_norm("batch", 8, spatial_dims=1)


def test_blocks_downsample_with_stride():
    x = torch.randn(1, 3, 8, 8, 4)
    assert ConvBlock(3, 5, stride=[2, 2, 1])(x).shape == (1, 5, 4, 4, 4)
    assert ResidualBlock(3, 5, stride=2)(x).shape == (1, 5, 4, 4, 2)
    assert ResidualBlock(5, 5)(torch.randn(1, 5, 4, 4, 4)).shape == (1, 5, 4, 4, 4)


def test_blocks_in_2d():
    x = torch.randn(2, 3, 8, 6)
    assert ConvBlock(3, 5, stride=[2, 1], spatial_dims=2)(x).shape == (2, 5, 4, 6)
    assert ResidualBlock(3, 5, stride=2, spatial_dims=2, norm="switchable")(x).shape == (2, 5, 4, 3)
    block = make_block(3, 4, spatial_dims=2, residual=True, activation="relu")
    assert isinstance(block.conv1.conv, nn.Conv2d) and isinstance(block.act, nn.ReLU)
    assert as_stride(2, spatial_dims=2) == (2, 2)
    with pytest.raises(ValueError, match=r"2 ints \(X, Y\)"):
        as_stride([2, 2, 1], spatial_dims=2)


@pytest.mark.parametrize("norm", ["instance", "batch", "switchable"])
@pytest.mark.parametrize("residual", [False, True])
def test_unet_2d_output_shape_strides_and_deep_supervision(norm, residual):
    model = UNet(
        3, 2, channels=[4, 8, 8], strides=[[2, 1], 2], norm=norm, residual=residual, spatial_dims=2, deep_supervision=True
    )
    assert model.required_divisor == (4, 2)
    assert not any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Dropout3d)) for m in model.modules())
    x = torch.randn(2, 3, 12, 10)
    outs = model.train()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 12, 10), (2, 2, 6, 10)]
    sum(o.mean() for o in outs).backward()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, 12, 10)
    with pytest.raises(ValueError, match="expects a 4D input"):
        model(torch.randn(1, 3, 12, 10, 4))
    with pytest.raises(ValueError, match="stride must be an int or 2 ints"):
        UNet(1, channels=[4, 8], strides=[[2, 2, 1]], spatial_dims=2)


def test_unet3d_is_the_3d_unet_with_identical_weights_and_keys():
    torch.manual_seed(0)
    alias = UNet3D(2, 1, channels=[4, 8], strides=[[2, 2, 1]], norm="batch")
    torch.manual_seed(0)
    general = UNet(2, 1, channels=[4, 8], strides=[[2, 2, 1]], norm="batch", spatial_dims=3)
    assert isinstance(alias, UNet) and alias.spatial_dims == 3
    assert list(alias.state_dict()) == list(general.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(alias.state_dict().values(), general.state_dict().values()))
    assert "encoder.0.conv1.conv.weight" in alias.state_dict()  # the keys of existing checkpoints
    with pytest.raises(ValueError, match="UNet3D is the 3D U-Net"):
        UNet3D(1, spatial_dims=2)


def test_xavier_init_option():
    torch.manual_seed(0)
    model = UNet(4, channels=[32, 64], init="xavier", spatial_dims=2)
    conv = model.encoder[1].conv1.conv  # 32 -> 64, 3x3
    fan_in, fan_out = 32 * 9, 64 * 9
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max().item() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert torch.count_nonzero(model.head.bias) == 0
    with pytest.raises(ValueError, match="kaiming, xavier"):
        UNet(1, init="orthogonal")


def test_parameter_count_grows_with_channels():
    small = n_params(UNet3D(4, channels=[4, 8, 16]))
    medium = n_params(UNet3D(4, channels=[8, 16, 32]))
    large = n_params(UNet3D(4, channels=[8, 16, 32, 64]))
    assert small < medium < large


def test_kaiming_init_of_convs():
    torch.manual_seed(0)
    model = UNet3D(4, channels=[32, 64])
    conv = model.encoder[1].conv1.conv  # 32 -> 64, 3x3x3
    fan_in = 32 * 27
    expected_std = (2.0 / (1 + 0.01**2) / fan_in) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


def _blob_example():
    gen = torch.Generator().manual_seed(0)
    xx, yy, zz = torch.meshgrid(torch.arange(16), torch.arange(16), torch.arange(8), indexing="ij")
    blob = (((xx - 6) / 4.0) ** 2 + ((yy - 9) / 3.5) ** 2 + ((zz - 4) / 2.5) ** 2 <= 1).float()
    target = blob[None, None]
    noise = torch.randn((1, 2, 16, 16, 8), generator=gen)
    image = torch.cat([target, torch.zeros_like(target)], dim=1) + 0.5 * noise
    return image, target


def test_overfits_a_tiny_blob_with_dice_ce_and_deep_supervision():
    """Deterministic on CPU (fixed seed); measured over seeds 0-14 on this kind of machine: Dice 1.0 every time,
    so the bound of 0.9 keeps a margin of 0.1."""
    torch.manual_seed(0)
    image, target = _blob_example()
    model = UNet3D(2, 1, channels=[8, 16, 32], strides=[[2, 2, 1], [2, 2, 2]], deep_supervision=True)
    loss_fn = DeepSupervisionLoss(DiceCELoss())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn(model(image), target)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = (model(image) > 0).float()
    dice = 2 * (pred * target).sum() / (pred.sum() + target.sum())
    assert dice.item() > 0.9
