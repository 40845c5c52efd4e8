"""Wang et al.'s networks (SLNet, its ablations and Table 3's comparison networks) and the SE block:
2D and 3D forward/backward, switches, parameter counts against Table 3, initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from strokelab.nn import count_parameters
from strokelab.nn.fcn import FCN
from strokelab.nn.norms import SwitchableNorm
from strokelab.nn.r2unet import R2UNet, RecurrentConv
from strokelab.nn.resunet import ResUNet
from strokelab.nn.se import SEBlock
from strokelab.nn.slnet import PlainUNet, SLNet
from strokelab.nn.unet import UNet

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = (4, 8, 8)  # three stages: divisor 4 per axis
BUILDERS = {
    "UNet": lambda d, **kw: UNet(3, 1, channels=SMALL, spatial_dims=d, **kw),
    "SLNet": lambda d, **kw: SLNet(3, 1, channels=SMALL, spatial_dims=d, se_reduction=2, **kw),
    "PlainUNet": lambda d, **kw: PlainUNet(3, 1, channels=SMALL, spatial_dims=d, **kw),
    "ResUNet": lambda d, **kw: ResUNet(3, 1, channels=SMALL, spatial_dims=d, **kw),
    "R2UNet": lambda d, **kw: R2UNet(3, 1, channels=SMALL, spatial_dims=d, **kw),
    "FCN": lambda d, **kw: FCN(3, 1, channels=(4, 4, 8, 8, 8), fc_channels=8, spatial_dims=d, **kw),
}
INPUTS = {2: (2, 3, 32, 64), 3: (2, 3, 32, 32, 64)}  # FCN needs multiples of 32


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("dims", [2, 3])
def test_every_network_runs_forward_and_backward_with_input_sized_output(name, dims):
    torch.manual_seed(0)
    net = BUILDERS[name](dims).train()
    x = torch.randn(INPUTS[dims])
    y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (x.shape[0], 1) + x.shape[2:]
    (y * torch.randn_like(y)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(x[:1])).all()
    assert net.spatial_dims == dims and net.parameter_count() == pytest.approx(count_parameters(net))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_networks_refuse_wrong_inputs_with_a_clear_message(name):
    net = BUILDERS[name](2)
    with pytest.raises(ValueError, match="expects a 4D input"):
        net(torch.randn(1, 3, 32, 32, 32))
    with pytest.raises(ValueError, match="3 input channels"):
        net(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        net(torch.randn(1, 3, 32, 33))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        BUILDERS[name](1)


def test_anisotropic_strides_in_3d():
    strides = [[2, 2, 1], [2, 2, 2]]
    for cls in (SLNet, R2UNet):
        net = cls(2, channels=SMALL, spatial_dims=3, strides=strides)
        assert net.required_divisor == (4, 4, 2)
        assert net(torch.randn(1, 2, 8, 12, 6)).shape == (1, 1, 8, 12, 6)
    fcn = FCN(2, channels=(4, 4, 4, 4, 4), fc_channels=4, spatial_dims=3, strides=[[2, 2, 1]] * 2 + [2] * 3)
    assert fcn.required_divisor == (32, 32, 8)
    assert fcn(torch.randn(2, 2, 32, 32, 8)).shape == (2, 1, 32, 32, 8)


def _count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def test_slnet_switches_do_what_they_say():
    full = SLNet(4, channels=SMALL)
    assert _count(full, SEBlock) == len(SMALL)  # after each encoder stage, bottleneck included
    assert _count(full, SwitchableNorm) == 2 * (2 * len(SMALL) - 1)  # two per stage, encoder and decoder
    assert _count(full, nn.BatchNorm2d) == 0
    no_se = SLNet(4, channels=SMALL, se=False)
    assert _count(no_se, SEBlock) == 0 and _count(no_se, SwitchableNorm) == _count(full, SwitchableNorm)
    no_sn = SLNet(4, channels=SMALL, norm="batch")
    assert _count(no_sn, SwitchableNorm) == 0 and _count(no_sn, nn.BatchNorm2d) == _count(full, SwitchableNorm)
    assert _count(no_sn, SEBlock) == len(SMALL)
    plain = PlainUNet(4, channels=SMALL)
    assert _count(plain, SEBlock) == 0 and _count(plain, SwitchableNorm) == 0 and _count(plain, nn.BatchNorm2d) > 0
    assert all(isinstance(m, nn.ReLU) for m in full.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU)))
    assert SLNet(4, channels=SMALL, se_reduction=4).recalibration[2].hidden == 2


@pytest.mark.parametrize("out_channels", [1, 2])
def test_parameter_counts_at_the_papers_widths_match_table_3(out_channels):
    """Table 3 (4 perfusion maps in, Ronneberger's widths 64 ... 1024): UNet and SLNet w/o SE 31.04 M,
    SLNet and SLNet w/o SN 33.84 M (their SE blocks add 2.80 M, which is what reduction 1 gives),
    R2UNet 39.09 M, FCN 18.64 M. One or two output channels change the counts by at most 65 weights."""
    plain = PlainUNet(4, out_channels).parameter_count()
    assert plain == pytest.approx(31.04, abs=0.005)
    assert SLNet(4, out_channels, se=False).parameter_count() == pytest.approx(31.04, abs=0.005)
    assert SLNet(4, out_channels, se_reduction=1).parameter_count() == pytest.approx(33.84, abs=0.005)
    assert SLNet(4, out_channels, se_reduction=1, norm="batch").parameter_count() == pytest.approx(33.84, abs=0.005)
    # Hu et al.'s default reduction 16 adds only 2 * sum(C^2) / 16 + biases.
    widths = (64, 128, 256, 512, 1024)
    se16 = sum(2 * c * (c // 16) + c + c // 16 for c in widths) / 1e6
    no_se = SLNet(4, out_channels, se=False).parameter_count()
    assert SLNet(4, out_channels).parameter_count() == pytest.approx(no_se + se16, abs=1e-9)
    assert R2UNet(4, out_channels).parameter_count() == pytest.approx(39.09, abs=0.01)
    assert FCN(4, out_channels).parameter_count() == pytest.approx(18.64, rel=0.02)


def test_resunet_is_the_plain_unet_plus_its_shortcut_projections():
    """Table 3's ResUNet (81.91 M) is far bigger than a U-Net with residual stages; the paper gives no
    widths. Ours: the same U-Net with a 1x1 projection + norm on each stage whose width changes."""
    widths = (64, 128, 256, 512, 1024)
    enc = [(4, 64)] + list(zip(widths[:-1], widths[1:]))
    dec = [(2 * c, c) for c in widths[:-1]]
    projections = sum(cin * cout + 2 * cout for cin, cout in enc + dec) / 1e6
    assert ResUNet(4).parameter_count() == pytest.approx(PlainUNet(4).parameter_count() + projections, abs=1e-6)


@pytest.mark.parametrize("name", ["SLNet", "PlainUNet", "ResUNet", "R2UNet", "FCN"])
def test_xavier_init_gives_the_xavier_uniform_variance(name):
    torch.manual_seed(0)
    builders = {
        "SLNet": lambda: SLNet(4, channels=(32, 64)),
        "PlainUNet": lambda: PlainUNet(4, channels=(32, 64)),
        "ResUNet": lambda: ResUNet(4, channels=(32, 64)),
        "R2UNet": lambda: R2UNet(4, channels=(32, 64)),
        "FCN": lambda: FCN(4, channels=(8, 8, 16, 32, 64), fc_channels=64),
    }
    net = builders[name]()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight[0].numel() >= 32 * 9]
    assert convs
    for conv in convs:
        receptive = conv.weight[0, 0].numel()
        fan_in, fan_out = conv.in_channels * receptive, conv.out_channels * receptive
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert conv.weight.abs().max().item() <= bound
        assert conv.weight.var().item() == pytest.approx(2.0 / (fan_in + fan_out), rel=0.1)
        assert conv.bias is None or torch.count_nonzero(conv.bias) == 0
    assert net.init == "xavier"  # the default of Wang et al.'s networks


def test_kaiming_option_of_wangs_networks():
    torch.manual_seed(0)
    net = SLNet(4, channels=(32, 64), init="kaiming")
    conv = net.encoder[1].conv1.conv  # 32 -> 64, 3x3
    assert conv.weight.std().item() == pytest.approx((2.0 / (1 + 0.01**2) / (32 * 9)) ** 0.5, rel=0.05)


def test_se_block_scales_channels_by_a_learned_gate():
    torch.manual_seed(0)
    se = SEBlock(32, reduction=16, spatial_dims=3)
    assert se.hidden == 2 and SEBlock(8, reduction=16).hidden == 1  # at least one hidden unit
    x = torch.randn(2, 32, 4, 4, 3)
    y = se(x)
    gate = y / x
    # One factor per (sample, channel), strictly between 0 and 1, equal to the documented formula.
    torch.testing.assert_close(gate, gate[..., :1, :1, :1].expand_as(gate))
    expected = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3, 4))))))
    torch.testing.assert_close(gate[..., 0, 0, 0], expected)
    assert ((gate > 0) & (gate < 1)).all()
    with pytest.raises(ValueError, match="spatial_dims=3"):
        se(torch.randn(2, 32, 4, 4))


def test_fcn_upsampling_starts_as_interpolation():
    """The learned x2 up-samplings start as bilinear interpolation: a constant score map stays constant
    (away from the border, where the transposed convolution sees zero padding)."""
    net = FCN(1, 2, channels=(4, 4, 4, 4, 4), fc_channels=4)
    const = torch.full((1, 2, 6, 6), 3.0)
    with torch.no_grad():
        up = net.upscore2(const)
    assert up.shape == (1, 2, 12, 12)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], torch.full((1, 2, 10, 10), 3.0))


def test_r2unet_recurrence_shares_weights():
    assert count_parameters(RecurrentConv(8, t=2)) == count_parameters(RecurrentConv(8, t=5))
    a, b = R2UNet(2, channels=SMALL, t=2), R2UNet(2, channels=SMALL, t=3)
    assert a.parameter_count() == b.parameter_count()
    x = torch.randn(1, 2, 8, 8)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))  # the extra recurrence step changes the function


def test_count_parameters_in_millions():
    assert count_parameters(nn.Linear(1000, 1000)) == pytest.approx(1.001)
