"""The lm_head as a readout whose trailing outputs stop early (``SpikingConfig.head_prune``).

The lm_head's input neurons fire most significant step first, so after the steps of weight at least
2^(T - bits) every output's accumulator holds its logit to about ``bits`` bits of the input. SpikingReadout
takes a decision there for each (bits, margin) stage: the outputs within ``margin`` (logit units, nats) of
the best one still running receive the later spikes; the others keep their value so far, and their
synapses are skipped for every later step. An output more than ``margin`` behind would need the later,
finer spikes to move it by more than that to win, so the argmax is kept in practice (measured, not
guaranteed: docs/levers.md (n)); the tail of the distribution is coarser. Both engines run the same
segments of steps between decisions:

    closed form   the first segment's levels through every synapse (+ bias), each later segment's levels
                  through the synapses of the outputs still running
    time-stepped  the same, with each segment's spikes instead of its levels

At decode sizes (up to 16 positions) the closed form runs each segment through the compiled row kernel
(``stac.kernels.rows_linear``), which reads only the rows of the outputs still running, in place; a gather
of those rows would copy them first. On the reference CPU it also beats torch's matmul for the whole
49,152 x 576 head (3.1 ms against 11.4 ms per token, docs/experiments/kernel_micro.py).

What each decision kept is recorded per position (``last_kept``, counts) for the energy meter to read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import applies as _kernel_applies
from .kernels import rows_linear as _kernel_rows_linear
from .kernels import spike_synapse as _kernel_spike_synapse
from .layers import SYNAPSES, SpikeCode, SpikeEncoder, SpikingLinear, _parameter_dtype, _weights_serve_events

# Without the row kernel: above this share of the outputs kept somewhere in a batch, the fine stage runs
# over all of them (a copy of most of the weights costs more than it saves).
_GATHER_SHARE = 0.25
# The row kernel (stac.kernels.rows_linear) serves the closed form up to this many positions per call
# (decode steps, short prompts): it reads each kept row once per call, where a matmul reuses it better.
_ROW_KERNEL_POSITIONS = 16


class SpikingReadout(SpikingLinear):
    """A SpikingLinear whose outputs stop at each of ``stages`` ((bits, margin), ...) when they trail the
    best one still running by more than margin."""

    def __init__(self, base_layer: nn.Module, encoder: SpikeEncoder, stages):
        super().__init__(base_layer, encoder)
        coding = encoder.coding
        if not hasattr(coding, "partial_levels"):
            raise ValueError(f"an early-stopping readout needs a most-significant-first coding, not {coding.name!r}")
        self.stages = tuple((float(b), float(m)) for b, m in stages)
        # steps delivered before each decision
        self.splits = tuple(coding.steps_above(2.0 ** (coding.timesteps - b)) for b, _ in self.stages)
        bounds = (0, *self.splits, coding.steps)
        if not all(a < b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"head_prune {self.stages} puts its decisions after steps {self.splits} of the lm_head "
                             f"input's {coding.steps}: each must come after more steps than the last, and before the end")
        # kept outputs per position after each decision, as the last forward decided them (for the meter)
        self.__dict__["last_kept"] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self._encoder[0](x)
        base = self._modules["base_layer"]
        dtype = _parameter_dtype(base)
        weight = SYNAPSES[type(base)](base)  # [out, in]
        bounds = (0, *self.splits, code.coding.steps)
        value = keep = None
        kept = []
        done = torch.zeros_like(code.levels) if code.train is None else None
        for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
            if code.train is None:  # closed form: what the neurons code in steps [start, end)
                upto = code.coding.partial_levels(code.levels, end) if end < code.coding.steps else code.levels
                segment, done = ((upto - done) * code.unit).to(dtype), upto
            else:
                segment = SpikeCode(code.coding, code.unit, code.step_weights[start:end], train=code.train[start:end])
            if value is None and code.train is not None:
                value = self._bias(self.train_sum(segment, base), base)
            elif value is None:  # base's own call where the kernel cannot read the weights (keeps its hooks)
                value = self._bias(self._rows(segment, weight, None), base) if self._row_kernel(segment, base) else base(segment)
            else:
                value = self._add_kept(value, keep, base, weight, segment)
            if i < len(self.stages):
                running = value if keep is None else value.masked_fill(~keep, -float("inf"))
                now = value >= running.amax(-1, keepdim=True) - self.stages[i][1]
                keep = now if keep is None else keep & now
                kept.append(keep.sum(-1))
        self.__dict__["last_kept"] = tuple(kept)
        return value

    @staticmethod
    def _bias(out: torch.Tensor, base: nn.Module) -> torch.Tensor:
        return out if base.bias is None else out + base.bias

    def _add_kept(self, value: torch.Tensor, keep: torch.Tensor, base: nn.Module, weight: torch.Tensor,
                  segment) -> torch.Tensor:
        """``value`` plus the segment's input through the synapses of the kept outputs only."""
        outputs = value.shape[-1]
        columns = None
        if not torch.compiler.is_compiling() and weight.device.type != "meta":  # no data-dependent shapes there
            columns = keep.reshape(-1, outputs).any(0).nonzero().squeeze(1)
            by_rows = not isinstance(segment, SpikeCode) and self._row_kernel(segment, base)
            if columns.numel() > (1.0 if by_rows else _GATHER_SHARE) * outputs:
                columns = None
        if columns is None:
            return value + self._through(segment, base, weight, None) * keep
        out = value.clone()
        out[..., columns] += self._through(segment, base, weight, columns) * keep[..., columns]
        return out

    def _through(self, segment, base: nn.Module, weight: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        """A segment (closed form: its decoded input; time-stepped: its spikes) through the synapses of
        ``columns`` (every output if None), without bias."""
        if not isinstance(segment, SpikeCode):
            if self._row_kernel(segment, base):
                return self._rows(segment, weight, columns)
            return F.linear(segment, weight if columns is None else weight.index_select(0, columns))
        if columns is None:
            return self.train_sum(segment, base)
        if self._event_driven(base, segment.train):
            return _kernel_spike_synapse(segment.train, segment.unit, segment.step_weights,
                                         self._synapse_rows(base).index_select(1, columns))
        return segment.sum_steps(F.linear(segment.scaled(_parameter_dtype(base)), weight.index_select(0, columns)))

    @staticmethod
    def _row_kernel(segment: torch.Tensor, base: nn.Module) -> bool:
        """Whether the closed form's ``segment`` goes through the compiled row kernel: a few positions, the
        float32 CPU weights of an nn.Linear ([out, in] as stored) that nothing hooks (the kernel reads them)."""
        return (type(base) is nn.Linear and _kernel_applies(segment)
                and segment.numel() <= _ROW_KERNEL_POSITIONS * segment.shape[-1] and _weights_serve_events(base))

    def _rows(self, segment: torch.Tensor, weight: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        """The row kernel over ``columns`` (every output if None; the index kept while the size is the same)."""
        if columns is None:
            every = self.__dict__.get("_every_row")
            if every is None or every.numel() != weight.shape[0]:
                every = self.__dict__["_every_row"] = torch.arange(weight.shape[0])
            columns = every
        return _kernel_rows_linear(segment, weight, columns)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stages={self.stages}, steps_before_decisions={self.splits}"
