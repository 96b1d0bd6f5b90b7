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


def predicted_kl(fisher: torch.Tensor, mean_square: torch.Tensor, step: torch.Tensor) -> float:
    """1/2 sum_c F_c min(step_c^2 / 12, E[x_c^2]): the KL per position that rounding with ``step`` adds
    (stac.sensitivity), to second order."""
    noise = torch.minimum(step.double() ** 2 / 12, mean_square.double())
    return 0.5 * float((fisher.double() * noise).sum())


def sensitivity_thresholds(fisher: dict[str, torch.Tensor], mean_square: dict[str, torch.Tensor],
                           fanout: dict[str, int], floor: dict[str, torch.Tensor], max_level: dict[str, int],
                           kl_budget: float) -> tuple[dict[str, torch.Tensor], float]:
    """Thresholds that spend the fewest synaptic ops for a predicted KL of ``kl_budget``.

    A channel's spikes fall by about a third per doubling of its step D_c and each costs its fan-out;
    its share of the KL grows as F_c D_c^2. Minimising synaptic ops for a given KL (a Lagrange multiplier
    over all channels of all encoders) gives D_c = k sqrt(fanout / F_c), one k for the whole model, found by
    bisection so that the predicted KL meets the budget. The threshold is D_c times the encoder's largest
    level, and never below ``floor`` (margin x the calibration maximum: no value near what calibration saw
    is clipped). Returns the thresholds by encoder and the predicted KL.
    """
    if not kl_budget > 0:
        raise ValueError(f"kl_budget must be positive, got {kl_budget!r}")
    names = list(floor)
    f = {n: fisher[n].double() for n in names}
    msq = {n: mean_square[n].double() for n in names}
    low = {n: floor[n].double() for n in names}
    shape = {n: torch.sqrt(fanout[n] / f[n].clamp_min(1e-30)) * max_level[n] for n in names}

    def at(k: float) -> tuple[dict[str, torch.Tensor], float]:
        th = {n: torch.maximum(k * shape[n], low[n]) for n in names}
        kl = sum(predicted_kl(f[n], msq[n], th[n] / max_level[n]) for n in names)
        return th, kl

    finest = at(0.0)
    if finest[1] > kl_budget:
        raise ValueError(
            f"kl_budget {kl_budget:g} is below the smallest predicted KL reachable with these timesteps and "
            f"margins ({finest[1]:.3g}, every threshold at its floor): raise the budget or the timesteps, or "
            f"lower threshold_margin")
    lo, hi = 0.0, 1.0  # invariant once found: KL(lo) <= budget < KL(hi); KL grows with k
    while at(hi)[1] <= kl_budget:
        lo, hi = hi, hi * 16
        if hi > 1e30:
            raise ValueError(f"kl_budget {kl_budget:g} is so large that every encoder could stay silent")
    for _ in range(300):
        mid = (lo * hi) ** 0.5 if lo > 0 else hi / 16
        if at(mid)[1] <= kl_budget:
            lo = mid
        else:
            hi = mid
        if lo > 0 and hi / lo < 1 + 1e-6:
            break
    th, kl = at(lo)
    return {n: t.float() for n, t in th.items()}, kl
