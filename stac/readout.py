"""The lm_head as a readout whose trailing outputs stop early (``SpikingConfig.head_prune_bits``).

The lm_head's input neurons fire most significant step first, so after the steps of weight at least
2^(T - bits) every output's accumulator holds its logit to about ``bits`` bits of the input. SpikingReadout
takes one decision there: the outputs within ``margin`` (in logit units, nats) of the best one receive the
remaining spikes; the others keep that coarse value, and their synapses are skipped for the remaining
steps. An output more than ``margin`` behind would need the remaining, finer spikes to move it by more than
``margin`` to win, so the argmax is kept in practice (measured, not guaranteed: docs/levers.md (n)); the
tail of the distribution is coarser. Both engines compute the same two stages:

    closed form   coarse = W (partial levels * unit) + b;  fine = W[kept] (remaining levels * unit)
    time-stepped  coarse = the first steps' spikes through every synapse; fine = the later steps' spikes
                  through the kept outputs' synapses only

What a forward kept is recorded per position (``last_kept``, a count) for the energy meter to read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import spike_synapse as _kernel_spike_synapse
from .layers import SYNAPSES, SpikeCode, SpikeEncoder, SpikingLinear, _parameter_dtype

# Above this share of the outputs kept somewhere in a batch, the fine stage runs over all of them (a
# gather of most of the weights costs more than it saves).
_GATHER_SHARE = 0.25


class SpikingReadout(SpikingLinear):
    """A SpikingLinear whose outputs that fall ``margin`` behind after the first ``bits`` bits stop there."""

    def __init__(self, base_layer: nn.Module, encoder: SpikeEncoder, bits: float, margin: float):
        super().__init__(base_layer, encoder)
        coding = encoder.coding
        if not hasattr(coding, "partial_levels"):
            raise ValueError(f"an early-stopping readout needs a most-significant-first coding, not {coding.name!r}")
        self.bits = float(bits)
        self.margin = float(margin)
        # steps delivered to every output before the decision
        self.split = coding.steps_above(2.0 ** (coding.timesteps - self.bits))
        if not 0 < self.split < coding.steps:
            raise ValueError(f"head_prune_bits={bits} leaves {self.split} of the lm_head input's {coding.steps} "
                             f"steps before the decision; it must leave at least one on each side")
        self.__dict__["last_kept"] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self._encoder[0](x)
        base = self._modules["base_layer"]
        dtype = _parameter_dtype(base)
        split = self.split
        if code.train is None:
            coarse_levels = code.coding.partial_levels(code.levels, split)
            coarse = base((coarse_levels * code.unit).to(dtype))
            rest = ((code.levels - coarse_levels) * code.unit).to(dtype)
            later = None
        else:
            first = SpikeCode(code.coding, code.unit, code.step_weights[:split], train=code.train[:split])
            later = SpikeCode(code.coding, code.unit, code.step_weights[split:], train=code.train[split:])
            coarse = self.train_sum(first, base)
            if base.bias is not None:
                coarse = coarse + base.bias
            rest = None
        keep = coarse >= coarse.amax(-1, keepdim=True) - self.margin
        self.__dict__["last_kept"] = keep.sum(-1)
        outputs = coarse.shape[-1]
        columns = keep.reshape(-1, outputs).any(0).nonzero().squeeze(1)
        weight = SYNAPSES[type(base)](base)  # [out, in]
        if torch.compiler.is_compiling() or weight.device.type == "meta" or columns.numel() > _GATHER_SHARE * outputs:
            columns = None  # every output through the fine stage, then masked
        fine = self._fine(base, weight, columns, rest, later)
        if columns is None:
            return coarse + fine * keep
        out = coarse.clone()
        out[..., columns] += fine * keep[..., columns]
        return out

    def _fine(self, base: nn.Module, weight: torch.Tensor, columns: torch.Tensor | None,
              rest: torch.Tensor | None, later: SpikeCode | None) -> torch.Tensor:
        """The remaining input through the synapses of ``columns`` (all outputs if None), without bias."""
        if later is None:  # closed form: one product of the remaining levels
            return F.linear(rest, weight if columns is None else weight[columns])
        if columns is None:
            return self.train_sum(later, base)
        if self._event_driven(base, later.train):
            return _kernel_spike_synapse(later.train, later.unit, later.step_weights,
                                 self._synapse_rows(base)[:, columns])
        return later.sum_steps(F.linear(later.scaled(_parameter_dtype(base)), weight[columns]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, margin={self.margin}, steps_before_decision={self.split}"
