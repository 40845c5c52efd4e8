"""Switchable normalisation (Luo et al. 2018, "Differentiable learning-to-normalize via switchable
normalization"), written from the paper, for 2D ``(N, C, H, W)`` and 3D ``(N, C, D, H, W)`` inputs.

For each sample ``n`` and channel ``c`` the layer computes

    y = gamma_c * (x - mu) / sqrt(sigma2 + eps) + beta_c,
    mu     = sum_k softmax(w_mean)_k * mu_k,
    sigma2 = sum_k softmax(w_var)_k  * sigma2_k,     k in {IN, LN, BN},

with separate mixing logits for the means and the variances. Only the instance-norm statistics are
computed from the activations (one fused ``var_mean`` over space); the layer-norm and batch-norm
statistics are derived from them (Luo et al., Eq. 6-7), so the layer costs little more than one norm:

    mu_LN = mean_c mu_IN,   sigma2_LN = mean_c sigma2_IN + mean_c (mu_IN - mu_LN)^2,
    mu_BN = mean_n mu_IN,   sigma2_BN = mean_n sigma2_IN + mean_n (mu_IN - mu_BN)^2

(the variance identities are the paper's ``E[x^2] - mu^2`` forms rewritten as sums of squared
deviations, which are the same numbers without float cancellation).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: Order of the statistics in the mixing logits ``mean_weight`` and ``var_weight``.
SWITCHABLE_STATS: tuple[str, ...] = ("instance", "layer", "batch")

try:  # autograd-aware collective: gradients of the reduced statistics flow back to every rank
    from torch.distributed.nn.functional import all_reduce as _differentiable_all_reduce
except ImportError:  # pragma: no cover - very old torch or a build without distributed
    _differentiable_all_reduce = None


def _instance_moments(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over the last axis of ``(N, C, S)``, each ``(N, C)``.

    ``torch.batch_norm_update_stats`` on the ``(1, N * C, S)`` view is the same numerically stable
    computation as ``var_mean`` but about twice as fast on CPU; ``var_mean`` is the fallback.
    """
    n, c, s = flat.shape
    try:
        mean, var = torch.batch_norm_update_stats(flat.reshape(1, n * c, s), None, None, 0.0)
        return mean.reshape(n, c), var.reshape(n, c)
    except (RuntimeError, AttributeError):  # pragma: no cover - backend without the fused kernel
        var, mean = torch.var_mean(flat, dim=2, correction=0)
        return mean, var


class _InstanceMoments(torch.autograd.Function):
    """``(N, C, S) -> (mean, biased variance)`` over S, with a one-pass fused backward
    ``dx = dmean / S + 2 dvar (x - mean) / S``."""

    @staticmethod
    def forward(ctx, flat: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = _instance_moments(flat)
        ctx.save_for_backward(flat, mean)
        return mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean: Tensor | None, grad_var: Tensor | None) -> Tensor:
        flat, mean = ctx.saved_tensors
        size = flat.shape[2]
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        k1 = grad_var * (2.0 / size)
        k0 = grad_mean / size - k1 * mean
        return torch.addcmul(k0.unsqueeze(2), flat, k1.unsqueeze(2))


