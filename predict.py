"""Predict final-infarct masks for new cases, in their native geometry.

python predict.py input=ROOT_OR_CASE output=DIR ckpt=PATH
python predict.py input=ROOT_OR_CASE output=DIR model=threshold
"""

import hydra
from omegaconf import DictConfig

from strokelab.entry import exit_on_user_error, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from strokelab.predict import predict

    predict(cfg)


if __name__ == "__main__":
    main()
