"""Preview what preprocessing does to a case: the TUM project's Fig. 3.1 (``shared/seeds/000``, §3.3), per input.

python -m strokelab.data.preview_preprocessing INPUT [--case ID] [--out FILE.png] [--slice Z] [OVERRIDES ...]

INPUT is a data root (ISLES'24 or ISLES'18; ``--case`` picks the case, else the first) or one case folder.
OVERRIDES are those of the ``train.py`` command whose preprocessing you want to see (``data=isles24``,
``data.preprocess.zscore_region=all``, ``model=pseudo_dwi``, ...): the config is composed from ``conf/train.yaml``
as that command composes it, and the images shown are the model's inputs (``model.inputs``; ``data.modalities``
for the threshold baseline). One row per input: the original | the normalised image | original - normalised on
one axial slice (the one with the most lesion; the middle one without a label; ``--slice``), and the histograms
of both volumes. Both images come from :func:`strokelab.data.preprocess.preprocess_loaded`, the function the
data module caches: the normalised one with the configured settings (what the network sees), the original with
the intensity steps switched off (no clipping, no normalisation, no smoothing), so both lie on the training grid
(resampled to ``data.preprocess.spacing`` and cropped to the head) and their difference is the intensity
transform alone. A multi-channel input (a CTP's frames) shows its first channel and the histograms of all.

The command line is argparse with Hydra overrides after it, not a Hydra entry point: it inspects one case like
``python -m strokelab.data.check`` (no run folder, no log), but the preprocessing must be the one a training
command composes. A bad input, a missing case, a bad override or a broken file ends in one ``error:`` line,
exit code 2. Nothing is written to the preprocessing cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from strokelab.errors import ConfigError, DataError, StrokelabError

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def compose_config(overrides: list[str]):
    """``conf/train.yaml`` composed with ``overrides``, as ``train.py`` would (one-line ConfigError if it fails)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from strokelab.config_check import composition_error_line
    from strokelab.entry import register_resolvers

    if not (CONF_DIR / "train.yaml").is_file():
        raise ConfigError(str(CONF_DIR), "holds no train.yaml", "run the command from a strokelab checkout (pip install -e .)")
    register_resolvers()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(None, composition_error_line(err)) from None


def preview_inputs(cfg) -> list[str]:
    """The images a training run with ``cfg`` serves its model: ``model.inputs``, else ``data.modalities``."""
    from omegaconf import OmegaConf

    inputs = OmegaConf.select(cfg, "model.inputs", default=None) or OmegaConf.select(cfg, "data.modalities", default=None)
    if not inputs:
        raise ConfigError("model.inputs", "is empty, and so is data.modalities", "name the inputs: data.modalities=[cbf,tmax]")
    return [str(m) for m in inputs]


def find_case(input_path: str | Path, case_id: str | None, modalities: list[str]):
    """The case to preview: the case folder given, or ``case_id`` (else the first case) of a data root."""
    from strokelab.data.layouts import case_ids, discover, resolve_input

    root, ids = resolve_input(input_path)
    available = case_ids(root) if ids is None else ids
    if case_id is not None:
        if case_id not in available:
            shown = ", ".join(available[:5]) + (" ..." if len(available) > 5 else "")
            raise DataError(root, f"has no case '{case_id}' (cases: {shown or 'none'})", "give --case one of its case ids")
        available = [case_id]
    if not available:
        raise DataError(root, "holds no case", "point to a data root with cases, or to one case folder")
    case = discover(root, modalities, with_label=True, ids=available[:1])[0]
    if case.label is not None and not Path(case.label).exists():
        case = dataclasses.replace(case, label=None)
    return case


def preview_rows(case, prep, inputs: list[str], slice_index: int | None = None) -> tuple[list[dict], int]:
    """The rows of :func:`strokelab.previews.render_preprocessing` for ``case`` and the slice shown (see the
    module docstring)."""
    from strokelab.data.check import load_case
    from strokelab.data.preprocess import Serve, preprocess_loaded
    from strokelab.previews import lesion_slice

    loaded = load_case(case, prep.nan_policy, prep.affine_tol_mm, prep.max_missing_frames)
    serve = Serve.make(inputs, ("label",) if loaded.label is not None else ())
    normalised = preprocess_loaded(loaded, prep, serve)
    raw = dataclasses.replace(prep, normalize="none", clip={}, clip_percentiles=None, series_smooth_mm=0.0)
    original = preprocess_loaded(loaded, raw, serve)
    depth = int(normalised["images"][inputs[0]].shape[-1])
    if slice_index is None:
        label = normalised["images"]["label"][0].numpy() if "label" in normalised["images"] else None
        slice_index = lesion_slice(label, depth)
    elif not 0 <= slice_index < depth:
        raise ConfigError("--slice", f"is {slice_index}, outside the {depth} slices of the training grid", f"give 0..{depth - 1}")
    rows = []
    for m in normalised["inputs"]:
        before, after = original["images"][m].numpy(), normalised["images"][m].numpy()
        channels = f" (channel 1 of {after.shape[0]})" if after.shape[0] > 1 else ""
        rows.append(
            {
                "name": m + channels,
                "original": before[0, ..., slice_index],
                "normalised": after[0, ..., slice_index],
                "original_values": before,
                "normalised_values": after,
            }
        )
    return rows, slice_index


def preview(input_path: str | Path, out: str | Path | None, case_id: str | None, overrides: list[str], slice_index: int | None):
    """Compose the config, preprocess the case both ways and write the figure; returns its path."""
    from strokelab.data.preprocess import Preprocessing
    from strokelab.previews import render_preprocessing, save_png

    cfg = compose_config(overrides)
    prep = Preprocessing.from_config(cfg.data.preprocess)
    inputs = preview_inputs(cfg)
    case = find_case(input_path, case_id, inputs)
    rows, z = preview_rows(case, prep, inputs, slice_index)
    spacing = "x".join("case's" if s is None else f"{s:g}" for s in prep.spacing)
    how = f"{prep.normalize} over {prep.zscore_region}" if prep.normalize == "zscore" else prep.normalize
    title = f"{case.id}: preprocessing on the training grid ({spacing} mm, cropped), {how}; axial slice {z}"
    path = Path(out) if out is not None else Path(f"{case.id}_preprocessing.png")
    return save_png(render_preprocessing(rows, title), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strokelab.data.preview_preprocessing",
        description="Original | normalised | difference and both histograms per input (the TUM project's Fig. 3.1).",
    )
    parser.add_argument("input", help="ISLES'24 or ISLES'18 data root, or one case folder")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. data=isles24 data.preprocess.zscore_region=all")
    parser.add_argument("--case", default=None, help="case id in a data root (default: the first case)")
    parser.add_argument("--out", default=None, help="the PNG to write (default: ./<case>_preprocessing.png)")
    parser.add_argument("--slice", type=int, default=None, help="axial slice of the training grid (default: most lesion)")
    args = parser.parse_intermixed_args(argv)
    try:
        path = preview(args.input, args.out, args.case, args.overrides, args.slice)
    except StrokelabError as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {args.out or '.'}: cannot be written ({err.strerror}) (give --out a writable path)", file=sys.stderr)
        return 2
    print(f"preprocessing preview: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
