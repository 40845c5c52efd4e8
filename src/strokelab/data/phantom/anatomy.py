"""The head: geometry and affine, skull, CSF, grey and white matter, deep nuclei, ventricles, arterial
territories, and the partial-volume fractions of the large vessels.

Coordinates: the gantry frame (mm; x right, y anterior, z superior) holds the voxel centres; the nominal
head frame (mm of a standard adult head, origin at the brain centre) is where anatomy is defined. A field
of view smaller than a head shrinks the head (factor ``k``) so that it still fits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokelab.data.phantom.config import PhantomConfig

TISSUE_LABELS = {0: "air", 1: "soft tissue", 2: "bone", 3: "csf", 4: "grey matter", 5: "white matter"}
AIR, SOFT, BONE, CSF, GM, WM = range(6)
TERRITORY_LABELS = {1: "L-ACA", 2: "L-MCA", 3: "L-PCA", 4: "R-ACA", 5: "R-MCA", 6: "R-PCA"}
_TERRITORIES = ("ACA", "MCA", "PCA")

# Nominal adult head (mm, head frame: x right, y anterior, z superior; origin at the brain centre).
_HEAD_SEMI = np.array([72.0, 92.0, 80.0])
_HEAD_CENTRE = np.array([0.0, -4.0, -8.0])
_T_SCALP, _T_SKULL, _T_CSF, _T_GM = 5.0, 7.0, 2.0, 3.2
_BRAIN_CENTRE_Z_GANTRY = -8.0  # where the brain centre sits in the gantry frame: vertex near the top slice


# ==================================================================================================
# Geometry helpers
# ==================================================================================================
def _rot_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _rot_y(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _affine(cfg: PhantomConfig, tilt_deg: float) -> np.ndarray:
    """Voxel -> RAS mm. Voxel axes are L, A, S (x flipped); the gantry tilt rotates about x.

    Column norms equal the spacing; the grid centre maps to the world origin (head centred).
    """
    m = _rot_x(tilt_deg) @ np.diag([-cfg.spacing[0], cfg.spacing[1], cfg.spacing[2]])
    centre = (np.array(cfg.shape, dtype=float) - 1.0) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = -m @ centre
    return aff


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float, spacing) -> np.ndarray:
    """Zero-mean, unit-SD Gaussian random field with correlation length ~sigma_mm (float32).

    Wide kernels are computed on a coarser grid and linearly upsampled (same statistics, much faster).
    """
    sig = np.array([sigma_mm / s for s in spacing])
    factor = np.maximum(1, np.floor(sig / 2.0)).astype(int)
    coarse = tuple(int(np.ceil(n / f)) + 2 for n, f in zip(shape, factor))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sig / factor, mode="wrap", truncate=3.0)
    for axis, (n, f) in enumerate(zip(shape, factor)):
        if f == 1:
            field = np.take(field, np.arange(n), axis=axis)
            continue
        pos = np.arange(n) / f + 0.5
        i0 = np.floor(pos).astype(int)
        w = (pos - i0).astype(np.float32)
        wshape = [1] * field.ndim
        wshape[axis] = n
        w = w.reshape(wshape)
        field = np.take(field, i0, axis=axis) * (1 - w) + np.take(field, i0 + 1, axis=axis) * w
    field = field - field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _gauss(x: np.ndarray, sigma_vox) -> np.ndarray:
    return ndimage.gaussian_filter(x.astype(np.float32, copy=False), sigma_vox, mode="nearest", truncate=3.0)


def _segment_distance(px, py, pz, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2)


# ==================================================================================================
# The head
# ==================================================================================================
@dataclass
class Head:
    """One case's anatomy on its grid (arrays of the grid's shape unless stated)."""

    shape: tuple[int, int, int]
    spacing: np.ndarray  # mm, float64
    affine: np.ndarray
    k: float  # head scale (1: adult-sized)
    vox_xy: float  # in-plane voxel size in nominal (head-frame) mm
    X: np.ndarray  # nominal head-frame coordinates (mm) of the voxel centres, float32
    Y: np.ndarray
    Z: np.ndarray
    semi: np.ndarray  # the head's semi-axes (mm)
    depth: np.ndarray  # depth below the scalp surface (mm, < 0: air)
    t_scalp: float
    t_skull: float
    inner: float  # depth of the inner table (scalp + skull)
    mid0: float  # the midline's x offset (mm)
    tissue: np.ndarray  # uint8 codes of TISSUE_LABELS
    brain: np.ndarray  # grey or white matter
    territory_map: np.ndarray  # uint8 codes of TERRITORY_LABELS inside the brain, 0 elsewhere


def build_head(rng: np.random.Generator, cfg: PhantomConfig, tilt: float, age: float) -> Head:
    """Pose the head in the gantry and segment it into tissues and arterial territories."""
    shape, spacing = cfg.shape, np.array(cfg.spacing)

    # ---------------------------------------------------------------- geometry
    affine = _affine(cfg, tilt)
    fov = np.array(shape) * spacing
    # Heads are adult-sized in mm; a smaller field of view shrinks the head so that it still fits.
    k = float(min(1.0, 0.92 * fov[0] / (2 * _HEAD_SEMI[0]), 0.92 * fov[1] / (2 * _HEAD_SEMI[1])))
    vox_xy = float(min(spacing[:2])) / k  # in-plane voxel size in nominal (head-frame) mm
    # Gantry coordinates (mm) of voxel centres: x right, y anterior, z superior (before the tilt).
    ctr = (np.array(shape) - 1) / 2.0
    gx = (-(np.arange(shape[0]) - ctr[0]) * spacing[0]).astype(np.float32)
    gy = ((np.arange(shape[1]) - ctr[1]) * spacing[1]).astype(np.float32)
    gz = ((np.arange(shape[2]) - ctr[2]) * spacing[2]).astype(np.float32)
    # Head pose inside the gantry: small yaw/roll and offset; the tilt itself is in the affine.
    pose = _rot_z(rng.uniform(-4, 4)) @ _rot_y(rng.uniform(-2.5, 2.5))
    offset = np.array([rng.normal(0, 2.5), rng.normal(0, 3.0), _BRAIN_CENTRE_Z_GANTRY * k + rng.normal(0, 2.0)])
    rt = pose.T / k  # gantry -> nominal head frame (mm of a standard head)
    X = (
        rt[0, 0] * (gx[:, None, None] - offset[0])
        + rt[0, 1] * (gy[None, :, None] - offset[1])
        + rt[0, 2] * (gz[None, None, :] - offset[2])
    ).astype(np.float32)
    Y = (
        rt[1, 0] * (gx[:, None, None] - offset[0])
        + rt[1, 1] * (gy[None, :, None] - offset[1])
        + rt[1, 2] * (gz[None, None, :] - offset[2])
    ).astype(np.float32)
    Z = (
        rt[2, 0] * (gx[:, None, None] - offset[0])
        + rt[2, 1] * (gy[None, :, None] - offset[1])
        + rt[2, 2] * (gz[None, None, :] - offset[2])
    ).astype(np.float32)

    # ---------------------------------------------------------------- anatomy
    semi = _HEAD_SEMI * np.exp(rng.normal(0, 0.035, 3))
    hx, hy, hz = X - _HEAD_CENTRE[0], Y - _HEAD_CENTRE[1], Z - _HEAD_CENTRE[2]
    q = np.sqrt((hx / semi[0]) ** 2 + (hy / semi[1]) ** 2 + (hz / semi[2]) ** 2) + 1e-6
    r = np.sqrt(hx**2 + hy**2 + hz**2)
    # Smooth per-case shape variation: low-order polynomial of the direction (a few % of the radius),
    # plus a narrower forehead (egg shape).
    ux, uy, uz = hx / (semi[0] * q), hy / (semi[1] * q), hz / (semi[2] * q)
    c = rng.normal(0, 0.02, 9)
    delta = (
        c[0] * ux
        + c[1] * uy
        + c[2] * uz
        + c[3] * ux * uy
        + c[4] * uy * uz
        + c[5] * ux * uz
        + c[6] * (ux**2 - uy**2)
        + c[7] * (2 * uz**2 - ux**2 - uy**2)
        + c[8] * ux * uy * uz
        - 0.04 * np.clip(uy, 0, None) ** 2
    )
    # Depth (mm) below the scalp surface, along the ray from the head centre (< 0: air).
    depth = r * ((1.0 + delta) / q - 1.0)
    del ux, uy, uz, hx, hy, hz, q, r

    t_scalp = max(_T_SCALP, 0.8 * vox_xy)
    t_skull = max(_T_SKULL * rng.uniform(0.85, 1.15), 1.2 * vox_xy)
    atrophy = np.clip((age - 50) / 40, 0, 1)  # older brains: wider sulci and ventricles
    t_csf = max(_T_CSF * (1 + 0.8 * atrophy), 0.5 * vox_xy)
    inner = t_scalp + t_skull
    db = depth - inner - t_csf  # depth below the brain surface
    floor_z = -48.0 + 0.30 * Y + rng.normal(0, 2.0)  # skull base (anterior fossa higher)
    above_floor = Z - floor_z

    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[depth >= 0] = SOFT
    skull = (depth >= t_scalp) & (depth < inner)
    tissue[skull] = BONE
    intracranial = depth >= inner
    tissue[intracranial & (above_floor < 0)] = SOFT
    skull_base_plate = intracranial & (above_floor < 0) & (above_floor > -max(8.0, 1.2 * vox_xy))
    tissue[skull_base_plate] = BONE
    tissue[intracranial & (above_floor >= 0)] = CSF
    # Depth into the brain from its nearest outer surface (convexity or skull base).
    dbrain = np.minimum(db, above_floor - t_csf)
    brain_region = intracranial & (dbrain >= 0)
    tissue[brain_region] = WM

    # Cortex: a grey ribbon whose inner boundary dips where a folding field is high (sulcal fundi),
    # with CSF-filled sulci at the highest folds (wider with age).
    fold = _smooth_field(rng, shape, 3.0 * k, spacing)
    t_gm = np.maximum(_T_GM + 6.0 * np.clip(fold + 0.2, 0, None), 0.8 * vox_xy)
    tissue[brain_region & (dbrain < t_gm)] = GM
    sulc_thr = 1.1 - 0.5 * atrophy
    tissue[brain_region & (fold > sulc_thr) & (dbrain < 5.0 * (fold - sulc_thr) + 0.5 * vox_xy * (fold > sulc_thr + 0.3))] = CSF

    # Midline and interhemispheric fissure (CSF lined by medial cortex), down to the callosum.
    mid0 = float(rng.normal(0, 1.0))
    mid = mid0 + float(rng.normal(0, 0.02)) * Y  # slightly oblique midline plane
    dmid = np.abs(X - mid)
    fissure_zone = brain_region & ((Z > 22) | (np.abs(Y) > 40))
    half = max(0.8, 0.55 * vox_xy)
    tissue[fissure_zone & (dmid < half + t_gm)] = GM
    tissue[fissure_zone & (dmid < half)] = CSF
    # Sylvian fissure: a shallow lateral CSF cleft lined by insular / opercular cortex.
    syl = brain_region & (np.abs(X) > 32) & (Y > -12) & (Y < 36) & (db < 26)
    syl_d = np.abs(Z - (-14 + 0.15 * Y))
    tissue[syl & (syl_d < 1.2 + t_gm)] = GM
    tissue[syl & (syl_d < max(1.2, 0.5 * vox_xy))] = CSF

    def ellipsoid(cx, cy, cz, ax, ay, az) -> np.ndarray:
        return ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 + ((Z - cz) / az) ** 2 <= 1.0

    # Deep grey nuclei (caudate, putamen, thalamus) and the ventricular system (size grows with age).
    vf = float(np.clip(0.75 + 0.5 * atrophy + rng.normal(0, 0.08), 0.6, 1.5))
    for s in (-1, 1):
        m = mid0
        deep = (
            ellipsoid(m + s * 13, 15, 6, 5, 9, 8)
            | ellipsoid(m + s * 23, 4, -6, 5, 14, 10)
            | ellipsoid(m + s * 9, -12, -4, 8, 11, 8)
        )
        tissue[brain_region & deep] = GM
    ventricles = np.zeros(shape, dtype=bool)
    for s in (-1, 1):
        m = mid0
        ventricles |= ellipsoid(m + s * (6 + 2 * vf), 0, 12, 4.5 * vf, 24, 6.5 * vf)  # bodies
        ventricles |= ellipsoid(m + s * 8, 20, 6, 4.5 * vf, 9, 7 * vf)  # frontal horns
        ventricles |= ellipsoid(m + s * 14, -26, 4, 5.5 * vf, 10, 8 * vf)  # atria / occipital horns
        ventricles |= ellipsoid(m + s * 30, -4, -22, 2.5 * vf, 12, 3 * vf)  # temporal horns
    ventricles |= ellipsoid(mid0, -2, -8, max(1.2 * vf, 0.5 * vox_xy), 12, 8)  # third ventricle
    tissue[brain_region & ventricles] = CSF
    del ventricles
    brain = (tissue == GM) | (tissue == WM)
    right = X > mid

    # Arterial territories per hemisphere, by position with smoothly perturbed borders:
    # PCA occipital + inferomedial temporal + thalamus; ACA paramedian strip widening to the vertex; MCA rest.
    bnoise = 5.0 * _smooth_field(rng, shape, 10.0 * k, spacing)
    zc = np.clip(Z - 5, 0, None)
    pca = (
        (Y + bnoise < -48 - 0.35 * np.clip(Z, 0, None))
        | ((Z + 0.5 * bnoise < -20) & (Y < -8) & (dmid < 40))
        | (ellipsoid(mid0 - 9, -12, -4, 8, 11, 8) | ellipsoid(mid0 + 9, -12, -4, 8, 11, 8))
    )
    aca = ~pca & (dmid + bnoise < 14 + 0.45 * zc) & (Y > -46)
    terr_kind = np.where(pca, 3, np.where(aca, 1, 2)).astype(np.uint8)  # 1 ACA, 2 MCA, 3 PCA
    territory_map = np.where(brain, terr_kind + 3 * right.astype(np.uint8), 0).astype(np.uint8)
    del pca, aca, zc, bnoise

    return Head(
        shape=shape,
        spacing=spacing,
        affine=affine,
        k=k,
        vox_xy=vox_xy,
        X=X,
        Y=Y,
        Z=Z,
        semi=semi,
        depth=depth,
        t_scalp=t_scalp,
        t_skull=t_skull,
        inner=inner,
        mid0=mid0,
        tissue=tissue,
        brain=brain,
        territory_map=territory_map,
    )


# ==================================================================================================
# Large vessels
# ==================================================================================================
def _vessel_tree(side_sign: float) -> dict[str, list[np.ndarray]]:
    """Centre lines (head frame, nominal mm) of one hemisphere's major arteries, by territory.

    ICA up into the circle of Willis; MCA M1 laterally into the Sylvian fissure, then M2 up and back;
    ACA A1 medially, A2 up around the genu; PCA around the midbrain to the occipital lobe.
    """
    s = side_sign
    return {
        "ICA": [np.array(p) for p in ([s * 16, 8, -62], [s * 17, 10, -44], [s * 15, 8, -32])],
        "MCA": [
            np.array(p)
            for p in (
                [s * 15, 8, -32],
                [s * 28, 10, -30],
                [s * 38, 8, -26],
                [s * 44, 0, -16],
                [s * 48, -14, -4],
                [s * 50, -28, 8],
            )
        ],
        "ACA": [
            np.array(p)
            for p in (
                [s * 15, 8, -32],
                [s * 3, 14, -30],
                [s * 2.5, 26, -16],
                [s * 2.5, 32, 6],
                [s * 2.5, 14, 30],
                [s * 2.5, -14, 38],
            )
        ],
        "PCA": [
            np.array(p)
            for p in (
                [0, -12, -36],
                [s * 10, -14, -34],
                [s * 22, -28, -28],
                [s * 20, -48, -20],
                [s * 12, -64, -10],
            )
        ],
    }


def vessel_fractions(head: Head, kind: str, side: str, territory: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Partial-volume fractions of the large vessels at the head's voxels (flat indices, ``tissue != AIR``):
    normally filled arteries, occluded (collateral-filled) arteries distal to the clot, the clot itself
    (a "typical" case's occlusion of ``territory`` on ``side``), and the dural sinuses (venous outflow)."""
    X, Y, Z, vox_xy, semi, inner, mid0 = head.X, head.Y, head.Z, head.vox_xy, head.semi, head.inner, head.mid0
    bone = head.tissue == BONE
    flat = np.flatnonzero(head.tissue != AIR)
    px, py, pz = X.ravel()[flat], Y.ravel()[flat], Z.ravel()[flat]
    frac = {
        "artery": np.zeros(flat.size, np.float32),
        "occluded": np.zeros(flat.size, np.float32),
        "clot": np.zeros(flat.size, np.float32),
        "vein": np.zeros(flat.size, np.float32),
    }

    def draw(points: list[np.ndarray], radius: float, key: str) -> None:
        for a, b in itertools.pairwise(points):
            lo = np.minimum(a, b) - radius - 2 * vox_xy
            hi = np.maximum(a, b) + radius + 2 * vox_xy
            sel = np.flatnonzero((px > lo[0]) & (px < hi[0]) & (py > lo[1]) & (py < hi[1]) & (pz > lo[2]) & (pz < hi[2]))
            if sel.size:
                d = _segment_distance(px[sel], py[sel], pz[sel], a, b)
                f = np.clip(0.5 + (radius - d) / vox_xy, 0, 1).astype(np.float32)
                frac[key][sel] = np.maximum(frac[key][sel], f)

    radii = {"ICA": 2.2, "MCA": 1.5, "ACA": 1.1, "PCA": 1.1}
    for sgn, sd in ((-1.0, "L"), (1.0, "R")):
        tree = _vessel_tree(sgn)
        for name, pts in tree.items():
            pts = [p + np.array([mid0, 0.0, 0.0]) for p in pts]
            if kind == "typical" and sd == side and name == territory:
                # Clot in the first segment; distal segments fill late and faintly through collaterals.
                draw(pts[:2], radii[name], "clot")
                draw(pts[1:], radii[name] * 0.9, "occluded")
            else:
                draw(pts, radii[name], "artery")
    draw([np.array([0.0, -12, -60]), np.array([0.0, -12, -36])], 1.6, "artery")  # basilar
    # Superior sagittal sinus along the inner table in the midsagittal plane, then the straight sinus.
    ang = np.deg2rad(np.linspace(40, 215, 9))
    rin = semi[1:] - inner - 3.0
    sss = [np.array([0.0, _HEAD_CENTRE[1] + rin[0] * np.cos(a), _HEAD_CENTRE[2] + rin[1] * np.sin(a)]) for a in ang]
    draw(sss, 3.0, "vein")
    draw([sss[-1], np.array([0.0, -30.0, 10.0])], 2.0, "vein")
    # Only the vessels inside the skull (not bone) get blood; the clot gets its own density.
    soft_or_brain = ~bone.ravel()[flat]
    for key in frac:
        frac[key] *= soft_or_brain
    return flat, frac
