"""Train a model (or evaluate the threshold baseline) on an ISLES'24-layout data set.

python train.py                          # default: phantom data, 3D U-Net, Dice+CE, CPU
python train.py experiment=bce_collapse  # a paper experiment
python train.py -m data.fold=0,1,2,3,4   # cross-validation as a multirun

The composed config is checked before anything is done (strokelab.config_check): a key that is not a parameter
of its node's _target_, a value of the wrong type or an unknown top-level key ends in one line and exit code 2.
"""

import hydra
from omegaconf import DictConfig

from strokelab.entry import check_job_config, exit_on_user_error, register_resolvers, run

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    check_job_config(cfg)
    from strokelab.train import train

    return train(cfg)


if __name__ == "__main__":
    run(main)
