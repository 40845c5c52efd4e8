"""Properties of strokelab.metrics that a user relies on, checked against independent truths.

Real masks: the public ISLES'24 / ISLES'22 sample masks in shared/data/real (see its README).
References used: volumes documented in that README, exact geometry of shifted / eroded masks,
scipy.ndimage.label (not cc3d) for lesion counts, brute-force point-to-point distances
(scipy cdist) for surface distances, and panoptica (the library the ISLES'24 evaluation uses).
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from strokelab.errors import DataError
from strokelab.metrics import (
    LESION_MATCH_IOU,
    METRIC_COLUMNS,
    case_metrics,
    lesion_detection,
    load_mask,
    spacing_mm,
    surface_distances,
    voxel_volume_ml,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"  # as in conftest.py
CASE_0014 = REAL / "isles24/derivatives/sub-stroke0014/ses-02/sub-stroke0014_ses-02_lesion-msk.nii.gz"
CASE_0158 = REAL / "isles24/derivatives/sub-stroke0158/ses-02/sub-stroke0158_ses-02_lesion-msk.nii.gz"
CASE_22_0009 = REAL / "isles22/derivatives/sub-strokecase0009/ses-0001/sub-strokecase0009_ses-0001_msk.nii.gz"

needs_real = pytest.mark.skipif(not CASE_0014.exists(), reason=f"real sample masks not found under {REAL}")

FULL_26 = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity structure for scipy.ndimage.label


@pytest.fixture(scope="module")
def m0014():
    mask, img = load_mask(CASE_0014)
    return mask, img, spacing_mm(img)


@pytest.fixture(scope="module")
def m0158():
    mask, img = load_mask(CASE_0158)
    return mask, img, spacing_mm(img)


@pytest.fixture(scope="module")
def m0009():
    mask, img = load_mask(CASE_22_0009)
    return mask, img, spacing_mm(img)


def n_lesions(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=FULL_26)[1])


def box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# ------------------------------------------------------------------------------------------ loading


@needs_real
@pytest.mark.parametrize(
    "path, shape, spacing, volume_ml",
    [
        (CASE_0014, (512, 586, 74), (0.3828125, 0.3828125, 2.0), 222.0),
        (CASE_22_0009, (112, 112, 73), (2.0, 2.0, 2.0), 4.2),
    ],
)
def test_load_mask_gives_the_documented_lesion_volume(path, shape, spacing, volume_ml):
    mask, img = load_mask(path)
    assert mask.dtype == bool and mask.shape == shape
    assert spacing_mm(img) == pytest.approx(spacing)
    assert voxel_volume_ml(img) == pytest.approx(np.prod(spacing) / 1000)
    assert mask.sum() * voxel_volume_ml(img) == pytest.approx(volume_ml, rel=0.02)


@needs_real
def test_load_mask_reads_near_one_scaled_values_as_foreground(m0158):
    mask, img, _ = m0158
    stored = np.asanyarray(nib.load(str(CASE_0158)).dataobj)
    # The trap: the "ones" are 0.99999999977, so an integer cast would lose the whole lesion.
    assert 0.999 < stored.max() < 1.0 and not stored.astype(np.int64).any()
    np.testing.assert_array_equal(mask, stored > 0.5)
    assert mask.shape == (512, 512, 101)
    assert 50 < mask.sum() * voxel_volume_ml(img) < 300


def _save(tmp_path: Path, data: np.ndarray, name: str = "m.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0])), str(path))
    return path


def test_load_mask_rejects_4d_nan_2d_missing_and_garbage(tmp_path):
    with pytest.raises(DataError, match="one 3D volume"):
        load_mask(_save(tmp_path, np.zeros((4, 4, 4, 2), np.uint8), "4d.nii.gz"))
    with pytest.raises(DataError, match="one 3D volume"):
        load_mask(_save(tmp_path, np.zeros((4, 4), np.uint8), "2d.nii.gz"))
    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 1, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        load_mask(_save(tmp_path, nan, "nan.nii.gz"))
    with pytest.raises(DataError, match="not found"):
        load_mask(tmp_path / "missing.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a nifti file")
    with pytest.raises(DataError) as err:
        load_mask(garbage)
    assert str(garbage) in str(err.value)
    truncated = tmp_path / "truncated.nii.gz"
    noise = np.random.default_rng(0).integers(0, 2, (40, 40, 40)).astype(np.uint8)  # compresses poorly
    whole = _save(tmp_path, noise, "whole.nii.gz").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_mask(truncated)


def test_load_mask_thresholds_floats_scaled_ints_and_singleton_4d(tmp_path):
    probs = np.array([0.0, 0.2, 0.5, 0.51, 0.9, 1.0], np.float32).reshape(1, 2, 3)
    mask, _ = load_mask(_save(tmp_path, probs, "p.nii.gz"))
    np.testing.assert_array_equal(mask.ravel(), [False, False, False, True, True, True])

    img = nib.Nifti1Image(np.array([0, 1, 2, 3], np.int16).reshape(1, 1, 4), np.eye(4))
    img.header.set_slope_inter(0.25, 0.0)  # stored 0..3 -> 0, 0.25, 0.5, 0.75
    nib.save(img, str(tmp_path / "s.nii.gz"))
    mask, _ = load_mask(tmp_path / "s.nii.gz")
    np.testing.assert_array_equal(mask.ravel(), [False, False, False, True])

    mask, _ = load_mask(_save(tmp_path, np.ones((3, 4, 5, 1), np.uint8), "single.nii.gz"))
    assert mask.shape == (3, 4, 5) and mask.all()


# ------------------------------------------------------------------------------------ whole masks


@needs_real
@pytest.mark.parametrize("fixture", ["m0014", "m0158", "m0009"])
def test_identical_real_masks_score_perfectly(fixture, request):
    mask, _, spacing = request.getfixturevalue(fixture)
    r = case_metrics(mask, mask.copy(), spacing)
    assert list(r) == list(METRIC_COLUMNS)
    assert r == {
        "dice": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "avd_ml": 0.0,
        "lesion_f1": 1.0,
        "lesion_count_diff": 0.0,
        "hd95_mm": 0.0,
        "assd_mm": 0.0,
        "rve": 0.0,
    }


@needs_real
@pytest.mark.parametrize("k", [1, 2, 3])
def test_real_mask_shifted_along_z_gives_shift_in_mm(m0014, k):
    mask, _, spacing = m0014
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    assert z[0] >= k and z[-1] + k < mask.shape[2]  # np.roll is a clean shift, nothing wraps
    shifted = np.roll(mask, k, axis=2)
    r = case_metrics(shifted, mask, spacing)
    # Every shifted surface voxel is k * 2 mm from its own source, so no distance exceeds that,
    # and the top slice of the shifted lesion is exactly k * 2 mm from the nearest true voxel.
    d_pred, d_label = surface_distances(shifted, mask, spacing)
    assert max(d_pred.max(), d_label.max()) == pytest.approx(k * 2.0)
    assert k * 2.0 - 2.0 <= r["hd95_mm"] <= k * 2.0 + 1e-9
    assert 0 < r["assd_mm"] < r["hd95_mm"]
    assert r["avd_ml"] == pytest.approx(0.0) and r["rve"] == pytest.approx(0.0)
    assert r["lesion_count_diff"] == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_box_shift_along_each_axis_uses_that_axis_spacing(axis, k):
    spacing = (0.383, 0.5, 2.0)
    label = box((24, 24, 24), (6, 6, 6), (16, 16, 16))
    pred = np.roll(label, k, axis=axis)
    r = case_metrics(pred, label, spacing)
    # The leading and trailing 10x10 faces (>5 % of the surface) lie exactly k voxels apart.
    assert r["hd95_mm"] == pytest.approx(k * spacing[axis])
    assert r["dice"] == pytest.approx((10 - k) / 10)
    assert r["lesion_f1"] == (1.0 if (10 - k) / (10 + k) >= LESION_MATCH_IOU else 0.0)


@needs_real
def test_avd_of_eroded_mask_is_removed_voxels_times_voxel_volume(m0014):
    mask, img, spacing = m0014
    eroded = ndimage.binary_erosion(mask)
    removed = int(mask.sum() - eroded.sum())
    r = case_metrics(eroded, mask, spacing)
    assert r["avd_ml"] == pytest.approx(removed * voxel_volume_ml(img), rel=1e-9)
    assert r["rve"] == pytest.approx(-removed / mask.sum(), rel=1e-9)
    assert r["precision"] == 1.0
    assert r["recall"] == pytest.approx(eroded.sum() / mask.sum())
    assert r["dice"] == pytest.approx(2 * eroded.sum() / (eroded.sum() + mask.sum()))


# ---------------------------------------------------------------------------------- lesion-wise


@needs_real
def test_removing_one_lesion_costs_one_false_negative(m0014):
    mask, _, spacing = m0014
    labels, n = ndimage.label(mask, structure=FULL_26)  # independent of cc3d
    assert n == 16
    sizes = np.bincount(labels.ravel())[1:]
    pred = mask & (labels != 1 + int(np.argmin(sizes)))
    r = case_metrics(pred, mask, spacing)
    assert r["lesion_f1"] == pytest.approx(15 / (15 + 0.5 * 1))  # TP 15, FN 1, FP 0
    assert r["lesion_count_diff"] == 1.0


@needs_real
def test_extra_blob_far_from_lesions_is_one_false_positive(m0158):
    mask, _, spacing = m0158
    n = n_lesions(mask)
    pred = mask.copy()
    pred[2:6, 2:6, 2:4] = True
    assert not mask[:10, :10, :6].any()
    r = case_metrics(pred, mask, spacing)
    assert r["lesion_f1"] == pytest.approx(n / (n + 0.5))
    assert r["lesion_count_diff"] == 1.0
    assert r["recall"] == 1.0 and r["precision"] < 1.0


def test_split_merge_and_shift_follow_the_isles24_iou_matching():
    assert LESION_MATCH_IOU == 0.2  # ISLES'24 evaluation since 2025-12-16
    shape, one = (40, 20, 20), (1.0, 1.0, 1.0)
    label = box(shape, (5, 5, 5), (25, 15, 15))  # one 20-voxel-long lesion

    # Split in the middle: each half has IoU 9/20 = 0.45. One half matches, the other cannot
    # (one-to-one) and is a false positive: TP 1, FP 1, FN 0 -> F1 = 1 / 1.5. At 0.5: no match.
    pred = label.copy()
    pred[14:16] = False
    d = lesion_detection(pred, label)
    assert (d["tp"], d["fp"], d["fn"]) == (1, 1, 0)
    r = case_metrics(pred, label, one)
    assert r["lesion_f1"] == pytest.approx(2 / 3) and r["lesion_count_diff"] == 1.0
    assert case_metrics(pred, label, one, match_iou=0.5)["lesion_f1"] == 0.0

    # Shattered into five 3-voxel pieces (IoU 3/20 = 0.15 each): nothing matches.
    pred = label.copy()
    pred[8::4] = False
    r = case_metrics(pred, label, one)
    assert r["lesion_f1"] == 0.0 and r["lesion_count_diff"] == 4.0

    # IoU exactly 0.2 matches (>=, panoptica's strict_threshold=False); one voxel shorter does not.
    assert case_metrics(box(shape, (5, 5, 5), (9, 15, 15)), label, one)["lesion_f1"] == 1.0  # 4/20
    assert case_metrics(box(shape, (5, 5, 5), (8, 15, 15)), label, one)["lesion_f1"] == 0.0  # 3/20

    # A 10-voxel lesion predicted 5 voxels off: IoU 5/15 = 1/3 -> detected at 0.2, missed at 0.5.
    short = box(shape, (5, 5, 5), (15, 15, 15))
    shifted = box(shape, (10, 5, 5), (20, 15, 15))
    assert case_metrics(shifted, short, one)["lesion_f1"] == 1.0
    assert case_metrics(shifted, short, one, match_iou=0.5)["lesion_f1"] == 0.0

    # Two equal true lesions merged into one prediction: IoU 8/17 each -> TP 1, FN 1.
    two = box(shape, (5, 5, 5), (13, 15, 15)) | box(shape, (14, 5, 5), (22, 15, 15))
    assert n_lesions(two) == 2
    merged = box(shape, (5, 5, 5), (22, 15, 15))
    r = case_metrics(merged, two, one)
    assert r["lesion_f1"] == pytest.approx(2 / 3) and r["lesion_count_diff"] == 1.0
    assert case_metrics(merged, two, one, match_iou=0.5)["lesion_f1"] == 0.0

    # Merge a big and a small true lesion: the big one matches at both thresholds (IoU 14/17).
    uneven = box(shape, (5, 5, 5), (19, 15, 15)) | box(shape, (20, 5, 5), (22, 15, 15))
    for iou in (0.2, 0.5):
        assert case_metrics(merged, uneven, one, match_iou=iou)["lesion_f1"] == pytest.approx(2 / 3)


def test_lesions_touching_at_a_corner_are_one_lesion():
    m = np.zeros((6, 6, 6), dtype=bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # 26-connected, not 6- or 18-connected
    m[4, 4, 4] = True
    d = lesion_detection(m, m)
    assert d["n_label"] == d["n_pred"] == 2 == n_lesions(m)


# ------------------------------------------------------------------------------------ empty masks


def test_empty_mask_conventions():
    empty = np.zeros((8, 8, 8), dtype=bool)
    lesion = box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    sp = (0.4, 0.4, 2.0)

    both = case_metrics(empty, empty, sp)
    assert both["dice"] == both["precision"] == both["recall"] == both["lesion_f1"] == 1.0
    assert both["hd95_mm"] == both["assd_mm"] == both["avd_ml"] == both["lesion_count_diff"] == 0.0
    assert math.isnan(both["rve"])

    missed = case_metrics(empty, lesion, sp)  # nothing predicted
    assert missed["dice"] == missed["recall"] == missed["lesion_f1"] == 0.0
    assert math.isnan(missed["precision"]) and math.isnan(missed["hd95_mm"]) and math.isnan(missed["assd_mm"])
    assert missed["rve"] == -1.0 and missed["lesion_count_diff"] == 1.0
    assert missed["avd_ml"] == pytest.approx(27 * 0.4 * 0.4 * 2.0 / 1000)

    false_alarm = case_metrics(lesion, empty, sp)  # lesion predicted where there is none
    assert false_alarm["dice"] == false_alarm["precision"] == false_alarm["lesion_f1"] == 0.0
    assert math.isnan(false_alarm["recall"]) and math.isnan(false_alarm["rve"])
    assert math.isnan(false_alarm["hd95_mm"]) and math.isnan(false_alarm["assd_mm"])


# -------------------------------------------------------------------------------- brute force / refs


def _surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    """Voxels with a face neighbour outside the mask (or on the array border), in mm."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1]
    all_in = np.ones_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            all_in &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(inner & ~all_in) * np.asarray(spacing)


def _brute_force_distances(pred: np.ndarray, label: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (pred -> label, label -> pred) from all point pairs (scipy cdist)."""
    dist = cdist(_surface_points(pred, spacing), _surface_points(label, spacing))
    return dist.min(axis=1), dist.min(axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_surface_metrics_match_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(6, 16, size=3))
    spacing = tuple(rng.uniform(0.3, 2.5, size=3))
    pred, label = (ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5 for _ in range(2))
    if not pred.any() or not label.any():
        pred[0, 0, 0] = label[-1, -1, -1] = True
    d_pl, d_lp = _brute_force_distances(pred, label, spacing)
    pooled = np.concatenate([d_pl, d_lp])
    r = case_metrics(pred, label, spacing)
    assert r["hd95_mm"] == pytest.approx(np.percentile(pooled, 95), abs=1e-9)
    # Wang et al. 2020 Eq. 18: (sum over S of d(s, G) + sum over G of d(g, S)) / (|S| + |G|).
    assert r["assd_mm"] == pytest.approx((d_pl.sum() + d_lp.sum()) / (d_pl.size + d_lp.size), abs=1e-9)


def test_assd_is_the_pooled_mean_not_the_mean_of_directed_means():
    # A 3x3x3 prediction in the middle of an 11x11x11 lesion: 26 predicted surface voxels, all
    # exactly 4 mm from the lesion's faces, against 602 lesion surface voxels 4 to 6.9 mm away.
    label = box((13, 13, 13), (1, 1, 1), (12, 12, 12))
    pred = box((13, 13, 13), (5, 5, 5), (8, 8, 8))
    spacing = (1.0, 1.0, 1.0)
    d_pl, d_lp = surface_distances(pred, label, spacing)
    assert d_pl.size == 26 and d_lp.size == 11**3 - 9**3
    np.testing.assert_array_equal(d_pl, 4.0)
    bf_pl, bf_lp = _brute_force_distances(pred, label, spacing)
    np.testing.assert_allclose(np.sort(d_lp), np.sort(bf_lp), atol=1e-12)
    eq18 = (26 * 4.0 + bf_lp.sum()) / (26 + bf_lp.size)
    mean_of_means = (4.0 + bf_lp.mean()) / 2
    r = case_metrics(pred, label, spacing)
    assert r["assd_mm"] == pytest.approx(eq18, abs=1e-12)
    assert eq18 - mean_of_means > 0.4  # ~4.90 vs ~4.47 mm: the two conventions really differ here
    # panoptica (MedPy) reports the mean of the two directed means for the same masks.
    assert _panoptica_surface_reference(pred, label, spacing)[1] == pytest.approx(mean_of_means, abs=1e-12)


def _panoptica_lesion_reference(pred: np.ndarray, label: np.ndarray, threshold: float = 0.2) -> tuple[float, int, int]:
    """ISLES'24 ``eval_utils.compute_dice_f1_instance_difference``: (lesion F1, count difference, TP).

    The ISLES'24 evaluation uses ``NaiveThresholdMatching(matching_threshold=0.2)`` since 2025-12-16
    (panoptica's default 0.5 before).
    """
    panoptica = pytest.importorskip("panoptica")
    from panoptica.metrics import Metric

    # Same approximator and matcher as ISLES'24; the per-instance metrics are cut down to one
    # because rq and the instance counts do not depend on them (only the run time does).
    evaluator = panoptica.Panoptica_Evaluator(
        expected_input=panoptica.InputType.SEMANTIC,
        instance_approximator=panoptica.ConnectedComponentsInstanceApproximator(),
        instance_matcher=panoptica.NaiveThresholdMatching(matching_threshold=threshold),
        instance_metrics=[Metric.IOU],
        global_metrics=[Metric.DSC],
    )
    res = evaluator.evaluate(pred.astype(int), label.astype(int), verbose=False)["ungrouped"]
    if isinstance(res, tuple):  # panoptica < 2 returned (result, debug data)
        res = res[0]
    empty = res.n_ref_instances == 0 and res.n_pred_instances == 0
    return (1.0 if empty else res.rq), abs(res.n_ref_instances - res.n_pred_instances), int(res.tp)


def _panoptica_surface_reference(pred: np.ndarray, label: np.ndarray, spacing) -> tuple[float, float]:
    """panoptica's (MedPy-derived) HD95 and ASSD (the mean of the two directed mean distances)."""
    pytest.importorskip("panoptica")
    from panoptica.metrics import _average_symmetric_surface_distance, _compute_hausdorff_distance95

    return (
        _compute_hausdorff_distance95(label, pred, voxelspacing=spacing),
        _average_symmetric_surface_distance(label, pred, voxelspacing=spacing),
    )


def _assert_lesions_match_panoptica(pred: np.ndarray, label: np.ndarray, threshold: float, name: str = "") -> dict:
    f1, count_diff, tp = _panoptica_lesion_reference(pred, label, threshold)
    d = lesion_detection(pred, label, match_iou=threshold)
    assert d["f1"] == pytest.approx(f1, abs=1e-12), name
    assert (d["count_diff"], d["tp"]) == (count_diff, tp), name
    return d


def _crop(pred, label, margin=3):
    idx = np.argwhere(pred | label)
    lo, hi = np.maximum(idx.min(0) - margin, 0), idx.max(0) + margin + 1
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return pred[sl], label[sl]


def bars(*ranges: tuple[int, int]) -> np.ndarray:
    """Lesions as 6x6-voxel bars along axis 0 of a 48x10x10 volume, one per ``[start, stop)`` range."""
    m = np.zeros((48, 10, 10), dtype=bool)
    for a, b in ranges:
        m[a:b, 2:8, 2:8] = True
    return m


# name: (true lesions, predicted lesions, (TP, #pred, #true) at IoU 0.2, TP at IoU 0.5), bars along one
# axis, so every IoU is a ratio of lengths.
LESION_SCENARIOS = {
    "split": ([(2, 22)], [(2, 11), (13, 22)], (1, 2, 1), 0),  # halves 9/20 each
    "merged": ([(2, 10), (12, 20)], [(2, 20)], (1, 1, 2), 0),  # 8/18 each
    "shifted": ([(2, 12)], [(7, 17)], (1, 1, 1), 0),  # 5/15
    "missed": ([(2, 10), (20, 28)], [(2, 10)], (1, 1, 2), 1),
    "spurious": ([(2, 10)], [(2, 10), (20, 24)], (1, 2, 1), 1),
    "split+missed+spurious": ([(2, 22), (30, 36)], [(2, 11), (13, 22), (40, 44)], (1, 3, 2), 0),
    "merged+shifted": ([(2, 10), (12, 20), (28, 38)], [(2, 20), (33, 43)], (2, 2, 3), 0),
    "two partners, better one kept": ([(2, 12), (14, 18)], [(4, 18)], (1, 1, 2), 1),  # 8/16 and 4/14
    # Greedy by IoU, not an optimal assignment: P(6,18) takes L(2,12) (6/16) before it could take
    # L(14,20) (4/14), which leaves P(2,4) (2/10 with L(2,12)) unmatched: TP 1 where 2 were possible.
    "greedy, not optimal": ([(2, 12), (14, 20)], [(2, 4), (6, 18)], (1, 2, 2), 0),
}


@pytest.mark.parametrize("name", list(LESION_SCENARIOS))
def test_lesion_matching_agrees_with_panoptica_on_split_merged_shifted_missed_spurious(name):
    true_ranges, pred_ranges, (tp, n_pred, n_true), tp_half = LESION_SCENARIOS[name]
    label, pred = bars(*true_ranges), bars(*pred_ranges)
    d = _assert_lesions_match_panoptica(pred, label, 0.2, name)
    assert (d["tp"], d["n_pred"], d["n_label"]) == (tp, n_pred, n_true)
    assert d["f1"] == pytest.approx(tp / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_true - tp)))
    assert case_metrics(pred, label, (1.0, 1.0, 1.0))["lesion_f1"] == d["f1"]  # the default is 0.2
    # The original 2024 threshold is still available and still agrees with panoptica.
    assert _assert_lesions_match_panoptica(pred, label, 0.5, name)["tp"] == tp_half


