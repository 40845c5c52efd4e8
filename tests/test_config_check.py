"""The config check (strokelab.config_check): every shipped config passes it; a key that is not a parameter of its
node's _target_, a value of the wrong type, an unknown top-level key and an unresolvable interpolation are refused
in one line naming the key, before any data is touched."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from strokelab.config_check import SCHEMAS, accepts, check_config, signature_spec
from strokelab.entry import check_job_config, register_resolvers
from strokelab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TABLE1_VARIANTS = ("l1", "l2", "gan", "l2_gan", "w_l2", "w_l2_h1", "w_l2_h2")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def composed(overrides: Sequence[str], name: str = "train", conf: Path = CONF):
    register_resolvers()
    with initialize_config_dir(str(conf), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


def refused(overrides: Sequence[str], name: str = "train", conf: Path = CONF) -> list[str]:
    """The lines of the ConfigError the check raises for the composed config."""
    cfg = composed(overrides, name, conf)
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    return str(info.value).splitlines()


def train_cases() -> list[list[str]]:
    cases: list[list[str]] = [[]]
    for model in options("model"):  # the Tmax regressors read the CTP frames: they go with experiment=tmax
        cases.append(["experiment=tmax", f"model={model}"] if model.startswith("tmax") else [f"model={model}"])
    for group in ("data", "loss", "experiment", "trainer", "logger", "callbacks", "hparams_search"):
        cases += [[f"{group}={option}"] for option in options(group)]
    for variant in options("variant"):
        cases.append(["experiment=pseudo_dwi", f"+variant={variant}"])
        if variant in TABLE1_VARIANTS:
            cases.append(["experiment=pseudo_dwi_table1", f"+variant={variant}"])
    return cases


@pytest.mark.parametrize("overrides", train_cases(), ids=lambda o: " ".join(o) or "default")
def test_every_shipped_train_config_passes(overrides):
    check_config(composed(overrides))


@pytest.mark.parametrize("overrides", [[], ["model=threshold"], ["model=threshold", "+inference.mirror_axes=[0]"]])
def test_predict_configs_pass(overrides, tmp_path):
    check_config(composed([*overrides, "input=x", "output=y", f"hydra.run.dir={tmp_path}"], "predict"))


def test_every_key_of_the_primary_configs_has_a_type():
    for name in ("train", "predict"):
        keys = {str(k) for k in OmegaConf.load(CONF / f"{name}.yaml") if k != "defaults"}
        assert keys <= set(SCHEMAS[name]), f"add {sorted(keys - set(SCHEMAS[name]))} to SCHEMAS[{name!r}]"


def test_a_typo_key_in_a_model_node_names_the_target_and_its_parameters():
    (line,) = refused(["+model.net.chanels=[4]"])
    assert line.startswith("config key model.net.chanels: not a parameter of strokelab.nn.unet.UNet3D")
    assert "did you mean channels?" in line and "in_channels, out_channels, channels" in line
    assert line.endswith("fix the key on the command line (+model.net.chanels=[4])")
    (line,) = refused(["model=slnet", "+model.net.se_reduktion=4"])
    assert "model.net.se_reduktion: not a parameter of strokelab.nn.slnet.SLNet" in line and "se_reduction" in line


def test_model_settings_passed_to_the_base_class_are_checked_too():
    """SegmentationModel passes **settings to Model.__init__: its parameters count, a typo does not."""
    (line,) = refused(["+model.treshold=0.4"])
    assert "config key model.treshold: not a parameter of strokelab.models.SegmentationModel" in line
    assert "did you mean threshold?" in line
    check_config(composed(["model.threshold=0.4", "model.spatial_dims=3"]))
    (line,) = refused(["model=threshold", "+model.rul=tmax"])
    assert "model.rul: not a parameter of strokelab.tasks.threshold.ThresholdBaseline (did you mean rule?" in line


def test_an_unknown_top_level_key_is_refused():
    (line,) = refused(["+sed=1"])
    assert line.startswith("config key sed: not a top-level key (did you mean seed?") and "(+sed=1)" in line
    (line,) = refused(["+monitor.metrik=val/dice"])
    assert line.startswith("config key monitor.metrik: not a key of monitor (did you mean metric?")
    (line,) = refused(["+logger.foo=1"])
    assert line.startswith("config key logger.foo: 1 (int) is not a config node with _target_")


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs", ["'abc' (str) is not int | None", "lightning.pytorch.trainer.Trainer"]),
        ("data.batch_size=2.5", "data.batch_size", ["2.5 (float) is not int", "StrokeDataModule"]),
        ("model.net.channels=5", "model.net.channels", ["5 (int) is not Sequence[int]", "UNet3D"]),
        ("seed=true", "seed", ["True (bool) is not int | None"]),
        ("train=1", "train", ["1 (int) is not bool"]),
        ("trainer.precision=bf15", "trainer.precision", ["'bf15' (str) is not", "'bf16-mixed'"]),
        ("data.modalities=[cbf,1]", "data.modalities", ["Sequence[str]"]),
        ("monitor.mode=maximum", "monitor.mode", ["is not 'min' | 'max'"]),
        ("data.preprocess.spacing=[2,2]", "data.preprocess.spacing", ["tuple[float | None, float | None, float | None]"]),
        ("+data.preprocess.spacng=[2,2,5]", "data.preprocess.spacng", ["not a setting of", "did you mean spacing?"]),
        ("+model.losses.seg.wieght=2", "model.losses.seg.wieght", ["not a setting of strokelab.models.base.LossTerm"]),
        ("+model.inference.mirror_axis=[0]", "model.inference.mirror_axis", ["did you mean mirror_axes?"]),
        ("model.inputs=${data.modalitiez}", "model.inputs", ["cannot be resolved", "data.modalitiez"]),
    ],
)
def test_a_wrong_value_is_refused_in_one_line_naming_the_key(override, key, words):
    (line,) = refused([override])  # a value read through ${...} elsewhere is reported once, where it is set
    assert line.startswith(f"config key {key}: "), line
    assert f"on the command line ({override})" in line, line
    for word in words:
        assert word in line, line


def test_an_int_for_a_float_and_null_for_an_optional_parameter_pass():
    check_config(composed(["model.optimizer.lr=1", "data.val_fold=null", "trainer.max_epochs=3", "seed=null"]))
    check_config(composed(["data.preprocess.clip=null", "data.preprocess.frames=null"]))  # no clipping; no 4D input


def test_a_value_from_an_interpolation_names_where_it_comes_from():
    """The Tmax regressors read data.preprocess.frames channels: null unless experiment=tmax sets it."""
    (line,) = refused(["model=tmax_linear"])
    assert line.startswith("config key model.net.in_channels: null (from ${data.preprocess.frames}) is not int")
    assert "fix the value of data.preprocess.frames in conf/data/isles24.yaml or the command line" in line
    (line,) = refused(["experiment=pseudo_dwi", "budget_epochs=abc"])  # trainer.max_epochs: ${budget_epochs}
    assert line.startswith("config key budget_epochs: 'abc' (str) is not int")


@pytest.fixture
def conf_copy(tmp_path) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    return conf


def test_a_typo_in_a_yaml_file_names_the_file(conf_copy):
    slnet = conf_copy / "model" / "slnet.yaml"
    slnet.write_text(slnet.read_text().replace("  channels:", "  chanels:"))
    (line,) = refused(["model=slnet"], conf=conf_copy)
    assert line.startswith("config key model.net.chanels: not a parameter of strokelab.nn.slnet.SLNet")
    assert line.endswith(f"fix the key in {slnet} or the command line")
    phantom = conf_copy / "data" / "phantom.yaml"
    phantom.write_text(phantom.read_text().replace("batch_size: 4", "batch_sise: 4"))
    lines = refused([], conf=conf_copy)
    assert lines == [
        "config key data.batch_sise: not a parameter of strokelab.data.datamodule.StrokeDataModule (did you mean "
        f"batch_size? parameters: {', '.join(signature_spec('strokelab.data.datamodule.StrokeDataModule').params)})"
        f"; fix the key in {phantom} or the command line"
    ]


def test_a_wrong_type_in_a_yaml_file_names_the_file(conf_copy):
    cpu = conf_copy / "trainer" / "cpu.yaml"
    text = cpu.read_text()
    assert re.search(r"^max_epochs: \d+", text, flags=re.M)
    cpu.write_text(re.sub(r"^max_epochs: \d+", "max_epochs: 12.5", text, flags=re.M))
    (line,) = refused([], conf=conf_copy)
    assert line.startswith("config key trainer.max_epochs: 12.5 (float) is not int | None")
    assert line.endswith(f"fix the value in {cpu} or the command line")


class Thing:
    """A class no config value is."""


@pytest.mark.parametrize(
    "annotation, value, verdict",
    [
        (int, 3, True),
        (int, True, False),
        (int, 2.5, False),
        (float, 3, True),
        (float, False, False),
        (bool, 1, False),
        (str, "a", True),
        (str, 1, False),
        (int | None, None, True),
        (Sequence[int], [1, 2], True),
        (Sequence[int], 5, False),
        (Sequence[str], "abc", False),
        (list[int], [1, "a"], False),
        (tuple[float, float], [0, 1.5], True),
        (tuple[float, float], [0, 1, 2], False),
        (tuple[int, ...], [1, 2, 3], True),
        (dict[str, tuple[float, float]], {"cta": [-100, 400]}, True),
        (dict[str, tuple[float, float]], {"cta": 5}, False),
        (Literal["min", "max"], "max", True),
        (Literal[1, 2], True, False),
        (Path, "/data", True),
        (Any, object(), None),
        (Sequence[Any], [1], None),
        (Thing | None, 5, None),  # a class a config value cannot be: accepted, the target decides
        (int, {"_target_": "x.Y"}, None),  # an object Hydra builds: known only once built
    ],
)
def test_accepts(annotation, value, verdict):
    assert accepts(annotation, value) is verdict


def test_signatures_follow_kwargs_only_where_strokelab_passes_them_on():
    unet3d = signature_spec("strokelab.nn.unet.UNet3D")  # UNet3D(*args, spatial_dims, **kwargs) -> UNet
    assert not unet3d.open and {"spatial_dims", "in_channels", "channels", "deep_supervision"} <= set(unet3d.params)
    chain = signature_spec("strokelab.models.chain.PseudoDWIChain")
    assert not chain.open and {"generator", "alpha", "threshold", "optimizer", "inference"} <= set(chain.params)
    assert signature_spec("strokelab.losses.CELoss").params == {}  # nn.Module's __init__ takes no keyword
    assert not signature_spec("strokelab.losses.CELoss").open
    assert signature_spec("lightning.pytorch.loggers.WandbLogger").open  # its **kwargs go to wandb.init
    assert "max_epochs" in signature_spec("lightning.pytorch.trainer.Trainer").params


def test_an_unimportable_target_is_refused():
    (line,) = refused(["model.net._target_=strokelab.nn.unet.UNet4D"])
    assert line.startswith("config key model.net._target_: cannot import strokelab.nn.unet.UNet4D")


def test_other_ddp_ranks_do_not_check_again(monkeypatch):
    """Rank 0 checked the config; the other DDP processes (LOCAL_RANK > 0) rebuild it and skip the check."""
    cfg = composed(["+model.net.chanels=[4]"])
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match="model.net.chanels"):
        check_job_config(task)
    monkeypatch.setenv("LOCAL_RANK", "1")
    check_job_config(task)


# -- as a user runs them ---------------------------------------------------------------------------------------
def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, key",
    [
        (["model.net.chanels=[4]"], "model.net.chanels"),  # Hydra refuses it while composing
        (["+model.net.chanels=[4]"], "model.net.chanels"),  # the check refuses it before the run starts
        (["-m", "model.net.channels=[4,8,16,32],5"], "model.net.channels"),  # the second job's value
    ],
)
def test_train_refuses_a_bad_config_before_anything_is_written(tmp_path, args, key):
    """Default data (the phantom, generated when its root is missing) under a fresh root: the config error
    comes first, so neither data/ (no phantom, no cache) nor logs/ (no run or sweep folder) appears."""
    out = run("train.py", *args, f"paths.root_dir={tmp_path}", cwd=tmp_path)
    line = one_error_line(out)
    assert line.startswith(f"error: config key {key}: "), line
    assert "UNet3D" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_predict_refuses_a_bad_config_before_anything_is_written(tmp_path):
    args = ["input=missing", "output=out", "model=threshold", "+model.tmax=5", f"hydra.run.dir={tmp_path / 'run'}"]
    line = one_error_line(run("predict.py", *args, f"paths.root_dir={tmp_path}", cwd=tmp_path))
    assert line.startswith("error: config key model.tmax: not a parameter of strokelab.tasks.threshold.ThresholdBaseline")
    assert "did you mean tmax_s?" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []
