"""The pseudo-DWI chain model (strokelab.models.chain) on tiny tensors: its wiring, Eq. 15's weights, stages,
the frozen context encoder, the adversarial step and the staged learning-rate schedule."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from strokelab.errors import ConfigError
from strokelab.losses import CELoss, ContextLoss, LSGANGeneratorLoss, PixelLoss, WCEHGDLoss
from strokelab.models.chain import PseudoDWIChain, staged_decay
from strokelab.nn.context import ContextEncoder
from strokelab.nn.discriminator import PatchDiscriminator
from strokelab.nn.slnet import PlainUNet, SLNet

WIDTHS = (4, 8)
MAPS = ["cbf", "cbv", "mtt", "tmax"]


def unet(cls=PlainUNet):
    return functools.partial(cls, out_channels=1, channels=WIDTHS, spatial_dims=2)


def full_losses():
    return {
        "seg": {"fn": WCEHGDLoss()},
        "synth_pixel": {"fn": PixelLoss("l2", weighted=True)},
        "synth_context": {"fn": ContextLoss("l1")},
        "extract_pixel": {"fn": PixelLoss("l2", weighted=True)},
        "extract_context": {"fn": ContextLoss("l1")},
    }


def chain(**kw):
    torch.manual_seed(0)
    settings = {
        "generator": unet(),
        "extractor": unet(),
        "segmenter": unet(SLNet),
        "context_encoder": ContextEncoder(spatial_dims=2),
        "losses": full_losses(),
        "spatial_dims": 2,
        "window_channels": 6,
    }
    settings.update(kw)
    return PseudoDWIChain(**settings)


def batch(n=2, size=16):
    g = torch.Generator().manual_seed(1)
    b = {m: torch.randn(n, 1, size, size, generator=g) for m in [*MAPS, "ctp_mip"]}
    b["ctp_window"] = torch.randn(n, 6, size, size, generator=g)
    b["dwi"] = torch.rand(n, 1, size, size, generator=g)
    label = torch.zeros(n, 1, size, size)
    label[:, :, 4:9, 5:10] = 1
    b["label"] = label
    b["weight_map"] = 1 + label * 0.5
    return b


def test_wiring_inputs_targets_outputs_and_channels():
    model = chain()
    assert model.inputs == [*MAPS, "ctp_mip", "ctp_window"]
    assert set(model.served_targets) == {"dwi", "label", "weight_map"}
    assert "dwi_context" in model.targets and "dwi_context" not in model.served_targets
    assert model.outputs["pseudo_dwi"].kind == "image" and model.outputs["pseudo_dwi"].reference == "dwi"
    assert model.outputs["logits"].kind == "mask"
    assert next(p for p in model.extractor.parameters() if p.dim() == 4).shape[1] == 6  # I*: 6 frames
    b = batch()
    model.train()
    out = model({m: b[m] for m in model.inputs})
    assert out["pseudo_dwi"].shape == (2, 1, 16, 16) and out["features"].shape == (2, 1, 16, 16)
    assert out["pseudo_dwi_context"].shape == (2, 16) and out["features_context"].shape == (2, 16)
    model.eval()
    out = model({m: b[m] for m in model.inputs})
    assert set(out) == {"pseudo_dwi", "features", "logits"}  # no training-only outputs at inference


def test_generator_and_segmenter_input_channels():
    model = chain(mip=None, window=None, extractor=None, losses={k: v for k, v in full_losses().items() if "extract" not in k})
    first = next(p for p in model.generator.parameters() if p.dim() == 4)
    assert first.shape[1] == 4  # F_o only
    model = chain(segment_from=["pseudo_dwi", *MAPS])
    assert next(p for p in model.segmenter.parameters() if p.dim() == 4).shape[1] == 5
    assert next(p for p in model.generator.parameters() if p.dim() == 4).shape[1] == 6  # F_o, F_l, F_h


def test_equation_15_weights_every_term_logged():
    model = chain(alpha=2.0, beta=3.0, gamma=1.5)
    w = {k: t.weight for k, t in model.loss_terms.items()}
    assert w == {"seg": 1.0, "synth_pixel": 2.0, "synth_context": 3.0, "extract_pixel": 3.0, "extract_context": 4.5}
    b = batch()
    model.train()
    out = model({m: b[m] for m in model.inputs})
    terms = model.losses(out, b)
    assert set(terms) == {*w, "loss"}
    expected = sum(w[k] * terms[k] for k in w)
    assert torch.allclose(terms["loss"], expected)
    assert terms["synth_context"] > 0 and terms["extract_context"] > 0  # the frozen random Φ_c is not trivially 0


def test_context_encoder_is_frozen_and_stays_in_eval_mode():
    model = chain()
    before = [p.clone() for p in model.context_encoder.parameters()]
    assert all(not p.requires_grad for p in model.context_encoder.parameters())
    assert all(id(p) not in {id(q) for q in model.context_encoder.parameters()} for p in model.generator_parameters())
    opt = torch.optim.RMSprop(model.generator_parameters(), lr=1e-2)
    b = batch()
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model.losses(model({m: b[m] for m in model.inputs}), b)["loss"].backward()
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.context_encoder.parameters()))
    assert not model.context_encoder.training


def test_stages_freeze_networks_and_select_terms():
    stages = [
        {"epochs": 0.25, "train": ["extractor"], "losses": ["extract_pixel", "extract_context"]},
        {"epochs": 0.25, "train": ["generator"], "losses": ["synth_pixel", "synth_context", "adversarial"]},
        {"epochs": 0.5, "train": ["segmenter"], "losses": ["seg"]},
    ]
    model = chain(stages=stages)
    assert [model.stage_of(e, 8) for e in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]
    model.set_epoch(2, 8)
    model.train()
    assert model.generator.training and not model.extractor.training and not model.segmenter.training
    assert all(p.requires_grad for p in model.generator.parameters())
    assert not any(p.requires_grad for p in model.extractor.parameters())
    b = batch()
    terms = model.losses(model({m: b[m] for m in model.inputs}), b)
    assert set(terms) == {"synth_pixel", "synth_context", "loss"}  # adversarial is absent: skipped
    terms["loss"].backward()
    assert all(p.grad is None for p in model.segmenter.parameters())
    model.set_epoch(7, 8)
    assert model.active_losses == ["seg"] and model.segmenter.training


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"extractor": None}, "model.extractor"),
        ({"losses": {**full_losses(), "typo": {"fn": CELoss()}}}, "model.losses"),
        ({"segment_from": ["dwi"]}, "model.segment_from"),
        ({"stages": [{"epochs": 1.0, "train": ["generator"], "losses": ["nope"]}]}, "model.stages[0].losses"),
        ({"stages": [{"epochs": 0.5, "train": ["generator"], "losses": ["synth_pixel"]}]}, "model.stages"),
        ({"losses": {**full_losses(), "adversarial": {"fn": LSGANGeneratorLoss()}}}, "model.losses.adversarial"),
    ],
)
def test_config_errors_are_one_line(kw, key):
    with pytest.raises(ConfigError) as err:
        chain(**kw)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_adversarial_terms_and_discriminator_loss():
    losses = {
        "seg": {"fn": WCEHGDLoss()},
        "synth_pixel": {"fn": PixelLoss("l2")},
        "adversarial": {"fn": LSGANGeneratorLoss(), "weight": 0.05},
    }
    model = chain(
        window=None, extractor=None, discriminator=PatchDiscriminator(spatial_dims=2, channels=(4, 8, 8, 8)), losses=losses
    )
    assert model.discriminator_active
    disc = {id(p) for p in model.discriminator.parameters()}
    assert not any(id(p) in disc for p in model.generator_parameters())
    b = batch(size=32)
    model.train()
    out = model({m: b[m] for m in model.inputs})
    terms = model.losses(out, b)
    assert "adversarial" in terms and model.loss_terms["adversarial"].weight == 0.05
    d = model.discriminator_loss(out, b)
    d.backward()
    assert all(p.grad is None for p in model.generator.parameters())  # the fake image is detached


def test_staged_decay_restarts_per_stage():
    param = torch.nn.Parameter(torch.zeros(1))

    def lrs(stages, epochs):
        opt = torch.optim.SGD([param], lr=1.0)
        sched = staged_decay(opt, stages, epochs)
        out = []
        for _ in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(None, 10) == [1.0] * 6 + [0.2] * 4  # MultiStepLR at round(0.6 * 10)
    two = [
        {"epochs": 0.5, "train": ["generator"], "losses": ["synth_pixel"]},
        {"epochs": 0.5, "train": ["segmenter"], "losses": ["seg"]},
    ]
    assert lrs(two, 10) == [1.0, 1.0, 1.0, 0.2, 0.2, 1.0, 1.0, 1.0, 0.2, 0.2]


def test_validation_losses_are_partial_on_whole_volumes():
    model = chain()
    b = batch()
    volumes = {k: v[..., None].expand(*v.shape, 3).contiguous() for k, v in b.items()}  # (B, C, X, Y, Z)
    model.eval()
    preds = model.predict_volume({m: volumes[m] for m in model.inputs})
    terms = model.losses(preds, volumes, partial=True)
    assert set(terms) == {"seg", "synth_pixel", "loss"}  # context terms and F_h are training-only


def test_task_trains_generator_and_discriminator_with_two_optimisers(tmp_path):
    """Table 1's GAN rows: the task's manual optimisation steps the model on its loss and the discriminator
    on its own (LSGAN) loss, with the discriminator's own optimiser; the frozen Φ_c never moves."""
    import lightning as L

    from strokelab.tasks.task import Task

    losses = {
        "seg": {"fn": CELoss()},
        "synth_pixel": {"fn": PixelLoss("l2")},
        "adversarial": {"fn": LSGANGeneratorLoss(), "weight": 0.05},
    }
    model = chain(
        window=None,
        extractor=None,
        discriminator=PatchDiscriminator(spatial_dims=2, channels=(4, 8, 8, 8)),
        discriminator_optimizer=functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999)),
        losses=losses,
        optimizer=functools.partial(torch.optim.RMSprop, lr=2e-3),
        scheduler=functools.partial(staged_decay, stages=None, max_epochs=2),
    )
    b = batch(size=32)
    batches = [{k: {"data": v} for k, v in b.items()} for _ in range(3)]
    disc_before = [p.clone() for p in model.discriminator.parameters()]
    gen_before = [p.clone() for p in model.generator.parameters()]
    ctx_before = [p.clone() for p in model.context_encoder.parameters()]
    task = Task(model)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert not task.automatic_optimization
    assert any(not torch.equal(a, p) for a, p in zip(disc_before, model.discriminator.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(gen_before, model.generator.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(ctx_before, model.context_encoder.parameters()))
    opt_model, opt_disc = (o.optimizer for o in task.optimizers())
    assert isinstance(opt_model, torch.optim.RMSprop) and isinstance(opt_disc, torch.optim.Adam)
    assert {"train/discriminator", "train/adversarial", "train/seg"} <= set(trainer.callback_metrics)


def test_synthesis_metrics_global_and_local_regions():
    from strokelab.metrics import lesion_neighbourhood, synthesis_metrics

    rng = torch.Generator().manual_seed(0)
    ref = torch.rand(24, 24, 6, generator=rng).numpy()
    brain = torch.zeros(24, 24, 6, dtype=torch.bool).numpy()
    brain[2:22, 2:22] = True
    lesion = brain & False
    lesion[10:13, 10:13, 2:4] = True
    near = lesion_neighbourhood(lesion, (2.0, 2.0, 5.0), 4.0)
    assert near[10, 10, 2] and near[8, 10, 2] and not near[7, 10, 2] and not near[10, 10, 1]  # 4 mm: 2 voxels in-plane, 0 slices
    assert lesion_neighbourhood(lesion, (2.0, 2.0, 5.0), 5.0)[10, 10, 1]
    perfect = synthesis_metrics(ref, ref, brain, lesion, (2.0, 2.0, 5.0))
    assert (
        perfect["ssim"] == pytest.approx(1.0) and perfect["ssim_local"] == pytest.approx(1.0) and perfect["psnr"] == float("inf")
    )
    pred = ref.copy()
    pred[near] += 0.1  # an error around the lesion only
    m = synthesis_metrics(pred, ref, brain, lesion, (2.0, 2.0, 5.0))
    assert m["psnr_local"] < m["psnr"] and m["ssim_local"] < m["ssim"]
    none = synthesis_metrics(ref, ref, brain, lesion & False, (2.0, 2.0, 5.0))
    assert np.isnan(none["ssim_local"]) and np.isnan(none["psnr_local"]) and none["ssim"] == pytest.approx(1.0)


def test_validation_image_row_renders(tmp_path):
    from strokelab.previews import lesion_slice, render_row, save_png

    label = np.zeros((20, 20, 5), bool)
    label[5:9, 5:9, 3] = True
    assert lesion_slice(label, 5) == 3 and lesion_slice(None, 5) == 2
    image = np.random.default_rng(0).random((20, 20))
    rgb = render_row({"cbf": image, "pseudo_dwi": image}, {"pseudo_dwi": (0.0, 1.0)}, image, label[..., 3], label[..., 3], "case")
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[1] > rgb.shape[0]
    path = save_png(rgb, tmp_path / "a" / "case.png")
    assert path.stat().st_size > 1000


def test_report_wang_synthesis_layout_pools_several_run_folders(tmp_path, capsys):
    import pandas as pd

    from strokelab.report import main

    for run_dir, model, ssim in (("t2", "dwi_o", 0.5), ("t5", "dwi_o", 0.7), ("t5", "real_dwi", None)):
        folder = tmp_path / run_dir / "0" / "test" / model
        folder.mkdir(parents=True)
        row = {"case": [f"c{run_dir}"], "fold": [0], "dice": [0.5], "lesion_ml": [5.0], "pred_ml": [4.0]}
        if ssim is not None:
            row.update({"ssim": [ssim], "psnr": [20.0], "ssim_local": [0.4], "psnr_local": [15.0]})
        pd.DataFrame(row).to_csv(folder / "metrics.csv", index=False)
    assert main([str(tmp_path / "t5"), str(tmp_path / "t2"), "--layout", "wang_synthesis", "--order", "dwi_o,real_dwi"]) == 0
    out = capsys.readouterr().out
    assert "SSIM (global)" in out and "PSNR (dB, local)" in out and "Dice (%)" in out
    assert "0.6000±0.1414" in out  # dwi_o pooled over both folders
    assert "n/a" in out.split("real_dwi")[1].splitlines()[0]


def test_chain_in_3d():
    """The same chain on 3D patches (every network has a 3D form)."""
    unet3 = functools.partial(PlainUNet, out_channels=1, channels=WIDTHS, spatial_dims=3)
    model = chain(
        generator=unet3,
        extractor=unet3,
        segmenter=functools.partial(SLNet, out_channels=1, channels=WIDTHS, spatial_dims=3),
        context_encoder=ContextEncoder(spatial_dims=3),
        spatial_dims=3,
    )
    b = {k: v[..., None].expand(*v.shape, 8).contiguous() for k, v in batch().items()}
    model.train()
    out = model({m: b[m] for m in model.inputs})
    assert out["pseudo_dwi"].shape == (2, 1, 16, 16, 8) and out["pseudo_dwi_context"].shape == (2, 16)
    terms = model.losses(out, b)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and all(t > 0 for k, t in terms.items() if k != "loss")


def test_report_counts_a_repeated_baseline_row_once(tmp_path):
    """A multirun scores the threshold baseline beside every model of a fold: the pooled table counts each
    case once; two runs of one model that differ are both kept."""
    import pandas as pd

    from strokelab.report import collect_runs

    for job, model, dice in (("0", "threshold", 0.4), ("1", "threshold", 0.4), ("0", "slnet", 0.5), ("1", "slnet", 0.6)):
        folder = tmp_path / job / "test" / model
        folder.mkdir(parents=True)
        pd.DataFrame({"case": ["c1"], "fold": [0], "dice": [dice], "seconds": [float(job)]}).to_csv(
            folder / "metrics.csv", index=False
        )
    tables = collect_runs(tmp_path)
    assert len(tables["threshold"]) == 1 and len(tables["slnet"]) == 2
