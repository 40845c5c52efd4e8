"""trainer=ddp adjustments (train.ddp_adjustments) and the per-epoch reshuffle of the subjects over the ranks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir

from strokelab.data.datamodule import StrokeDataModule
from strokelab.entry import register_resolvers
from strokelab.train import ddp_adjustments

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(*overrides: str):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_a_model_with_a_discriminator_gets_unused_parameter_search_under_ddp_and_cpu_drops_sync_batchnorm():
    gan = SimpleNamespace(discriminator=torch.nn.Linear(1, 1))
    plain = SimpleNamespace(discriminator=None)
    assert ddp_adjustments(config("trainer=ddp"), plain) == {}  # GPU DDP of a plain model: as configured
    assert ddp_adjustments(config("trainer=ddp"), gan) == {"strategy": "ddp_find_unused_parameters_true"}
    cpu = config("trainer=ddp", "trainer.accelerator=cpu")
    assert ddp_adjustments(cpu, plain) == {"sync_batchnorm": False}
    assert ddp_adjustments(config("trainer=cpu"), gan) == {}  # not DDP: nothing changes


def test_the_subject_sampler_is_reshuffled_every_epoch():
    dm = StrokeDataModule.__new__(StrokeDataModule)
    dm.subject_sampler = torch.utils.data.DistributedSampler(list(range(40)), num_replicas=2, rank=0, shuffle=True, seed=0)
    dm.set_epoch(0)
    first = list(dm.subject_sampler)
    dm.set_epoch(1)
    assert list(dm.subject_sampler) != first and len(first) == 20
    dm.set_epoch(0)
    assert list(dm.subject_sampler) == first  # the same on every rank and after a resume
    dm.subject_sampler = None
    dm.set_epoch(3)  # one process: nothing to reshuffle
