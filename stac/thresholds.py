"""Firing thresholds from calibration statistics.

The base rule: an encoder channel's threshold is ``threshold_margin`` times the largest |x| calibration
saw on that channel (never below ``min_threshold``). The threshold sets the channel's step (the value of
one level), hence both its rounding error and its spikes.

With ``threshold_weighting`` = alpha > 0 the thresholds of each encoder are also moved toward
``1 / ||W[:, c]||``, the column norm of the synapses the channel drives (summed over the consumers: q/k/v,
gate/up). A channel's rounding error reaches the outputs scaled by that norm, so for a given spike budget
the output error is smallest when every channel's step times its column norm is the same (alpha = 1);
alpha in (0, 1) goes part of the way. Two guards keep it a redistribution, not a new budget:
- the geometric mean of the encoder's thresholds is kept (so the spikes stay about the same), and
- no threshold goes below the calibration maximum of its channel (``threshold / margin``), so no value
  seen on calibration text is clipped.
Measured in docs/levers.md (g).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def calibrated(channel_max: torch.Tensor, margin: float, min_threshold: float) -> torch.Tensor:
    """``margin * channel_max``, floored at ``min_threshold`` (channels calibration never saw fire)."""
    return (channel_max.float() * margin).clamp_min(min_threshold)


def column_norms(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """sqrt(sum over consumers of ||W[:, c]||^2) per input channel c, for weights given as [out, in]."""
    if not weights:
        raise ValueError("column_norms needs the weights of at least one consumer")
    return torch.sqrt(sum((w.detach().float() ** 2).sum(0) for w in weights))


def weighted(threshold: torch.Tensor, norms: torch.Tensor, alpha: float, margin: float) -> torch.Tensor:
    """Thresholds moved toward ``1 / norms`` by exponent ``alpha``, with the encoder's geometric mean kept
    and none below ``threshold / margin`` (the calibration maximum)."""
    if alpha == 0:
        return threshold
    if threshold.shape != norms.shape:
        raise ValueError(f"{tuple(threshold.shape)} thresholds for {tuple(norms.shape)} column norms")
    threshold = threshold.float()
    floor = threshold / margin
    scaled = threshold * norms.float().clamp_min(1e-12)
    log_scaled = scaled.log()
    moved = threshold * torch.exp(alpha * (log_scaled.mean() - log_scaled))
    moved = torch.maximum(moved, floor)
    moved = moved * torch.exp(threshold.log().mean() - moved.log().mean())
    return torch.maximum(moved, floor)
