"""Command line: CT perfusion maps from a 4D CTP NIfTI.

    python -m strokelab.perfusion CTP.nii.gz --out DIR [--aif-mask MASK.nii.gz]
        [--method bcsvd|ssvd|osvd|tikhonov] [--threshold X] [--dt SECONDS] [--smooth-s S]
        [--spatial-sigma-mm MM] [--vof]

Writes ``DIR/<stem>_{cbf,cbv,mtt,tmax,ttp}.nii.gz`` (3D float32, the CTP's affine; CBF ml/100g/min, CBV
ml/100g, MTT/Tmax/TTP s) and the AIF used as ``DIR/<stem>_aif.csv`` (time_s, aif_dhu) and
``DIR/<stem>_aif.json`` (AIF voxels, baseline frames, settings). All outputs are renamed into place only
once every one of them is written. A user error (missing or truncated file, 3D input, AIF mask of the wrong
shape or empty, no frame interval in the header and no ``--dt``) ends with one line
``error: FILE: problem (fix)`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from strokelab.errors import StrokelabError
from strokelab.perfusion.deconvolution import METHODS
from strokelab.perfusion.derive import DERIVED_MAP_SETTINGS
from strokelab.perfusion.maps import PerfusionSettings, compute_maps, load_ctp, load_mask, output_stem, write_outputs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other user error
        print(f"error: command line: {message} (see python -m strokelab.perfusion --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m strokelab.perfusion",
        description="CBF, CBV, MTT, Tmax and TTP maps from a raw 4D CT perfusion series (HU, time last) by deconvolution.",
    )
    parser.add_argument("ctp", help="4D CTP NIfTI (HU, time last; frame interval in the header's zooms[3] or --dt)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--aif-mask", help="3D mask (> 0.5) of arterial voxels on the CTP grid; default: automatic AIF")
    parser.add_argument("--method", choices=METHODS, default="bcsvd", help="deconvolution (default bcsvd)")
    parser.add_argument(
        "--threshold",
        type=float,
        help="the method's regularisation: truncation for ssvd (0.2) and bcsvd (0.1), OI limit for osvd (0.035), "
        "lambda relative to the largest singular value for tikhonov (0.1)",
    )
    parser.add_argument("--dt", type=float, help="frame interval in s (overrides the header)")
    parser.add_argument(
        "--smooth-s",
        type=float,
        default=DERIVED_MAP_SETTINGS.smoothing_sigma_s,
        help=f"Gaussian temporal smoothing SD in s (default {DERIVED_MAP_SETTINGS.smoothing_sigma_s:g}; 0: none)",
    )
    parser.add_argument(
        "--spatial-sigma-mm",
        type=float,
        default=DERIVED_MAP_SETTINGS.spatial_sigma_mm,
        help=f"in-plane Gaussian smoothing SD in mm inside the brain (default {DERIVED_MAP_SETTINGS.spatial_sigma_mm:g}, "
        "as the phantom's and predict.py's maps; 0: none)",
    )
    parser.add_argument("--vof", action="store_true", help="scale the AIF to the area of the venous output function")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        base = PerfusionSettings(smoothing_sigma_s=args.smooth_s, spatial_sigma_mm=args.spatial_sigma_mm, vof_scaling=args.vof)
        settings = base.with_method(args.method, args.threshold)
        series, img, dt = load_ctp(args.ctp, args.dt)
        aif_mask = load_mask(args.aif_mask, series.shape[:3]) if args.aif_mask else None
        result = compute_maps(
            series,
            dt,
            settings,
            aif_mask=aif_mask,
            spacing=tuple(float(z) for z in img.header.get_zooms()[:3]),
            source=str(args.ctp),
            aif_source=str(args.aif_mask) if args.aif_mask else "AIF mask",
        )
        del series
        stem = output_stem(args.ctp)
        try:
            paths = write_outputs(result, img, args.out, stem)
        except OSError as exc:
            raise StrokelabError(
                args.out, f"cannot write the outputs ({exc.strerror or type(exc).__name__})", "check the folder"
            ) from None
    except StrokelabError as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    print(
        f"{args.ctp}: {settings.deconvolution.method} (threshold {settings.deconvolution.threshold:g}), dt {dt:g} s, "
        f"{result.baseline_frames} baseline frames, {int(result.brain.sum())} brain voxels, AIF of "
        f"{len(result.aif_voxels) or 'a given curve'} voxels peaking at {result.aif.max():.0f} HU"
        + (f", scaled x{result.aif_scale:.2f} to the VOF" if result.vof is not None else "")
    )
    print(f"wrote {len(paths)} files to {args.out} ({', '.join(p.name for p in paths)}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
