"""Temporal features of Wang et al. 2020 (§3.1): temporal MIP, q(t), the perfusion window [Ts, Te] of
Eq. 2-3 with K = 5, and the temporal crop with uniform resampling to Ce frames."""

from __future__ import annotations

import numpy as np
import pytest

from strokelab.data import phantom
from strokelab.data.phantom import PhantomConfig
from strokelab.errors import ConfigError, DataError
from strokelab.perfusion import (
    PerfusionWindow,
    accumulated_intensity,
    crop_and_resample,
    perfusion_window,
    temporal_features,
    temporal_mip,
)


def test_temporal_mip_is_the_maximum_over_time():
    series = np.zeros((3, 4, 2, 10), np.int16)
    series[1, 2, 0, 7] = 300
    series[0, 0, 1, 2] = -5
    series[2, 3, 1, :] = np.arange(10) * 3
    mip = temporal_mip(series)
    assert mip.shape == (3, 4, 2) and mip.dtype == np.int16
    assert mip[1, 2, 0] == 300 and mip[0, 0, 1] == 0 and mip[2, 3, 1] == 27


def test_accumulated_intensity_sums_every_voxel_per_frame():
    series = np.ones((4, 5, 3, 6), np.int16) * np.arange(6, dtype=np.int16)  # frame t has value t everywhere
    np.testing.assert_array_equal(accumulated_intensity(series), 60 * np.arange(6))
    mask = np.zeros((4, 5, 3))
    mask[0, 0, 0] = mask[3, 4, 2] = 1
    np.testing.assert_array_equal(accumulated_intensity(series, mask), 2 * np.arange(6))
    with pytest.raises(DataError):
        accumulated_intensity(series, mask[:2])


def _tent(t_len=40, up=10, top=20, down=30):
    """q rising linearly on frames up..top, falling on top..down, flat elsewhere."""
    t = np.arange(t_len, dtype=float)
    return np.where(
        t < up, 0, np.where(t <= top, t - up, np.where(t <= down, (top - up) - (t - top) * (top - up) / (down - top), 0))
    )


def test_window_of_a_rise_and_fall():
    """Worked by hand with q' = numpy.gradient(q): q' > 0 exactly on frames 10..19 (q'(9) = 0), q' < 0
    exactly on 21..30 (q'(20) = 0, q'(31) = 0). Eq. 2: the first t with q' > 0 on t..t+4 is 10.
    Eq. 3: the last t with q' < 0 on t-4..t is 30."""
    w = perfusion_window(_tent())
    assert (w.start, w.end, w.found_start, w.found_end) == (10, 30, True, True)
    assert w.n_frames == 21 and w.seconds(1.5) == (15.0, 45.0)


def test_window_needs_k_consecutive_signs():
    """Worked by hand (central differences; ends one-sided):

    t   0 1 2  3 4 5  6 7 8  9 10 11 12 13 14 15 16 17 18 19 20 21 22 23
    q   0 0 0  1 2 3  3 3 3  4  5  6  7  8  9  9  9  7  5  3  1  1  1  1
    q'  0 0 .5 1 1 .5 0 0 .5 1  1  1  1  1 .5  0 -1 -2 -2 -2 -1  0  0  0

    Positive runs: 2..5 (four frames) and 8..14; negative run: 16..20 (five frames).
    """
    q = np.array([0, 0, 0, 1, 2, 3, 3, 3, 3, 4, 5, 6, 7, 8, 9, 9, 9, 7, 5, 3, 1, 1, 1, 1], float)
    w = perfusion_window(q, k=5)
    assert (w.start, w.end, w.found_start, w.found_end) == (8, 20, True, True)
    assert perfusion_window(q, k=4).start == 2  # with K = 4 the short first rise qualifies
    w6 = perfusion_window(q, k=6)  # no run of six falling frames: the window runs to the last frame
    assert (w6.start, w6.end, w6.found_end) == (8, 23, False)


def test_window_falls_back_to_the_whole_series():
    w = perfusion_window(np.zeros(20))
    assert w == PerfusionWindow(0, 19, False, False)
    falling = perfusion_window(-np.arange(20.0))
    assert not falling.found_start and falling.start == 0 and falling.end == 19
    rising = perfusion_window(np.arange(20.0))
    assert rising.start == 0 and rising.found_start and rising.end == 19 and not rising.found_end
    with pytest.raises(DataError):
        perfusion_window(np.arange(5.0))
    with pytest.raises(ConfigError):
        perfusion_window(np.arange(20.0), k=0)


def test_window_brackets_the_bolus_of_the_phantom():
    cfg = PhantomConfig(n_cases=1, shape=(48, 56, 14), spacing=(4.0, 4.0, 10.0), n_frames=30, frame_interval_s=1.5)
    for case in range(3):
        c = phantom._simulate_case(case, cfg)
        series = np.asarray(c.images["ctp"].dataobj)
        feats = temporal_features(series)
        w, q = feats["window"], feats["q"]
        onset = c.truth["aif_onset_s"] / cfg.frame_interval_s
        assert w.found_start and w.found_end
        assert w.start <= np.ceil(onset) + 1 < np.argmax(q) < w.end
        assert feats["cropped"].shape == series.shape[:3] + (6,)
        np.testing.assert_array_equal(feats["mip"], series.max(axis=-1))


def test_crop_and_resample_interpolates_linearly():
    t = np.arange(20, dtype=np.float32)
    series = np.asfortranarray(np.broadcast_to(3.0 * t + np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1), (2, 3, 1, 20)))
    out = crop_and_resample(series, 4, 15, 6)
    pos = np.linspace(4, 15, 6)  # 4, 6.2, 8.4, 10.6, 12.8, 15
    expected = 3.0 * pos + np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32 and out.flags.f_contiguous
    np.testing.assert_array_equal(out[..., 0], series[..., 4])
    np.testing.assert_array_equal(out[..., -1], series[..., 15])
    np.testing.assert_array_equal(crop_and_resample(series, 7, 7, 3), np.repeat(series[..., 7:8], 3, axis=-1))
    np.testing.assert_array_equal(crop_and_resample(series, 2, 9, 1)[..., 0], series[..., 2])
    # Up-sampling is the same interpolation.
    np.testing.assert_allclose(crop_and_resample(series, 0, 2, 5)[0, 0, 0], [0, 1.5, 3, 4.5, 6])
    with pytest.raises(DataError):
        crop_and_resample(series, 5, 25, 6)
    with pytest.raises(ConfigError):
        crop_and_resample(series, 0, 5, 0)
