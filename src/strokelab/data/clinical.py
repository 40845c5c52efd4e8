"""Clinical tables of a case: ``ROOT/phenotype/<case>/ses-0{1,2}/*.xlsx`` (or ``.csv``), one row each.

Column names are normalised to snake case (``"NIHSS at admission"`` -> ``nihss_at_admission``) and
known variants are mapped to one canonical name, so that the rest of the code reads ``nihss_admission``
whatever spelling a release uses.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from strokelab.errors import DataError

# Canonical name -> normalised spellings seen in releases (the canonical name itself always matches).
ALIASES: dict[str, tuple[str, ...]] = {
    "nihss_admission": ("nihss_at_admission", "admission_nihss", "nihss_baseline", "nihss"),
    "mrs_admission": ("mrs_at_admission", "admission_mrs", "premorbid_mrs"),
    "mrs_3month": ("mrs_3_months", "mrs_at_3_months", "mrs_90d", "mrs_90_days", "three_month_mrs"),
    "centre": ("center", "site", "hospital", "centre_id", "center_id"),
    "age": ("age_years", "patient_age"),
    "sex": ("gender", "patient_sex"),
}
_LOOKUP = {alias: canon for canon, names in ALIASES.items() for alias in (canon, *names)}


def normalise_name(name: str) -> str:
    name = re.sub(r"[^0-9a-zA-Z]+", "_", str(name).strip().lower()).strip("_")
    return _LOOKUP.get(name, name)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalar -> python
        return value.item()
    return value


def read_table(path: Path) -> dict[str, Any]:
    import pandas as pd

    try:
        frame = pd.read_excel(path) if path.suffix == ".xlsx" else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file for the user
        raise DataError(path, f"unreadable clinical table ({type(exc).__name__}: {exc})", "fix or remove the file") from None
    if len(frame) == 0:
        return {}
    row = frame.iloc[0].to_dict()
    return {normalise_name(k): _clean(v) for k, v in row.items()}


def read_clinical(root: Path, case_id: str) -> dict[str, Any]:
    """Merge every clinical table of a case into one dict (later sessions do not overwrite earlier)."""
    folder = Path(root) / "phenotype" / case_id
    merged: dict[str, Any] = {}
    if not folder.is_dir():
        return merged
    for path in sorted(folder.glob("ses-*/*")):
        if path.suffix in {".csv", ".xlsx"}:
            for key, value in read_table(path).items():
                merged.setdefault(key, value)
    return merged
