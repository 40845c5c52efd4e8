"""What the command-line entry points share: config resolvers and one-line error reporting."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from strokelab.errors import StrokelabError

log = logging.getLogger("strokelab")


def register_resolvers() -> None:
    """``${len:${data.modalities}}`` gives a network's input channels from the modality list;
    ``${int_mul:${trainer.max_epochs},0.6}`` an epoch count from a fraction (Wang et al.'s rate drop at 60 %)."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda x: len(x))
    if not OmegaConf.has_resolver("int_mul"):
        OmegaConf.register_new_resolver("int_mul", lambda a, b: max(1, int(round(float(a) * float(b)))))


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn``; a user error ends with one ``error: FILE: problem (fix)`` line per problem and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hydra.errors import InstantiationException

        try:
            return fn(*args, **kwargs)
        except StrokelabError as err:
            for line in str(err).splitlines():
                print(f"error: {line}", file=sys.stderr)
        except InstantiationException as err:
            # Hydra wraps errors raised in constructors; ours keep their one-line message.
            cause = err.__cause__
            if isinstance(cause, StrokelabError):
                for line in str(cause).splitlines():
                    print(f"error: {line}", file=sys.stderr)
            else:
                msg = " ".join(str(err).split())
                print(f"error: config: {msg[:400]} (check the _target_ and its arguments)", file=sys.stderr)
        sys.stdout.flush()
        sys.exit(2)

    return wrapper
