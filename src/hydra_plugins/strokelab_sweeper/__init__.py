"""strokelab's Optuna sweeper as a Hydra plugin (Hydra instantiates sweepers only from ``hydra_plugins``).

``hydra.sweeper._target_: hydra_plugins.strokelab_sweeper.StudyOptunaSweeper`` (conf/hparams_search/_optuna.yaml):
Hydra's Optuna sweeper with the same config, running :class:`strokelab.sweeps.StudySweeperImpl`. Importing this
module stays cheap (Hydra scans every plugin module at start-up): Optuna is imported when a sweep starts.
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class StudyOptunaSweeper(OptunaSweeper):
    """Hydra's ``OptunaSweeper`` (same parameters) with strokelab's trial folders, continued studies and best-trial
    report: see :mod:`strokelab.sweeps`."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,
        study_name: Any,
        n_trials: int,
        n_jobs: int,
        search_space: Any,
        custom_search_space: Any,
        params: Any,
    ) -> None:
        from strokelab.sweeps import StudySweeperImpl

        self.sweeper = StudySweeperImpl(
            sampler, direction, storage, study_name, n_trials, n_jobs, search_space, custom_search_space, params
        )
