"""Sweeps (conf/hparams_search/, strokelab.sweeps): an Optuna study kept in SQLite continues when the same command
runs again (new trial numbers in new folders, the finished trials left alone, no replay of the first draws), its
objective is each trial's validation result, the best trial is printed with its whole config; a study is not
continued by another command; the architecture x loss sweep composes for every network and loss and runs its grid
once."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from test_cli import CONF, TINY, one_error_line, run

from strokelab.config_check import check_config
from strokelab.entry import register_resolvers

FAST = [*(a for a in TINY if not a.startswith("trainer.max_epochs=")), "trainer.max_epochs=1", "test=false"]


def study_trials(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials


def folder_state(folder: Path) -> list[tuple[str, bytes, int, int]]:
    """Every file of a trial's folder that a re-run training would rewrite: content, mtime, inode."""
    paths = [folder / "DONE.json", *sorted((folder / "checkpoints").iterdir()), *sorted((folder / "csv").rglob("*"))]
    return [(str(p), p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns, p.stat().st_ino) for p in paths]


def test_an_optuna_study_continues_with_new_trials_and_reports_the_best(tiny_root, tmp_path):
    common = ["hparams_search=optuna", *FAST, f"data.root={tiny_root}", f"paths.root_dir={tmp_path}", "run_name=study"]
    sweep = tmp_path / "logs" / "optuna" / "multiruns" / "study"
    db = sweep / "optuna.db"

    first = run("train.py", *common, "hydra.sweeper.n_trials=3")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    trials = study_trials(db, "optuna")
    assert [t.number for t in trials] == [0, 1, 2]
    before = {k: folder_state(sweep / str(k)) for k in range(3)}

    second = run("train.py", *common, "hydra.sweeper.n_trials=2")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    trials = study_trials(db, "optuna")
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # The finished trials were neither trained again nor touched: same files, one training log each.
    assert {k: folder_state(sweep / str(k)) for k in range(3)} == before
    launched = second.stdout + second.stderr
    assert "\t#3 : " in launched and "\t#4 : " in launched and "\t#0 : " not in launched
    # The continued study draws new points, not the first process's again (same seed in both commands).
    first_params = [t.params for t in trials[:3]]
    assert all(t.params not in first_params for t in trials[3:])

    for t in trials:  # trial k ran in folder k, with its parameters, and returned its best val/dice
        done = json.loads((sweep / str(t.number) / "DONE.json").read_text())
        assert {f"{k}={v}" for k, v in t.params.items()} <= set(done["overrides"])
        assert done["monitor"] == "val/dice" and t.value == pytest.approx(done["result"])

    best = max(trials, key=lambda t: t.value)
    assert f"Best trial of study optuna (5 of 5 trials completed): #{best.number}, val/dice {best.value:.4f}" in second.stdout
    record = yaml.safe_load((sweep / "best_trial.yaml").read_text())
    assert record["best_trial"] == best.number and record["value"] == pytest.approx(best.value)
    assert record["params"] == best.params and Path(record["best_checkpoint"]).is_file()
    config = record["config"]  # the trial's whole config, resolved
    assert config["model"]["optimizer"]["lr"] == pytest.approx(best.params["model.optimizer.lr"])
    assert config["model"]["net"]["dropout"] == pytest.approx(best.params["model.net.dropout"])
    assert config["paths"]["output_dir"] == str(sweep / str(best.number))
    assert config["model"]["net"]["in_channels"] == 4  # ${len:...} resolved
    assert f"lr: {best.params['model.optimizer.lr']}" in second.stdout  # printed too

    # Another command (another budget) does not continue this study: its values would not compare.
    other = run("train.py", *[a.replace("trainer.max_epochs=1", "trainer.max_epochs=3") for a in common])
    one_error_line(other, str(db), "study optuna holds trials of another command", "trainer.max_epochs=3", "run_name")
    assert len(study_trials(db, "optuna")) == 5


def grid(overrides: list[str]) -> dict[str, list[str]]:
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.GridSampler"
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    return {o.get_key_element(): list(o.sweep_string_iterator()) for o in parsed}


def test_every_network_and_loss_of_the_architecture_sweep_composes_in_2d_and_passes_the_config_check():
    """Each network with the first loss and each loss with the first network (the check reads each group's file
    on its own: a combination fails only if one of its parts does)."""
    choices = grid(["hparams_search=architecture"])
    assert set(choices) == {"model", "loss"}
    assert {"unet2d", "slnet"} <= set(choices["model"]) and {"wce_hgd", "wang_dice", "ce"} <= set(choices["loss"])
    models, losses = choices["model"], choices["loss"]
    jobs = [(m, losses[0]) for m in models] + [(models[0], loss) for loss in losses[1:]]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for model, loss in jobs:
            overrides = ["hparams_search=architecture", f"model={model}", f"loss={loss}"]
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
            assert cfg.model.spatial_dims == 2 and cfg.hydra.runtime.choices.experiment == "wang", (model, loss)
            check_config(cfg)


def test_an_architecture_study_runs_each_combination_of_its_grid_once(tiny_root, tmp_path):
    """Two networks x one loss of the grid on 2D slices of the tiny data, one trial per command: the second command
    continues the study with the combination the first did not evaluate, not one it did."""
    common = [
        "hparams_search=architecture",
        *FAST,
        "data.patch_size=[32,32,1]",
        "model.net.channels=[4,8,16,32,64]",
        "trainer.limit_train_batches=2",
        "val_images=0",
        f"data.root={tiny_root}",
        f"paths.root_dir={tmp_path}",
        "run_name=arch",
        "hydra.sweeper.params.model='choice(slnet,unet2d)'",
        "hydra.sweeper.params.loss='choice(wce_hgd)'",
    ]
    sweep = tmp_path / "logs" / "architecture_search" / "multiruns" / "arch"
    first = run("train.py", *common, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert len(study_trials(sweep / "optuna.db", "architecture_search")) == 1

    second = run("train.py", *common)  # n_trials 49: only what is left of the grid runs
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 combination(s) of the grid not evaluated yet" in second.stdout + second.stderr
    trials = study_trials(sweep / "optuna.db", "architecture_search")
    assert sorted(t.params["model"] for t in trials) == ["slnet", "unet2d"]
    for t in trials:
        done = json.loads((sweep / str(t.number) / "DONE.json").read_text())
        assert {f"model={t.params['model']}", "loss=wce_hgd"} <= set(done["overrides"])
        assert t.value == pytest.approx(done["result"])
    assert "Best trial of study architecture_search (2 of 2 trials completed)" in second.stdout
