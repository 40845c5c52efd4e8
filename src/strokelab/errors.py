"""Errors a user can cause. Entry points print them as one line (no traceback) and exit non-zero.

Each message names the file (or config key) and says what is wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path


class StrokelabError(Exception):
    """Base class: bad input or configuration that the user can fix."""

    def __init__(self, where: str | Path | None, problem: str, fix: str | None = None):
        self.where = str(where) if where is not None else None
        self.problem = problem
        self.fix = fix
        super().__init__(self.line())

    def __reduce__(self):
        # Picklable with its three fields (a worker process sends it back to the parent intact).
        return (type(self), (self.where, self.problem, self.fix))

    def line(self) -> str:
        head = f"{self.where}: " if self.where else ""
        tail = f" ({self.fix})" if self.fix else ""
        return f"{head}{self.problem}{tail}"


class DataError(StrokelabError):
    """A data file or data set is missing, unreadable or inconsistent."""


class ConfigError(StrokelabError):
    """A configuration value is invalid."""


class CheckpointError(StrokelabError):
    """A checkpoint is missing or does not fit the model config."""


class DataSetError(DataError):
    """Several problems in a data set: printed one line each."""

    def __init__(self, errors: list[StrokelabError], limit: int = 50):
        self.errors = errors
        lines = [str(e) for e in errors[:limit]]
        if len(errors) > limit:
            lines.append(f"... and {len(errors) - limit} more (python -m strokelab.data.check ROOT lists all)")
        super().__init__(None, "\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.errors,))