class _ScaleShift(torch.autograd.Function):
    """``y = x * scale + shift`` with per-(sample, channel) ``scale`` and ``shift`` of shape ``(N, C)`` on
    ``(N, C, S)``; the backward computes ``dx = dy * scale``, ``dscale = sum_S dy x`` and
    ``dshift = sum_S dy`` in one fused pass (ATen's eval-mode batch-norm backward on the ``(1, N*C, S)``
    view with zero mean and unit variance)."""

    @staticmethod
    def forward(ctx, flat: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        ctx.save_for_backward(flat, scale)
        return torch.addcmul(shift.unsqueeze(2), flat, scale.unsqueeze(2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        flat, scale = ctx.saved_tensors
        n, c, s = flat.shape
        grad_out = grad_out.to(flat.dtype).contiguous()
        mask = [bool(m) for m in ctx.needs_input_grad]
        zeros = torch.zeros(n * c, dtype=flat.dtype, device=flat.device)
        ones = torch.ones(n * c, dtype=flat.dtype, device=flat.device)
        try:
            g_x, g_scale, g_shift = torch.ops.aten.native_batch_norm_backward(
                grad_out.reshape(1, n * c, s),
                flat.reshape(1, n * c, s),
                scale.reshape(n * c),
                zeros,
                ones,
                None,
                None,
                False,
                0.0,
                mask,
            )
        except RuntimeError:  # pragma: no cover - backend without the kernel
            g_x = grad_out * scale.unsqueeze(2) if mask[0] else None
            g_scale = (grad_out * flat).sum(2) if mask[1] else None
            g_shift = grad_out.sum(2) if mask[2] else None
        return (
            None if g_x is None else g_x.reshape(n, c, s),
            None if g_scale is None else g_scale.reshape(n, c),
            None if g_shift is None else g_shift.reshape(n, c),
        )


def _distributed_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over all ranks, differentiably when torch provides the autograd-aware collective."""
    if _differentiable_all_reduce is not None:
        return _differentiable_all_reduce(t, op=dist.ReduceOp.SUM)
    t = t.clone()  # fallback: the reduced value is right, but gradients only reach this rank's share
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class SwitchableNorm(nn.Module):
    """Switchable normalisation over instance, layer and batch statistics, for any number of spatial axes.

    Args:
        channels: number of channels ``C`` (axis 1 of the input).
        spatial_dims: 2 or 3 to insist on ``(N, C, H, W)`` or ``(N, C, D, H, W)`` inputs; ``None``
            accepts any input with at least one spatial axis.
        eps: added to the mixed variance.
        momentum: running-statistics update factor, as in ``nn.BatchNorm``: ``running = (1 - momentum)
            * running + momentum * batch`` (the running variance is the unbiased batch variance).
            ``None``: cumulative average over all training batches seen (``num_batches_tracked``).
        affine: learn the per-channel ``weight`` (gamma, init 1) and ``bias`` (beta, init 0).
        track_running_stats: as in ``nn.BatchNorm``: keep running mean/variance of the batch statistics
            (buffers ``running_mean``, ``running_var``, ``num_batches_tracked``) and use them for the BN
            part in eval mode. ``False``: no buffers, the BN part always uses the current batch. The IN
            and LN parts are per sample, in train and eval mode alike.
        sync: all-reduce the batch statistics across ``torch.distributed`` ranks in training mode, so
            that they are those of the global batch (like ``nn.SyncBatchNorm``; one all-reduce of the
            per-rank sums and counts per layer and step, differentiable). ``None`` (default): sync
            whenever ``torch.distributed`` is initialised with more than one rank. ``True`` without an
            initialised process group is the same as ``False``.

    Learnable mixing logits ``mean_weight`` and ``var_weight`` (3 each, order ``IN, LN, BN``, init 1,
    i.e. equal shares). The statistics are always computed in float32 (float64 for float64 input), also
    under bf16/fp16 autocast; the output has the input's dtype. A spatial extent of 1 gives zero
    instance variance and a zero instance-normalised value, never NaN.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        sync: bool | None = None,
    ):
        super().__init__()
        if channels < 1:
            raise ValueError(f"SwitchableNorm: channels must be >= 1, got {channels}")
        if spatial_dims is not None and spatial_dims < 1:
            raise ValueError(f"SwitchableNorm: spatial_dims must be >= 1 or None, got {spatial_dims}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SwitchableNorm: momentum must be in [0, 1] or None, got {momentum}")
        self.channels = int(channels)
        self.spatial_dims = None if spatial_dims is None else int(spatial_dims)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.sync = sync
        if self.affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.mean_weight = nn.Parameter(torch.ones(len(SWITCHABLE_STATS)))
        self.var_weight = nn.Parameter(torch.ones(len(SWITCHABLE_STATS)))
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, spatial_dims={self.spatial_dims}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, sync={self.sync}"
        )

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def mixing_weights(self) -> tuple[Tensor, Tensor]:
        """Softmax shares ``(mean shares, variance shares)`` of ``(IN, LN, BN)``."""
        return torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 3:
            raise ValueError(f"SwitchableNorm expects (N, C, *spatial) input, got shape {tuple(x.shape)}")
        if self.spatial_dims is not None and x.dim() != self.spatial_dims + 2:
            raise ValueError(f"SwitchableNorm was built for {self.spatial_dims} spatial dims, got input shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"SwitchableNorm was built for {self.channels} channels, got input shape {tuple(x.shape)}")

    def _sync_now(self) -> bool:
        if self.sync is False or _distributed_world_size() <= 1:
            return False
        return True

    def _batch_stats(self, mean_in: Tensor, var_in: Tensor, spatial_size: int) -> tuple[Tensor, Tensor, Tensor | float]:
        """Batch mean and (biased) variance per channel, derived from the instance statistics, and the
        number of values they summarise (all ranks when synced)."""
        n = mean_in.shape[0]
        if self.training and self._sync_now():
            # One all-reduce of the per-rank sums (weighted by the spatial size, so ranks may differ in
            # batch and spatial size) and the count. This needs raw second moments E[x^2] - mu^2 (the
            # single-process path uses the cancellation-free deviation form); both are float32 sums of
            # per-sample statistics, accurate unless channel means exceed their spread ~1000-fold.
            sq_in = var_in + mean_in * mean_in
            local = torch.cat([mean_in.sum(0) * spatial_size, sq_in.sum(0) * spatial_size])
            count = torch.full((1,), float(n * spatial_size), dtype=local.dtype, device=local.device)
            total = _all_reduce_sum(torch.cat([local, count]))
            count_all = total[-1]
            mean_bn = total[: self.channels] / count_all
            var_bn = (total[self.channels : 2 * self.channels] / count_all - mean_bn * mean_bn).clamp_min(0.0)
            return mean_bn, var_bn, count_all.detach()  # a tensor: no host sync
        mean_bn = mean_in.mean(0)
        var_bn = var_in.mean(0) + (mean_in - mean_bn).square().mean(0)
        return mean_bn, var_bn, float(n * spatial_size)

    @torch.no_grad()
    def _update_running_stats(self, mean_bn: Tensor, var_bn: Tensor, count: Tensor | float) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked.item())
        else:
            factor = float(self.momentum)
        if isinstance(count, Tensor):
            unbiased = var_bn * (count / (count - 1.0).clamp_min(1.0))
        else:
            unbiased = var_bn * (count / max(count - 1.0, 1.0))
        self.running_mean.lerp_(mean_bn.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        n, c = x.shape[0], x.shape[1]
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.reshape(n, c, -1).to(stat_dtype)
            spatial_size = flat.shape[2]
            mean_in, var_in = _InstanceMoments.apply(flat)  # (N, C) each

            mean_ln = mean_in.mean(1, keepdim=True)  # (N, 1)
            var_ln = var_in.mean(1, keepdim=True) + (mean_in - mean_ln).square().mean(1, keepdim=True)

            use_batch = self.training or not self.track_running_stats
            if use_batch:
                mean_bn, var_bn, count = self._batch_stats(mean_in, var_in, spatial_size)
                if self.training and self.track_running_stats:
                    self._update_running_stats(mean_bn.detach(), var_bn.detach(), count)
            else:
                mean_bn = self.running_mean.to(stat_dtype)
                var_bn = self.running_var.to(stat_dtype)

            w_mean = torch.softmax(self.mean_weight.to(stat_dtype), 0)
            w_var = torch.softmax(self.var_weight.to(stat_dtype), 0)
            mean = w_mean[0] * mean_in + w_mean[1] * mean_ln + w_mean[2] * mean_bn
            var = w_var[0] * var_in + w_var[1] * var_ln + w_var[2] * var_bn

            scale = torch.rsqrt(var + self.eps)  # (N, C)
            if self.affine:
                scale = scale * self.weight.to(stat_dtype)
                shift = self.bias.to(stat_dtype) - mean * scale
            else:
                shift = -mean * scale
            out = _ScaleShift.apply(flat, scale, shift)
        return out.reshape(x.shape).to(x.dtype)