def test_equal_iou_ties_are_broken_in_panoptica_label_order():
    # P1 overlaps two true lesions L1, L2 with exactly equal IoU (64/248); P2 overlaps only L2
    # (IoU 32/160 = 0.2). If P1 takes L1, P2 takes L2 (TP 2); if P1 takes L2, P2 is left over
    # (TP 1). panoptica visits equal-IoU pairs in (pred label, true label) order, with labels in
    # raster order, so mirroring the volume (which puts L2 first) changes the result.
    shape = (24, 8, 12)
    label = box(shape, (0, 2, 6), (10, 6, 10)) | box(shape, (12, 2, 1), (22, 6, 5))
    p1 = box(shape, (6, 2, 6), (10, 6, 10)) | box(shape, (12, 2, 1), (16, 6, 5)) | box(shape, (10, 2, 4), (12, 6, 7))
    pred = p1 | box(shape, (18, 2, 1), (22, 4, 5))
    assert n_lesions(label) == n_lesions(pred) == 2
    assert _assert_lesions_match_panoptica(pred, label, 0.2)["tp"] == 2
    mirrored = _assert_lesions_match_panoptica(pred[::-1].copy(), label[::-1].copy(), 0.2)
    assert mirrored["tp"] == 1 and mirrored["f1"] == 0.5


