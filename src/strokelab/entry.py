"""What the command-line entry points share: config resolvers, the config check and one-line error reporting.

``train.py`` and ``predict.py`` call :func:`run` on their ``@hydra.main`` function. A config Hydra cannot
compose (``trainer.max_epoch=3``, ``model=nonexistent``, a broken override) and a config that
:func:`strokelab.config_check.check_config` refuses (a ``+`` key that is not a parameter, a typo in a YAML file
of ``conf/``, a value of the wrong type) end in one ``error: ...`` line per problem and exit code 2, before
Hydra creates the run directory and before any data is touched; so does a user error of the run itself
(:func:`exit_on_user_error`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from strokelab.errors import ConfigError, StrokelabError

log = logging.getLogger("strokelab")

# HYDRA_FULL_ERROR=1 makes Hydra raise a composition error instead of printing it over several lines: run()
# sets it (and this marker, which child processes inherit) to print the error in one line itself.
OWN_FULL_ERROR = "STROKELAB_HYDRA_FULL_ERROR"
_state = {"composed": False, "run_checked": False}


def register_resolvers() -> None:
    """``${len:${data.modalities}}`` gives a network's input channels from the modality list;
    ``${int_mul:${trainer.max_epochs},0.6}`` an epoch count from a fraction (Wang et al.'s rate drop at 60 %)."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda x: len(x))
    if not OmegaConf.has_resolver("int_mul"):
        OmegaConf.register_new_resolver("int_mul", lambda a, b: max(1, int(round(float(a) * float(b)))))


def exit_with(err: StrokelabError) -> NoReturn:
    """Print ``err`` as ``error: ...`` lines (one per problem) on stderr and exit with code 2."""
    for line in str(err).splitlines():
        print(f"error: {line}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(2)


def mark_composed(run_checked: bool = False) -> None:
    """Hydra has composed the config: from now on an exception is the run's, not a composition error.
    ``run_checked``: the config check has passed for a single run (its job need not check again)."""
    _state["composed"] = True
    _state["run_checked"] = _state["run_checked"] or run_checked


def is_secondary_rank() -> bool:
    """A DDP process other than rank 0 (Lightning starts them with LOCAL_RANK set): rank 0 checked the config,
    and theirs is rebuilt from rank 0's saved config (no config groups to check against)."""
    return os.environ.get("LOCAL_RANK", "0") != "0"


def check_job_config(cfg: DictConfig) -> None:
    """The config check of one job (raises ConfigError): a multirun's job checks its config with the sweep's
    values; a single run was checked by the callback before Hydra made its directory."""
    from strokelab.config_check import check_config

    if _state["run_checked"] or is_secondary_rank():
        return
    try:
        check_config(cfg)
    except ConfigError:
        raise
    except Exception as err:  # a fault of the check itself: say so, and let the run find out
        log.warning("the config check failed (%s: %s); running without it", type(err).__name__, " ".join(str(err).split()))


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn``; a user error ends with one ``error: FILE: problem (fix)`` line per problem and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hydra.errors import InstantiationException

        mark_composed()
        try:
            return fn(*args, **kwargs)
        except StrokelabError as err:
            exit_with(err)
        except InstantiationException as err:
            # Hydra wraps errors raised in constructors; ours keep their one-line message.
            cause = err.__cause__
            if isinstance(cause, StrokelabError):
                exit_with(cause)
            msg = " ".join(str(err).split())
            exit_with(ConfigError("config", msg[:400], "check the _target_ and its arguments"))

    return wrapper


def run(main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function as an entry point: Hydra checks the composed config with
    :class:`strokelab.config_check.ConfigCheckCallback` before it creates the run directory (a callback of
    ``conf/hydra/default.yaml``), and a config Hydra cannot compose ends in one line and exit code 2.
    ``HYDRA_FULL_ERROR=1`` set by the user keeps Hydra's own report."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from strokelab.config_check import composition_error_line

    ours = "HYDRA_FULL_ERROR" not in os.environ or os.environ.get(OWN_FULL_ERROR) == "1"
    if ours:
        os.environ["HYDRA_FULL_ERROR"] = os.environ[OWN_FULL_ERROR] = "1"
    try:
        return main()
    except (HydraException, OmegaConfBaseException) as err:
        if not ours or _state["composed"]:
            raise
        exit_with(ConfigError(None, composition_error_line(err)))
