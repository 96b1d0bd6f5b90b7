"""Spiking neurons of STAC, built on SpikingJelly's charge -> fire -> reset interface.

Two neurons encode a real value into a train of signed binary spikes (+1, 0, -1 per step) over T steps.
Both work in *normalised* units (the encoder divides its input by a per-channel unit first) and are
designed so that every membrane update is exact in float32: the closed-form engine can then predict every
spike from integer arithmetic, and the two engines agree spike for spike (see ``stac.coding``).

SignedIFNode (rate coding), with a constant input current u in [-1, 1] per step:

    H[t] = V[t-1] + u                      V[-1] = 1/2 (half-threshold start: rounds instead of truncating)
    S[t] = +1 if H[t] >= 1, -1 if H[t] < 0, else 0
    V[t] = H[t] - S[t]                     (soft reset by one threshold)

BitPlaneNode (binary-weighted spike timing): the input is injected once at t=0; the weight of a spike
halves every step, most significant step first (w_t = 2^(T-1-t)), and so does the firing threshold:

    H[t] = V[t-1] + X[t]                   X = (u, 0, 0, ...)
    S[t] = +1 if H[t] >= theta_t, -1 if H[t] < -theta_t, else 0
    V[t] = H[t] - S[t] * w_t               (soft reset by the spike's weight)
    theta_t = ceil(c * w_t) - 1/2

c = 1 gives plain signed binary digits; c = 3/4 gives a signed-digit code in which a neuron may answer a
value just below a power of two with +1 now and -1 later, which needs fewer spikes for the same value.
Thresholds sit on half-integers, so a decision depends only on floor(H + 1/2): the train is a function
of the rounded input alone.

With m steps per octave (``steps_per_octave``) the spike weights are denser: the distinct integers
round(2^(i/m)), i = 0 .. m*T - 1, largest first (m = 3: ..., 32, 25, 20, 16, 13, 10, 8, 6, 5, 4, 3, 2, 1).
The top ``coarse_octaves`` octaves of the range (above the calibration maximum at the default margins,
reached only by outliers) keep one step each, powers of two, so that they cost one step, not m.
The same integers -(2^T - 1) .. 2^T - 1 stay exactly representable (any c in [1/2, 1) with weights
falling by at most 2x per step down to 1), but a neuron needs fewer spikes for them: one spike lands
within 11.5% (m = 3) or 8.6% (m = 4) of a value instead of 33%, at the price of more steps (about m*T). A spike's weight
still only falls from step to step, so an output accumulates the train by Horner's rule,
acc = (w_(t-1) / w_t) acc + W s_t.
"""

from __future__ import annotations

import math

import torch
from spikingjelly.activation_based.neuron import SimpleBaseNode

from .kernels import applies as _kernel_applies, bitplane_run as _kernel_bitplane_run


def _signed_fire(v: torch.Tensor, threshold: float, negative_threshold: float) -> torch.Tensor:
    """+1 where v >= threshold, -1 where v < negative_threshold, 0 elsewhere (in v's dtype)."""
    return (v >= threshold).to(v.dtype) - (v < negative_threshold).to(v.dtype)


