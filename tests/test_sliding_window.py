"""sliding_window_inference (2D and 3D) and infer: exact reconstruction, padding, mirroring, window count,
batching, 2D networks over 3D volumes slice by slice."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from strokelab.nn.sliding_window import (
    gaussian_importance_map,
    highest_resolution_output,
    infer,
    sliding_window_inference,
    window_starts,
)
from strokelab.nn.slnet import SLNet
from strokelab.nn.unet import UNet3D

CASES = [
    # (image shape, patch, overlap)
    ((1, 1, 17, 9, 5), (8, 4, 3), 0.5),
    ((2, 3, 33, 20, 7), (16, 16, 4), 0.25),
    ((1, 2, 31, 13, 9), (7, 5, 3), 0.0),
    ((1, 1, 31, 13, 9), (7, 5, 3), 0.8),
    ((1, 1, 10, 10, 10), (10, 10, 10), 0.5),
    ((1, 1, 21, 11, 3), (16, 8, 3), 0.9),
]


pytestmark = pytest.mark.usefixtures("single_thread")


def identity(x):
    return x


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("shape,patch,overlap", CASES)
def test_identity_predictor_reproduces_input(shape, patch, overlap, mode):
    torch.manual_seed(0)
    image = torch.randn(shape)
    out = sliding_window_inference(identity, image, patch, overlap=overlap, batch_size=3, mode=mode)
    assert out.shape == image.shape
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_image_smaller_than_patch(mode):
    image = torch.randn(1, 2, 5, 3, 2)
    out = sliding_window_inference(identity, image, (8, 8, 8), mode=mode)
    assert out.shape == image.shape
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
    # Smaller in one axis only.
    image = torch.randn(1, 1, 20, 3, 9)
    out = sliding_window_inference(identity, image, (8, 8, 4), mode=mode)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)


def test_output_shape_with_a_unet_and_different_out_channels():
    model = UNet3D(3, 2, channels=[4, 8], strides=[[2, 2, 1]]).eval()
    image = torch.randn(2, 3, 19, 13, 5)
    out = sliding_window_inference(model, image, (8, 8, 4), overlap=0.5, batch_size=2)
    assert out.shape == (2, 2, 19, 13, 5)


def test_deep_supervision_list_uses_first_element():
    image = torch.randn(1, 1, 12, 12, 6)

    def ds_predictor(x):
        return [x * 2, x[:, :, ::2, ::2, ::2]]

    out = sliding_window_inference(ds_predictor, image, (8, 8, 4))
    torch.testing.assert_close(out, image * 2, atol=1e-5, rtol=0)


def _box_filter(x):
    """3x3x3 mean filter with zero padding: equivariant to flips of any spatial axis."""
    c = x.shape[1]
    kernel = torch.ones(c, 1, 3, 3, 3) / 27
    return F.conv3d(x, kernel, padding=1, groups=c)


@pytest.mark.parametrize("mirror_axes", [(0,), (1, 2), (0, 1, 2)])
def test_mirroring_with_flip_equivariant_predictor_changes_nothing(mirror_axes):
    torch.manual_seed(0)
    image = torch.randn(1, 2, 18, 14, 7)
    plain = sliding_window_inference(_box_filter, image, (8, 8, 4), overlap=0.5)
    mirrored = sliding_window_inference(_box_filter, image, (8, 8, 4), overlap=0.5, mirror_axes=mirror_axes)
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=0)
    # And identity stays identity (each flipped prediction is flipped back).
    out = sliding_window_inference(identity, image, (8, 8, 4), mirror_axes=mirror_axes)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)


def test_mirroring_averages_flipped_predictions():
    """A predictor that is not flip-equivariant: the result is the mean of the flipped-back outputs."""
    image = torch.randn(1, 1, 8, 8, 4)
    ramp = torch.arange(8.0).reshape(1, 1, 8, 1, 1)

    def add_ramp(x):
        return x + ramp

    out = sliding_window_inference(add_ramp, image, (8, 8, 4), mirror_axes=(0,))
    torch.testing.assert_close(out, image + 3.5, atol=1e-5, rtol=0)  # mean of ramp and flipped ramp


class CallCounter:
    def __init__(self):
        self.windows = 0
        self.calls = 0
        self.max_batch = 0

    def __call__(self, x):
        self.windows += x.shape[0]
        self.calls += 1
        self.max_batch = max(self.max_batch, x.shape[0])
        return x


@pytest.mark.parametrize(
    "size,patch,overlap",
    [((64, 48, 20), (32, 32, 8), 0.5), ((64, 48, 20), (32, 32, 8), 0.0), ((40, 33, 9), (16, 16, 9), 0.25)],
)
def test_number_of_windows_matches_overlap(size, patch, overlap):
    counter = CallCounter()
    image = torch.zeros((2, 1) + size)
    sliding_window_inference(counter, image, patch, overlap=overlap, batch_size=4)
    per_axis = [math.ceil((s - p) / (p * (1 - overlap))) + 1 for s, p in zip(size, patch)]
    expected = 2 * math.prod(per_axis)  # two images
    assert counter.windows == expected
    assert counter.max_batch <= 4
    assert counter.calls == math.ceil(expected / 4)  # full batches, windows of both images share calls


def test_window_count_concrete_and_mirroring_multiplies_calls():
    # 64 with patch 32 at 50% overlap: starts 0, 16, 32 -> 3; 20 with 8: step 4 -> 0, 4, 8, 12 -> 4
    assert window_starts(64, 32, 0.5) == [0, 16, 32]
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert window_starts(33, 16, 0.5) == [0, 6, 11, 17]  # last window flush with the border
    counter = CallCounter()
    sliding_window_inference(counter, torch.zeros(1, 1, 64, 64, 20), (32, 32, 8), mirror_axes=(0, 1))
    assert counter.windows == 3 * 3 * 4 * 4


def test_gaussian_importance_map_properties():
    w = gaussian_importance_map((9, 8, 5), sigma_scale=0.125)
    assert w.shape == (9, 8, 5)
    assert w.max().item() == pytest.approx(1.0, abs=1e-6)
    assert w.min().item() > 0
    assert w[4, 3, 2] > w[0, 0, 0]  # centre dominates corners
    torch.testing.assert_close(w, w.flip(0).flip(1).flip(2))  # symmetric


def test_explicit_device_and_output_on_image_device():
    image = torch.randn(1, 1, 10, 10, 6)
    out = sliding_window_inference(identity, image, (8, 8, 4), device=torch.device("cpu"))
    assert out.device == image.device
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)


def test_invalid_arguments_raise():
    image = torch.randn(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(identity, image, (4, 4, 4), overlap=1.0)
    with pytest.raises(ValueError, match="mode"):
        sliding_window_inference(identity, image, (4, 4, 4), mode="median")
    with pytest.raises(ValueError, match="mirror_axes"):
        sliding_window_inference(identity, image, (4, 4, 4), mirror_axes=(3,))
    with pytest.raises(ValueError, match="patch_size"):
        sliding_window_inference(identity, image, (4, 4))
    with pytest.raises(ValueError, match="predictor returned shape"):
        sliding_window_inference(lambda x: x[:, :, :2], image, (4, 4, 4))


# ------------------------------------------------------------------------------------------------ 2D

CASES_2D = [
    ((1, 1, 17, 9), (8, 4), 0.5),
    ((2, 3, 33, 20), (16, 16), 0.25),
    ((1, 2, 31, 13), (7, 5), 0.0),
    ((1, 1, 10, 10), (10, 10), 0.5),
    ((1, 1, 5, 21), (8, 8), 0.9),  # smaller than the patch in X
]


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("shape,patch,overlap", CASES_2D)
def test_identity_predictor_reproduces_input_in_2d(shape, patch, overlap, mode):
    torch.manual_seed(0)
    image = torch.randn(shape)
    out = sliding_window_inference(identity, image, patch, overlap=overlap, batch_size=3, mode=mode)
    assert out.shape == image.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)


def _box_filter_2d(x):
    c = x.shape[1]
    return F.conv2d(x, torch.ones(c, 1, 3, 3) / 9, padding=1, groups=c)


def test_mirroring_and_importance_map_in_2d():
    torch.manual_seed(0)
    image = torch.randn(1, 2, 18, 14)
    plain = sliding_window_inference(_box_filter_2d, image, (8, 8), overlap=0.5)
    mirrored = sliding_window_inference(_box_filter_2d, image, (8, 8), overlap=0.5, mirror_axes=(0, 1))
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=0)
    ramp = torch.arange(8.0).reshape(1, 1, 1, 8)
    out = sliding_window_inference(lambda x: x + ramp, image[:, :1, :8, :8], (8, 8), mirror_axes=(1,))
    torch.testing.assert_close(out, image[:, :1, :8, :8] + 3.5, atol=1e-5, rtol=0)
    w = gaussian_importance_map((9, 6))
    assert w.shape == (9, 6) and w.max().item() == pytest.approx(1.0) and w[4, 2] > w[0, 0]
    with pytest.raises(ValueError, match="mirror_axes"):
        sliding_window_inference(identity, image, (8, 8), mirror_axes=(2,))


def _settings(patch, **extra):
    return {"patch_size": patch, "overlap": 0.5, "batch_size": 3, **extra}


class _SliceNet(torch.nn.Module):
    """A 2D predictor with 2 output channels that mixes neighbouring pixels (so slice/axis mix-ups show)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        assert x.dim() == 4, "a 2D predictor only ever sees (n, C, X, Y) windows"
        return self.conv(x)


