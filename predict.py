"""Predict final-infarct masks for new cases, in their native geometry.

python predict.py input=ROOT_OR_CASE output=DIR ckpt=PATH
python predict.py input=ROOT_OR_CASE output=DIR model=threshold

The composed config is checked before anything is done (strokelab.config_check): an unknown key or a value of
the wrong type ends in one line and exit code 2.
"""

import hydra
from omegaconf import DictConfig

from strokelab.entry import check_job_config, exit_on_user_error, register_resolvers, run

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    check_job_config(cfg)
    from strokelab.predict import predict

    predict(cfg)


if __name__ == "__main__":
    run(main)