@torch.jit.script
def _signed_if_multistep(u: torch.Tensor, v0: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SignedIFNode's dynamics for a constant current ``u`` over ``steps`` steps, compiled (same arithmetic).

    Returns (spikes [steps, *u.shape], final membrane).
    """
    v = torch.full_like(u, v0)
    out = torch.empty((steps,) + u.shape, dtype=u.dtype, device=u.device)
    for t in range(steps):
        v = v + u
        s = out[t]
        torch.sub((v >= 1.0).to(v.dtype), (v < 0.0).to(v.dtype), out=s)
        v = v - s
    return out, v


@torch.jit.script
def _bitplane_multistep(u: torch.Tensor, weights: list[float],
                        thresholds: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """BitPlaneNode's dynamics for input ``u`` injected at t=0, compiled (same arithmetic).

    Returns (spikes [T, *u.shape], final membrane).
    """
    v = u.clone()
    out = torch.empty((len(weights),) + u.shape, dtype=u.dtype, device=u.device)
    for t in range(len(weights)):
        s = out[t]
        torch.sub((v >= thresholds[t]).to(v.dtype), (v < -thresholds[t]).to(v.dtype), out=s)
        v.sub_(s * weights[t])
    return out, v


class SignedIFNode(SimpleBaseNode):
    """Signed integrate-and-fire neuron with soft reset and a half-threshold initial membrane.

    Threshold is 1 in normalised units; a neuron fires at most one spike per step, so T steps encode
    2T + 1 levels. State: membrane ``v``, cleared by ``reset()``.
    """

    def __init__(self, step_mode: str = "m"):
        super().__init__(v_threshold=1.0, v_reset=None, step_mode=step_mode)
        self.set_reset_value("v", 0.5)
        self.v = 0.5

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + x

    def neuronal_fire(self) -> torch.Tensor:
        return _signed_fire(self.v, 1.0, 0.0)

    def neuronal_reset(self, spike: torch.Tensor) -> None:
        self.v = self.v - spike

    def run_constant(self, u: torch.Tensor, steps: int) -> torch.Tensor:
        """Multi-step run from a fresh state with the constant current ``u``: [steps, *u.shape] spikes.

        The same charge -> fire -> reset arithmetic as ``single_step_forward``, in one compiled loop (the
        way SpikingJelly's own neurons fuse their multi-step path). Leaves the final membrane in ``v``.
        """
        train, self.v = _signed_if_multistep(u, 0.5, steps)
        return train


class BitPlaneNode(SimpleBaseNode):
    """Signed neuron whose spike weight and firing threshold fall every step (most significant first).

    ``sparsity`` is c in the module docstring: 1.0 for binary digits, 0.75 for signed digits. The
    neuron encodes the integers -(2^T - 1) .. 2^T - 1 for ``timesteps`` T; it runs T steps (the weight
    halves every step) or, with ``steps_per_octave`` m > 1, one step per weight of the denser schedule
    (``steps``). State: membrane ``v`` and step counter ``t``.
    """

    def __init__(self, timesteps: int, sparsity: float = 1.0, step_mode: str = "m", steps_per_octave: int = 1,
                 coarse_octaves: int = 0):
        super().__init__(v_threshold=1.0, v_reset=None, step_mode=step_mode)
        if timesteps < 1:
            raise ValueError(f"BitPlaneNode needs timesteps >= 1, got {timesteps}")
        if not 0.5 < sparsity <= 1.0:
            raise ValueError(f"BitPlaneNode sparsity must lie in (0.5, 1], got {sparsity}")
        if steps_per_octave > 1 and sparsity >= 1.0:
            raise ValueError("a denser step schedule (steps_per_octave > 1) needs sparsity < 1 to represent "
                             "every level exactly")
        self.timesteps = timesteps
        self.steps_per_octave = steps_per_octave
        self.sparsity = sparsity
        self.coarse_octaves = coarse_octaves
        self.step_weights = step_weights_bitplane(timesteps, steps_per_octave, coarse_octaves)
        self.steps = len(self.step_weights)
        self.thresholds = [math.ceil(sparsity * w) - 0.5 for w in self.step_weights]
        self._float_weights = [float(w) for w in self.step_weights]
        self._kernel_tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_memory("t", 0)

    def kernel_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 CPU step weights and thresholds for the compiled loop (exact: powers of two and
        half-integers). Made on first use, not in ``__init__``: transformers' ``from_pretrained`` builds
        modules on the meta device, where a plain tensor attribute would never get real memory."""
        tables = self._kernel_tables
        if tables is None:
            tables = (torch.tensor(self._float_weights, dtype=torch.float32, device="cpu"),
                      torch.tensor(self.thresholds, dtype=torch.float32, device="cpu"))
            self._kernel_tables = tables
        return tables

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + x

    def neuronal_fire(self) -> torch.Tensor:
        if self.t >= self.steps:
            raise RuntimeError(
                f"BitPlaneNode ran past its {self.steps} steps; call reset() between input values"
            )
        theta = self.thresholds[self.t]
        return _signed_fire(self.v, theta, -theta)

    def neuronal_reset(self, spike: torch.Tensor) -> None:
        self.v = self.v - spike * float(self.step_weights[self.t])
        self.t = self.t + 1

    def run_pulse(self, u: torch.Tensor) -> torch.Tensor:
        """Multi-step run from a fresh state with ``u`` injected at t=0: [T, *u.shape] spikes.

        The same charge -> fire -> reset arithmetic as ``single_step_forward``, in one compiled loop (the
        way SpikingJelly's own neurons fuse their multi-step path): the C loop of ``stac.kernels`` where it
        applies, else TorchScript; both bit-identical. Leaves the node at t = T.
        """
        if _kernel_applies(u):
            train, self.v = _kernel_bitplane_run(u, *self.kernel_tables())
        else:
            train, self.v = _bitplane_multistep(u, self._float_weights, self.thresholds)
        self.t = self.steps
        return train

    def extra_repr(self) -> str:
        extra = (f", steps_per_octave={self.steps_per_octave}, coarse_octaves={self.coarse_octaves}, steps={self.steps}"
                 if self.steps_per_octave > 1 else "")
        return f"timesteps={self.timesteps}, sparsity={self.sparsity}{extra}"


def step_weights_bitplane(timesteps: int, steps_per_octave: int = 1, coarse_octaves: int = 0) -> list[int]:
    """Weight of a spike at each step, largest first: 2^(T-1), ..., 2, 1; with m steps per octave the
    distinct integers round(2^(i/m)), i = 0 .. m*(T - coarse_octaves) - 1 (m = 2: ..., 16, 11, 8, 6, 4,
    3, 2, 1), and the powers of two above them."""
    binary = [2 ** (timesteps - 1 - t) for t in range(timesteps)]
    if steps_per_octave == 1:
        return binary
    m = steps_per_octave
    dense = {round(2 ** (i / m)) for i in range(m * (timesteps - coarse_octaves))}
    return sorted(dense | set(binary), reverse=True)


def bitplane_digits(levels: torch.Tensor, timesteps: int, sparsity: float, steps_per_octave: int = 1,
                    coarse_octaves: int = 0) -> torch.Tensor:
    """The spike train a BitPlaneNode emits for integer inputs ``levels``, computed on integers.

    Returns int8 digits of shape [steps, *levels.shape]. Mirrors BitPlaneNode decision for decision
    (thresholds ceil(c*w) on integers are the half-integer thresholds on the rounded membrane).
    """
    r = levels.to(torch.int64)
    digits = []
    for w in step_weights_bitplane(timesteps, steps_per_octave, coarse_octaves):
        k = math.ceil(sparsity * w)
        s = (r >= k).to(torch.int64) - (r <= -k).to(torch.int64)
        r = r - s * w
        digits.append(s.to(torch.int8))
    return torch.stack(digits)


def bitplane_spike_count(levels: torch.Tensor, timesteps: int, sparsity: float,
                         steps_per_octave: int = 1, coarse_octaves: int = 0) -> torch.Tensor:
    """Number of spikes a BitPlaneNode emits per neuron for integer inputs ``levels`` (int64)."""
    r = levels.to(torch.int64)
    count = torch.zeros_like(r)
    for w in step_weights_bitplane(timesteps, steps_per_octave, coarse_octaves):
        k = math.ceil(sparsity * w)
        s = (r >= k).to(torch.int64) - (r <= -k).to(torch.int64)
        r = r - s * w
        count += s.abs()
    return count