@pytest.mark.parametrize("patch", [(8, 8), [8, 8, 1]])
def test_2d_slice_mode_equals_the_2d_predictor_applied_slice_by_slice(patch):
    torch.manual_seed(0)
    net = _SliceNet().eval()
    volume = torch.randn(2, 3, 13, 11, 5)
    out = infer(net, volume, _settings(patch, spatial_dims=2, mirror_axes=[0]))
    assert out.shape == (2, 2, 13, 11, 5)
    for b in range(2):
        for z in range(5):
            expected = sliding_window_inference(net, volume[b : b + 1, ..., z], (8, 8), overlap=0.5, mirror_axes=(0,))
            torch.testing.assert_close(out[b : b + 1, ..., z], expected, atol=1e-5, rtol=0)
    # A 2D image goes straight to the 2D sliding window.
    flat = infer(net, volume[..., 0], _settings(patch, spatial_dims=2))
    torch.testing.assert_close(flat, sliding_window_inference(net, volume[..., 0], (8, 8)), atol=1e-6, rtol=0)


def test_2d_slice_mode_with_a_2d_network_and_batches_across_slices():
    net = SLNet(4, 1, channels=(4, 8), se_reduction=2).eval()
    counter = CallCounter()

    def counted(x):
        counter(x)
        return net(x)

    volume = torch.randn(1, 4, 16, 16, 7)
    out = infer(counted, volume, {"patch_size": [16, 16, 1], "overlap": 0.5, "batch_size": 4, "spatial_dims": 2})
    assert out.shape == (1, 1, 16, 16, 7)
    assert counter.windows == 7 and counter.calls == 2  # one window per slice, 4 slices per call
    with torch.no_grad():
        torch.testing.assert_close(out[..., 3], net(volume[..., 3]), atol=1e-5, rtol=1e-5)


def test_infer_settings_errors_and_3d_default():
    volume = torch.randn(1, 1, 12, 12, 6)
    with pytest.raises(ValueError, match="mirror_axes must be among 0, 1"):
        infer(identity, volume, _settings([8, 8], spatial_dims=2, mirror_axes=[2]))
    with pytest.raises(ValueError, match=r"\(px, py\) or \(px, py, 1\)"):
        infer(identity, volume, _settings([8, 8, 4], spatial_dims=2))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        infer(identity, volume, _settings([8, 8, 4], spatial_dims=4))
    # Without spatial_dims (existing settings) and with spatial_dims 3: 3D windows, as before.
    for extra in ({}, {"spatial_dims": 3}):
        torch.testing.assert_close(infer(identity, volume, _settings([8, 8, 4], **extra)), volume, atol=1e-5, rtol=0)


def test_highest_resolution_output_is_the_one_place_lists_are_reduced():
    x = torch.randn(1, 1, 4, 4)
    assert highest_resolution_output(x) is x
    assert highest_resolution_output([x, x[..., ::2, ::2]]) is x
    with pytest.raises(TypeError, match="Tensor or a list of Tensors"):
        highest_resolution_output({"logits": x})