@needs_real
@pytest.mark.parametrize("fixture", ["m0014", "m0158", "m0009"])
def test_agrees_with_panoptica_isles24_reference_on_real_masks(fixture, request):
    mask, _, spacing = request.getfixturevalue(fixture)
    # Lesion counts and matches do not change when both masks are cropped to a box around them
    # (3-voxel margin, enough for the 1-voxel perturbations); cropping only saves time.
    _, lab = _crop(mask, mask)
    x = np.arange(lab.shape[0])[:, None, None]
    variants = {
        "shift_z1": np.roll(lab, 1, axis=2),
        "dilated": ndimage.binary_dilation(lab),
        "eroded": ndimage.binary_erosion(lab),
        "half": lab & (x < lab.shape[0] // 2),
        "cut_in_slabs": lab & (x % 8 != 0),  # splits the larger lesions into pieces
    }
    for name, pred in variants.items():
        _assert_lesions_match_panoptica(pred, lab, 0.2, name)
    for name in ("half", "cut_in_slabs"):  # the others keep every IoU far above 0.5
        _assert_lesions_match_panoptica(variants[name], lab, 0.5, f"{name} @ 0.5")
    # All metrics through case_metrics (full volume) for one variant, surface metrics included.
    # A shift keeps the surface size (|S| = |G|), where Eq. 18's pooled ASSD equals panoptica's
    # mean of the two directed means.
    pred = np.roll(mask, 1, axis=2)
    p, lab = _crop(pred, mask)
    f1, count_diff, _ = _panoptica_lesion_reference(p, lab)
    hd95, assd = _panoptica_surface_reference(p, lab, spacing)
    r = case_metrics(pred, mask, spacing)
    assert r["lesion_f1"] == pytest.approx(f1, abs=1e-12)
    assert r["lesion_count_diff"] == count_diff
    assert r["hd95_mm"] == pytest.approx(hd95, abs=1e-9)
    assert r["assd_mm"] == pytest.approx(assd, abs=1e-9)


def _random_boxes(seed: int, shape=(40, 40, 10)) -> tuple[np.ndarray, np.ndarray]:
    """(pred, label): random box lesions; each predicted near its true lesion (shifted, resized,
    often split near its middle by a one-voxel slab), plus spurious boxes. Overlapping boxes merge."""
    rng = np.random.default_rng(seed)
    label, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    top = np.array(shape)
    for _ in range(rng.integers(3, 7)):
        lo = rng.integers(0, top - 4)
        hi = np.minimum(lo + rng.integers(3, 12, 3), top)
        label[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        plo = np.clip(lo + rng.integers(-1, 2, 3), 0, top - 1)
        phi = np.clip(hi + rng.integers(-2, 3, 3), plo + 1, top)
        found = [slice(a, b) for a, b in zip(plo, phi)]
        pred[tuple(found)] = True
        axis = int(np.argmax(phi - plo))
        if rng.random() < 0.7 and phi[axis] - plo[axis] >= 5:
            cut = (plo[axis] + phi[axis]) // 2 + int(rng.integers(-1, 2))
            found[axis] = slice(cut, cut + 1)
            pred[tuple(found)] = False
    for _ in range(rng.integers(0, 3)):
        lo = rng.integers(0, top - 3)
        pred[tuple(slice(a, b) for a, b in zip(lo, np.minimum(lo + rng.integers(2, 6, 3), top)))] = True
    return pred, label


def _has_lesion_with_two_partners(pred: np.ndarray, label: np.ndarray, threshold: float) -> bool:
    """Some lesion reaches two partners at IoU >= threshold (scipy labels, one mask per lesion)."""
    lp, n_p = ndimage.label(pred, structure=FULL_26)
    ll, n_l = ndimage.label(label, structure=FULL_26)
    pairs = []
    for i in range(1, n_p + 1):
        a = lp == i
        for j in range(1, n_l + 1):
            b = ll == j
            inter = np.count_nonzero(a & b)
            if inter and inter / np.count_nonzero(a | b) >= threshold:
                pairs.append((i, j))
    return len({i for i, _ in pairs}) < len(pairs) or len({j for _, j in pairs}) < len(pairs)


def test_lesion_matching_agrees_with_panoptica_on_random_box_lesions():
    conflicts = 0
    for seed in range(12):
        pred, label = _random_boxes(seed)
        for threshold in (0.2, 0.5):
            _assert_lesions_match_panoptica(pred, label, threshold, f"seed {seed} @ {threshold}")
        conflicts += _has_lesion_with_two_partners(pred, label, 0.2)
    assert conflicts >= 4  # the one-to-one rule was exercised, not only isolated pairs


@pytest.mark.parametrize("seed", range(4))
def test_lesion_and_surface_metrics_agree_with_panoptica_on_random_blobs(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (30, 30, 12)
    label = ndimage.gaussian_filter(rng.random(shape), 1.2) > 0.53
    pred = ndimage.gaussian_filter(rng.random(shape), 1.2) > 0.53
    pred |= ndimage.binary_erosion(label)  # some true lesions are found, some are not
    spacing = (0.5, 0.5, 2.0)
    for threshold in (0.2, 0.5):
        _assert_lesions_match_panoptica(pred, label, threshold)
    f1, count_diff, _ = _panoptica_lesion_reference(pred, label)
    hd95, medpy_assd = _panoptica_surface_reference(pred, label, spacing)
    r = case_metrics(pred, label, spacing)
    assert r["lesion_f1"] == pytest.approx(f1, abs=1e-12)
    assert r["lesion_count_diff"] == count_diff
    assert r["hd95_mm"] == pytest.approx(hd95, abs=1e-9)
    # Same surface distances as panoptica, pooled as Wang et al. Eq. 18; the surfaces differ in
    # size here, so panoptica's mean of the two directed means is a different number.
    d_pl, d_lp = surface_distances(pred, label, spacing)
    assert d_pl.size != d_lp.size
    assert medpy_assd == pytest.approx((d_pl.mean() + d_lp.mean()) / 2, abs=1e-9)
    assert r["assd_mm"] == pytest.approx(np.concatenate([d_pl, d_lp]).mean(), abs=1e-9)
    assert abs(r["assd_mm"] - medpy_assd) > 1e-3


# ---------------------------------------------------------------------------------- validation


def test_bad_inputs_raise_clear_errors():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(DataError, match="differs from label shape"):
        case_metrics(a, np.zeros((4, 4, 5), bool), (1, 1, 1))
    with pytest.raises(DataError, match="other than 0 and 1"):
        case_metrics(np.full((4, 4, 4), 0.7), a, (1, 1, 1))
    with pytest.raises(DataError, match="3 positive voxel sizes"):
        case_metrics(a, a, (1.0, 1.0))
    with pytest.raises(DataError, match="3 positive voxel sizes"):
        case_metrics(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(DataError, match="3D"):
        case_metrics(np.zeros((4, 4), bool), np.zeros((4, 4), bool), (1, 1))
    for bad in (1.5, -0.1, float("nan"), "high"):
        with pytest.raises(DataError, match="match_iou"):
            case_metrics(a, a, (1, 1, 1), match_iou=bad)
        with pytest.raises(DataError, match="match_iou"):
            lesion_detection(a, a, match_iou=bad)
    r = case_metrics(a.astype(np.uint8), a.astype(np.float32), (1, 1, 1))  # 0/1 numbers are fine
    assert r["dice"] == 1.0


@needs_real
def test_metrics_do_not_depend_on_the_field_of_view(m0009):
    # case_metrics works on a box around both masks; the result must be the same as on the
    # whole volume cropped tightly or padded with empty space on every side.
    mask, _, spacing = m0009
    pred = ndimage.binary_dilation(np.roll(mask, 2, axis=2))
    full = case_metrics(pred, mask, spacing)
    p, lab = _crop(pred, mask, margin=1)
    assert case_metrics(p, lab, spacing) == full
    p, lab = (np.pad(m, ((3, 0), (0, 4), (2, 2))) for m in _crop(pred, mask, margin=0))
    assert case_metrics(p, lab, spacing) == full
