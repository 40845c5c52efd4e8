"""The cluster launcher (conf/hydra/launcher/slurm.yaml, Hydra's submitit launcher) without a cluster: a multirun
through the same launcher with submitit's local executor runs its jobs in their own processes and returns their
results; the SLURM config composes, passes the config check, and becomes an sbatch array script with the
configured resources; and Lightning's SLURM environment accepts the DDP layout it implies."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict, read_write
from test_cli import CONF, TINY, run

from strokelab.config_check import check_config
from strokelab.entry import register_resolvers


def slurm_config(tmp_path: Path, *overrides: str):
    """The composed train config with hydra/launcher=slurm, with Hydra's config set as in a multirun's job."""
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", f"paths.root_dir={tmp_path}", "run_name=cv", *overrides],
            return_hydra_config=True,
        )
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(tmp_path / "job")
    HydraConfig.instance().set_config(cfg)
    return cfg


class Submitted(Exception):
    """Raised in place of calling sbatch."""


def test_a_multirun_through_the_submitit_launcher_runs_each_job_in_its_own_process(tiny_root, tmp_path):
    """Two folds through hydra/launcher=local: the submitit launcher's submission, pickling and result path that
    hydra/launcher=slurm takes, with the same resource knobs (conf/hydra/launcher/_resources.yaml)."""
    sweep = tmp_path / "logs" / "unet" / "multiruns" / "cv"
    out = run(
        "train.py",
        "-m",
        *TINY,
        "trainer.max_epochs=1",
        "test=false",
        f"data.root={tiny_root}",
        f"paths.root_dir={tmp_path}",
        "run_name=cv",
        "hydra/launcher=local",
        "hydra.launcher.timeout_min=10",
        "data.fold=0,1",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in out.stdout + out.stderr
    # Each job ran in a submitit worker process of its own (one folder per job id under <sweep>/.submitit, with
    # its log and pickled result), and what it returned to the launcher is the job's result in its DONE.json.
    returned = {}
    for path in sorted((sweep / ".submitit").glob("*/*_0_result.pkl")):
        with path.open("rb") as f:
            status, job_return = pickle.load(f)
        assert status == "success"
        returned[Path(job_return.hydra_cfg.hydra.runtime.output_dir).name] = job_return.return_value
        assert "Traceback" not in next(path.parent.glob("*_0_log.err")).read_text()
    assert sorted(returned) == ["0", "1"]
    for job, fold in (("0", 0), ("1", 1)):
        done = json.loads((sweep / job / "DONE.json").read_text())
        assert f"data.fold={fold}" in done["overrides"] and Path(done["best_checkpoint"]).is_file()
        assert isinstance(done["result"], float) and returned[job] == done["result"]


def test_the_slurm_config_becomes_an_sbatch_array_with_its_resources(tmp_path, monkeypatch):
    """The SLURM launcher builds its executor from conf/hydra/launcher/slurm.yaml (submitit validates every
    parameter) and writes the sbatch script of a four-job array; sbatch itself is not called."""
    import submitit.slurm.slurm as slurm

    cfg = slurm_config(
        tmp_path,
        "trainer=ddp",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.nodes=2",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.array_parallelism=3",
        "hydra.launcher.account=lab",
        "+hydra.launcher.additional_parameters.reservation=maint",
    )
    check_config(cfg)
    scripts: list[str] = []

    def capture(self, command):
        scripts.append(self._make_submission_file_text(command, "uid"))
        raise Submitted

    monkeypatch.setattr(slurm.SlurmExecutor, "_submit_command", capture)
    bin_dir = tmp_path / "bin"  # submitit's SLURM executor wants srun on PATH (the sbatch script calls it)
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([[f"data.fold={k}"] for k in range(4)], initial_job_idx=0)
    (script,) = scripts
    lines = set(script.splitlines())
    for option in (
        "--partition=gpu",
        "--nodes=2",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",  # one process per GPU
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=90",
        "--array=0-3%3",  # 4 jobs, 3 at a time
        "--account=lab",
        "--reservation=maint",
    ):
        assert f"#SBATCH {option}" in lines, script
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines), script
    sweep = tmp_path / "logs" / "unet" / "multiruns" / "cv"
    assert str(sweep / ".submitit") in script  # logs and pickles of the jobs beside their folders


def test_lightning_takes_the_ddp_layout_of_the_slurm_config_from_the_slurm_environment(tmp_path, monkeypatch):
    """What srun gives the 6th process of a 2-node x 4-GPU job: Lightning's SLURM environment, with trainer.num_nodes
    taken from the launcher's nodes, accepts it and ranks the process from SLURM's variables."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    cfg = slurm_config(tmp_path, "trainer=ddp", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4")
    env = {
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NODELIST": "gpu[07-08]",
    }
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cfg.trainer.num_nodes == 2
    tasks = OmegaConf.select(cfg, "hydra.launcher.tasks_per_node")
    assert tasks == 4
    assert SLURMEnvironment.detect()
    slurm_env = SLURMEnvironment()
    slurm_env.validate_settings(num_devices=tasks, num_nodes=cfg.trainer.num_nodes)
    assert (slurm_env.world_size(), slurm_env.global_rank(), slurm_env.local_rank(), slurm_env.node_rank()) == (8, 5, 1, 1)
    assert slurm_env.main_address == "gpu07"
    with pytest.raises(ValueError, match="num_nodes=1"):  # what a run without trainer.num_nodes would meet
        slurm_env.validate_settings(num_devices=tasks, num_nodes=1)
