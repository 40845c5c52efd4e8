"""Hyperparameter studies: Hydra's Optuna sweeper with a study that can be continued, trial-numbered job folders
and a report of the best trial (``conf/hparams_search/optuna.yaml``, ``architecture.yaml``).

The objective of every trial is what ``strokelab.train.train`` returns: the best ``monitor.metric`` on the
validation cases, which come from the training folds; the held-out fold is only tested, never optimised.

Hydra's Optuna sweeper (``hydra-optuna-sweeper`` 1.2, Optuna 2.x) alone gets three things wrong for a study kept
in a database and continued by running the same command again (``run_name=NAME``):

- **Job folders.** It numbers the jobs of each process from 0, so the trials of a continued study (numbers 3, 4,
  ... in the study) would land in the folders ``0``, ``1`` of the first process's trials, whose ``DONE.json``
  either returns a finished trial's result for a new trial or refuses the job. Here a trial's job number is its
  trial number: trial ``k`` always runs in ``<sweep dir>/k`` (``hydra.sweep.subdir: ${hydra.job.num}``).
- **Seeds.** A seeded sampler in a new process draws the first process's points again (trials 3, 4 would repeat
  trials 0, 1 while TPE samples at random, its first ``n_startup_trials``). A continued study's sampler is
  seeded with ``seed + number of trials already in the study``: reproducible, and never a replay.
- **Storage.** SQLite cannot create the folder of its file: the sweep folder is made before the study is opened.

It also refuses to continue a study whose trials ran with other command-line overrides (another data set,
fold or budget would make their values incomparable), says which trials a killed sweep left unfinished, and
after the sweep prints the best trial (value, parameters, folder, checkpoint and its whole resolved config)
and writes it to ``<sweep dir>/best_trial.yaml``.

Hydra only instantiates sweepers defined under ``hydra_plugins``: ``hydra_plugins.strokelab_sweeper`` holds the
class that the configs name, which runs :class:`StudySweeperImpl` from here.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from omegaconf import DictConfig, OmegaConf

from strokelab.errors import ConfigError, StrokelabError

log = logging.getLogger(__name__)

BEST_TRIAL_FILE = "best_trial.yaml"
SQLITE = "sqlite:///"


def sqlite_path(storage: Any) -> Path | None:
    """The database file of an SQLite storage URL (``sqlite:///relative`` or ``sqlite:////absolute``), else None."""
    if isinstance(storage, str) and storage.startswith(SQLITE):
        return Path(storage[len(SQLITE) :])
    return None


def load_existing_study(storage: Any, study_name: str | None) -> optuna.Study | None:
    """The study ``study_name`` in ``storage`` when it exists there (a continued study), else None."""
    if storage is None or study_name is None:
        return None
    path = sqlite_path(storage)
    if path is not None and not path.is_file():
        return None
    names = {s.study_name for s in optuna.study.get_all_study_summaries(storage=storage)}
    return optuna.load_study(study_name=study_name, storage=storage) if study_name in names else None


def trial_overrides(trial: optuna.trial.FrozenTrial) -> list[str]:
    """The overrides a trial's job ran with: the sampled parameters, then the fixed ones (the command line's),
    which the sweeper stores as the trial's user attributes."""
    return [f"{k}={v}" for k, v in {**trial.params, **trial.user_attrs}.items()]


def _fixed_difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    old = sorted(f"{k}={v}" for k, v in stored.items() if current.get(k, object()) != v)
    new = sorted(f"{k}={v}" for k, v in current.items() if stored.get(k, object()) != v)
    text = f"its trials ran with {' '.join(old) or 'nothing else'}, this command has {' '.join(new) or 'nothing else'}"
    return text if len(text) <= 300 else text[:297] + "..."


def resolved_trial_config(folder: Path, master: DictConfig | None = None) -> dict[str, Any] | None:
    """The whole config a trial's job ran with, resolved: its ``.hydra/config.yaml`` with its ``.hydra/hydra.yaml``
    for ``${hydra:...}``; ``master`` (the sweep's config) lends its resolver cache, so that ``${now:...}`` gives the
    sweep's time as it did for the job. None when the job saved no config (``hydra.output_subdir=null``)."""
    from strokelab.entry import register_resolvers

    task_file, hydra_file = folder / ".hydra" / "config.yaml", folder / ".hydra" / "hydra.yaml"
    if not task_file.is_file() or not hydra_file.is_file():
        return None
    register_resolvers()
    task = OmegaConf.load(task_file)
    full = OmegaConf.merge(task, OmegaConf.load(hydra_file))
    if master is not None:
        OmegaConf.copy_cache(from_config=master, to_config=task)
    before = HydraConfig.instance().cfg
    try:
        # What HydraConfig.set_config does, for a saved (untyped) hydra node: ${hydra:...} reads this.
        HydraConfig.instance().cfg = OmegaConf.masked_copy(full, "hydra")  # type: ignore[assignment]
        return OmegaConf.to_container(task, resolve=True)  # type: ignore[return-value]
    finally:
        HydraConfig.instance().cfg = before


def best_trial_report(study: optuna.Study, sweep_dir: Path, monitor: str, master: DictConfig | None = None) -> str:
    """The best trial of ``study`` as text (value, parameters, folder, best checkpoint, whole resolved config), also
    written to ``<sweep_dir>/best_trial.yaml``; returns the text printed."""
    from strokelab.checkpointing import DONE_NAME
    from strokelab.io import atomic_write_text

    best = study.best_trial
    folder = sweep_dir / str(best.number)
    done_file = folder / DONE_NAME
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    config = resolved_trial_config(folder, master)
    direction = study.direction.name.lower()
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    record = {
        "study": study.study_name,
        "trials": len(study.trials),
        "completed": len(finished),
        "best_trial": best.number,
        "monitor": monitor,
        "direction": direction,
        "value": best.value,
        "params": dict(best.params),
        "overrides": trial_overrides(best),
        "folder": str(folder),
        "best_checkpoint": done.get("best_checkpoint"),
        "config": config,
    }
    atomic_write_text(sweep_dir / BEST_TRIAL_FILE, OmegaConf.to_yaml(OmegaConf.create(record)))
    params = " ".join(f"{k}={v}" for k, v in best.params.items())
    lines = [
        f"Best trial of study {study.study_name} ({len(finished)} of {len(study.trials)} trials completed): "
        f"#{best.number}, {monitor} {best.value:.4f} ({direction}, on the validation cases)",
        f"  parameters: {params}",
        f"  folder: {folder}" + (f"   best checkpoint: {done['best_checkpoint']}" if done.get("best_checkpoint") else ""),
        f"  written with its whole config to {sweep_dir / BEST_TRIAL_FILE}",
    ]
    if config is None:
        lines.append("  (its job saved no config: hydra.output_subdir is null)")
    else:
        lines += ["  its config (resolved):", OmegaConf.to_yaml(OmegaConf.create(config)).rstrip()]
    return "\n".join(lines)


class StudySweeperImpl(OptunaSweeperImpl):
    """Hydra's Optuna sweeper with trial-numbered job folders, a continued study that neither replays its seed
    nor mixes commands, and the best trial printed at the end (see the module docstring)."""

    def sweep(self, arguments: list[str]) -> None:
        from strokelab.entry import exit_with

        try:
            self._open_study(arguments)
            super().sweep(arguments)
        except StrokelabError as err:  # ours (a trial's own errors end its job: strokelab.entry)
            exit_with(err)
        if len(self._get_directions()) == 1 and self.storage is not None:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            monitor = str(OmegaConf.select(self.config, "monitor.metric", default="objective"))
            print("\n" + best_trial_report(study, Path(str(self.sweep_dir)), monitor, self.config), flush=True)

    def _open_study(self, arguments: Sequence[str]) -> None:
        """Before Optuna opens the study: make the SQLite file's folder; for a continued study, refuse other
        command-line overrides, name trials a killed sweep left running, and seed the sampler past the
        earlier trials."""
        path = sqlite_path(self.storage)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        study = load_existing_study(self.storage, self.study_name)
        if study is None:
            log.info("new study %s in %s", self.study_name, self.storage)
            return
        trials = study.trials
        _, fixed = self._fixed_params(arguments)
        earlier = next((t.user_attrs for t in reversed(trials) if t.user_attrs or t.params), None)
        if earlier is not None and dict(earlier) != fixed:
            raise ConfigError(
                path or self.storage,
                f"study {self.study_name} holds trials of another command ({_fixed_difference(earlier, fixed)})",
                "run that study's command, or give another run_name for a new study",
            )
        running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if running:
            log.warning(
                "study %s: trial(s) %s never finished (a killed sweep); they stay unfinished, new trials get new "
                "numbers and folders",
                self.study_name,
                ", ".join(map(str, running)),
            )
        if self._is_grid():
            left = self._grid_left(arguments, trials)
            if left < self.n_trials:
                state = f"{left} combination(s) of the grid not evaluated yet" if left else "the whole grid is evaluated"
                log.info("study %s: %s", self.study_name, state)
                self.n_trials = left
        sampler_cfg = OmegaConf.select(self.config, "hydra.sweeper.sampler")
        seed = sampler_cfg.get("seed") if sampler_cfg is not None else None
        if seed is not None:
            self.sampler = instantiate(sampler_cfg, seed=int(seed) + len(trials))
        log.info(
            "continuing study %s in %s: %d trial(s) so far, best %s; %d more%s",
            self.study_name,
            self.storage,
            len(trials),
            _best_value(study),
            self.n_trials,
            f", sampler seed {int(seed) + len(trials)} ({seed} + {len(trials)})" if seed is not None else "",
        )

    def _fixed_params(self, arguments: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The sweeper's split of its parameters and the command line into searched and fixed ones (what
        Optuna's sweeper stores as each trial's user attributes)."""
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        self._process_searchspace_config()
        params = [*self._parse_sweeper_params_config(), *arguments]
        return create_params_from_overrides(params)

    def _is_grid(self) -> bool:
        return isinstance(self.sampler, functools.partial) and self.sampler.func is optuna.samplers.GridSampler

    def _grid_left(self, arguments: Sequence[str], trials: Sequence[optuna.trial.FrozenTrial]) -> int:
        """How many points of the grid no finished trial of the study has evaluated (the grid sampler would
        evaluate finished points again once the grid is through)."""
        searched, fixed = self._fixed_params(arguments)
        choices = {k: self._to_grid_sampler_choices(d) for k, d in searched.items() if k not in fixed}
        grid = {tuple(sorted(zip(choices, values))) for values in itertools.product(*choices.values())}
        done = {tuple(sorted(t.params.items())) for t in trials if t.state.is_finished()}
        return len(grid - done)

    def _configure_trials(self, trials: list[Any], search_space_distributions: Any, fixed_params: Any) -> Any:
        """Name each trial's job after its trial number (the sweeper launches the next batch with ``job_idx``)."""
        overrides = super()._configure_trials(trials, search_space_distributions, fixed_params)
        numbers = [t.number for t in trials]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise ConfigError(
                sqlite_path(self.storage) or self.storage,
                f"study {self.study_name} gave trials {numbers} to one batch: another process adds trials to it",
                "run one sweep per study (n_jobs sets how many trials run at once)",
            )
        self.job_idx = numbers[0]
        return overrides


def _best_value(study: optuna.Study) -> str:
    try:
        return f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:  # no completed trial yet
        return "none yet"
