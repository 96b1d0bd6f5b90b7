"""Spike codings: how a real activation becomes a spike train, and the closed form of that train.

A coding turns an activation x (per input channel c, with calibrated threshold theta_c) into

    u = normalise(x, theta)            (float32, exact grid; see each coding)
    train = simulate(node, u)          [T, ..., d] spikes in {-1, 0, +1}    time-stepped engine
    levels = levels(u)                 [..., d] integers                    closed-form engine

with the identity  sum_t step_weight[t] * train[t] == levels  holding exactly, and the decoded value
x_hat = unit(theta) * levels. ``spike_count(levels)`` gives the number of spikes each neuron emits without
running the T loop. Codings are looked up by name in ``CODINGS``.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from spikingjelly.activation_based.neuron import SimpleBaseNode

from .kernels import applies as _kernel_applies, bitplane_levels as _kernel_bitplane_levels
from .kernels import bitplane_spike_count as _kernel_bitplane_spike_count
from .neurons import BitPlaneNode, SignedIFNode, bitplane_digits, bitplane_spike_count, step_weights_bitplane

# Rate-coded input currents are rounded to multiples of 2^-12 of the threshold: sums of T such currents
# are exact in float32 (for T < 4096), which the closed form relies on. The rounding error (1/8192 of a
# threshold) is far below one rate-coded level (1/T).
_RATE_GRID = 4096.0


@torch.jit.script
def _bitplane_levels(x: torch.Tensor, unit: torch.Tensor, max_level: float) -> torch.Tensor:
    """``BitPlaneCoding.levels(BitPlaneCoding.normalise(x))`` in one compiled call (the same arithmetic)."""
    u = (x.float() / unit).clamp(-max_level, max_level)
    f = torch.floor(u)
    return f + (u - f >= 0.5).to(u.dtype)


class Coding:
    """Base class of a spike coding with T timesteps."""

    name: str = ""
    max_timesteps: int = 0
    # Codings that can spread their spike weights over more steps (``steps_per_octave`` > 1).
    max_steps_per_octave: int = 1

    def __init__(self, timesteps: int, steps_per_octave: int = 1, coarse_octaves: int = 0):
        for label, value in (("timesteps", timesteps), ("steps_per_octave", steps_per_octave),
                             ("coarse_octaves", coarse_octaves)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{label} must be an int, got {type(value).__name__}")
        if not 1 <= timesteps <= self.max_timesteps:
            raise ValueError(
                f"coding {self.name!r} needs 1 <= timesteps <= {self.max_timesteps}, got {timesteps}"
            )
        if not 1 <= steps_per_octave <= self.max_steps_per_octave:
            raise ValueError(
                f"coding {self.name!r} needs 1 <= steps_per_octave <= {self.max_steps_per_octave}, "
                f"got {steps_per_octave}" + ("" if self.max_steps_per_octave > 1 else
                                             " (denser step schedules exist for signed_digit only)")
            )
        if not 0 <= coarse_octaves <= self.max_timesteps:
            raise ValueError(f"coarse_octaves must lie in 0 .. {self.max_timesteps}, got {coarse_octaves}")
        self.timesteps = timesteps
        self.steps_per_octave = steps_per_octave
        # with steps_per_octave > 1: how many top octaves keep one step each (no effect otherwise)
        self.coarse_octaves = coarse_octaves

    @property
    def steps(self) -> int:
        """Steps a neuron actually runs per input: T, or more with a denser step schedule."""
        return self.timesteps

    # What one level is worth in input units, per channel.
    def unit(self, threshold: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normalise(self, x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_sequence(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def make_node(self) -> SimpleBaseNode:
        raise NotImplementedError

    def simulate(self, node: SimpleBaseNode, u: torch.Tensor) -> torch.Tensor:
        """Run a freshly reset ``node`` on ``u`` for T steps: the spike train [T, *u.shape]."""
        raise NotImplementedError

    def step_weights(self) -> torch.Tensor:
        raise NotImplementedError

    def levels(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run(self, node: SimpleBaseNode, x: torch.Tensor, threshold: torch.Tensor,
            unit: torch.Tensor) -> torch.Tensor:
        """``simulate(node, normalise(x, threshold))``; ``unit`` is ``unit(threshold)``, passed in so callers can cache it."""
        return self.simulate(node, self.normalise(x, threshold))

    def closed_form(self, x: torch.Tensor, threshold: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """``levels(normalise(x, threshold))``; ``unit`` is ``unit(threshold)``, passed in so callers can cache it."""
        return self.levels(self.normalise(x, threshold))

    def closed_form_scaled(self, x: torch.Tensor, threshold: torch.Tensor,
                           unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(levels, levels * unit): the closed form and the float32 input it gives the synapses."""
        levels = self.closed_form(x, threshold, unit)
        return levels, levels * unit

    def spike_count(self, levels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def max_level(self) -> int:
        raise NotImplementedError


class RateCoding(Coding):
    """Signed rate coding: a SignedIFNode driven by a constant current for T steps; 2T+1 levels."""

    name = "rate"
    max_timesteps = 4095

    def unit(self, threshold):
        return threshold / self.timesteps

    def normalise(self, x, threshold):
        u = (x.float() / threshold).clamp(-1.0, 1.0)
        return torch.round(u * _RATE_GRID) / _RATE_GRID

    def input_sequence(self, u):
        return u.unsqueeze(0).expand(self.timesteps, *u.shape)

    def make_node(self):
        return SignedIFNode(step_mode="m")

    def simulate(self, node, u):
        return node.run_constant(u, self.timesteps)

    def step_weights(self):
        return torch.ones(self.timesteps)

    def levels(self, u):
        # Membrane after T steps: 1/2 + T*u - N, kept in [0, 1) while |u| <= 1, so N = floor(1/2 + T*u).
        return torch.floor(0.5 + self.timesteps * u)

    def spike_count(self, levels):
        # With a constant current of one sign the neuron only ever fires spikes of that sign.
        return levels.abs().to(torch.int64)

    @property
    def max_level(self):
        return self.timesteps


class BitPlaneCoding(Coding):
    """Binary-weighted spike timing: one BitPlaneNode per value, 2^T - 1 levels per sign."""

    name = "bitplane"
    max_timesteps = 20
    sparsity = 1.0

    def __init__(self, timesteps: int, steps_per_octave: int = 1, coarse_octaves: int = 0):
        super().__init__(timesteps, steps_per_octave, coarse_octaves)
        # a plain attribute, not a cached_property: torch.export cannot trace the latter's lock
        self._weights = step_weights_bitplane(timesteps, steps_per_octave, coarse_octaves)

    def unit(self, threshold):
        return threshold / self.max_level

    def normalise(self, x, threshold):
        return self._normalise(x, self.unit(threshold))

    def _normalise(self, x, unit):
        m = float(self.max_level)
        return (x.float() / unit).clamp(-m, m)

    def input_sequence(self, u):
        seq = torch.zeros(self.steps, *u.shape, dtype=u.dtype, device=u.device)
        seq[0] = u
        return seq

    @property
    def steps(self) -> int:
        return len(self._weights)

    def make_node(self):
        return BitPlaneNode(self.timesteps, self.sparsity, step_mode="m", steps_per_octave=self.steps_per_octave,
                            coarse_octaves=self.coarse_octaves)

    def simulate(self, node, u):
        return node.run_pulse(u)

    def step_weights(self):
        return torch.tensor(self._weights, dtype=torch.float32)

    def levels(self, u):
        # floor(u + 1/2) without forming u + 1/2, which can round up across an integer in float32.
        f = torch.floor(u)
        return f + (u - f >= 0.5).to(u.dtype)

    def closed_form(self, x, threshold, unit):
        return _bitplane_levels(x, unit, float(self.max_level))

    def run(self, node, x, threshold, unit):
        return self.simulate(node, self._normalise(x, unit))  # the cached unit, not unit(threshold) again

    def closed_form_scaled(self, x, threshold, unit):
        if _kernel_applies(x):
            return _kernel_bitplane_levels(x, unit, float(self.max_level))
        return super().closed_form_scaled(x, threshold, unit)

    @functools.cached_property
    def _count_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 step weights and integer firing thresholds ceil(c * w), for the compiled spike count."""
        w = self._weights
        k = [math.ceil(self.sparsity * x) for x in w]
        return torch.tensor(w, dtype=torch.int64, device="cpu"), torch.tensor(k, dtype=torch.int64, device="cpu")

    def spike_count(self, levels):
        if _kernel_applies(levels):
            return _kernel_bitplane_spike_count(levels, *self._count_tables)
        return bitplane_spike_count(levels, self.timesteps, self.sparsity, self.steps_per_octave, self.coarse_octaves)

    @property
    def max_level(self):
        return 2**self.timesteps - 1

    def steps_above(self, weight: float) -> int:
        """How many steps come first whose spike weight is at least ``weight`` (weights only fall)."""
        return sum(1 for w in self._weights if w >= weight)

    def partial_levels(self, levels: torch.Tensor, steps: int) -> torch.Tensor:
        """What the first ``steps`` spikes of each neuron code: sum over t < steps of w_t s_t, for integer
        ``levels`` (any dtype holding them exactly), by the neuron's own firing rule (stac.neurons). Up to
        T = 16 one lookup in a table of every level (made once per ``steps`` and device), else step by step."""
        if self.timesteps <= 16 and not torch.compiler.is_compiling():
            key = (steps, levels.device, levels.dtype)
            tables = self.__dict__.setdefault("_partial_tables", {})
            table = tables.get(key)
            if table is None:
                every = torch.arange(-self.max_level, self.max_level + 1, dtype=torch.float64)
                table = tables[key] = self._partial_by_steps(every, steps).to(device=levels.device, dtype=levels.dtype)
            return table[(levels + self.max_level).long()]
        return self._partial_by_steps(levels, steps)

    def _partial_by_steps(self, levels: torch.Tensor, steps: int) -> torch.Tensor:
        r = levels
        for w in self._weights[:steps]:
            k = math.ceil(self.sparsity * w)
            r = r - ((r >= k).to(r.dtype) - (r <= -k).to(r.dtype)) * w
        return levels - r

    def spikes_per_step(self, levels: torch.Tensor) -> torch.Tensor:
        """Spikes fired at each step, summed over the last dimension: [steps, *levels.shape[:-1]] int64."""
        digits = bitplane_digits(levels, self.timesteps, self.sparsity, self.steps_per_octave, self.coarse_octaves)
        return digits.abs().sum(-1, dtype=torch.int64)


class SignedDigitCoding(BitPlaneCoding):
    """Bit-plane timing with a signed-digit firing rule: same levels as ``bitplane``, fewer spikes.

    With ``steps_per_octave`` m > 1 the spike weights are denser (``stac.neurons.step_weights_bitplane``)
    below the top ``coarse_octaves`` octaves: the same levels again, with fewer spikes and about m times
    the steps. Each m has the firing fraction
    c that gave the fewest spikes on SmolLM2-135M's encoder inputs (docs/experiments/dense_schedule.py).
    """

    name = "signed_digit"
    max_steps_per_octave = 8
    SPARSITY_BY_STEPS_PER_OCTAVE = {1: 0.75, 2: 0.85, 3: 0.9, 4: 0.93, 5: 0.93, 6: 0.95, 7: 0.93, 8: 0.95}

    def __init__(self, timesteps: int, steps_per_octave: int = 1, coarse_octaves: int = 0):
        super().__init__(timesteps, steps_per_octave, coarse_octaves)
        self.sparsity = self.SPARSITY_BY_STEPS_PER_OCTAVE[steps_per_octave]


CODINGS: dict[str, Callable[[int], Coding]] = {
    c.name: c for c in (RateCoding, BitPlaneCoding, SignedDigitCoding)
}


def make_coding(name: str, timesteps: int, steps_per_octave: int = 1, coarse_octaves: int = 0) -> Coding:
    """Look up a coding by name; unknown names raise a ValueError listing the known ones."""
    try:
        cls = CODINGS[name]
    except KeyError:
        raise ValueError(f"unknown spike coding {name!r}; known codings: {sorted(CODINGS)}") from None
    return cls(timesteps, steps_per_octave, coarse_octaves)


def log2_levels(coding: Coding) -> float:
    """Bits of resolution per sign a coding gives (for reports)."""
    return math.log2(coding.max_level + 1)
