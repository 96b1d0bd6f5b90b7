"""Spiking layers: a population of encoder neurons and the synapses (weight matmuls) they drive.

SpikeEncoder  turns the input of one or more weight matmuls into spikes (one neuron per input channel
              and token), with calibrated per-channel thresholds held in a buffer.
SpikingLinear wraps an nn.Linear or GPT-2 Conv1D (kept as ``base_layer``) and computes its output from
              the encoder's spikes: sum_t w_t * W (s_t * unit) in the time-stepped engine, or
              W (levels * unit) in the closed-form engine; both are the same sum, ordered differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .coding import Coding, make_coding
from .config import ENGINES
from .kernels import applies as _kernel_applies
from .kernels import spike_synapse as _kernel_spike_synapse


@dataclass
class SpikeCode:
    """What an encoder emits for one input tensor x of shape [..., d].

    Exactly one of ``train`` ([T, ..., d] spikes in {-1, 0, 1}, time-stepped engine) and ``levels``
    ([..., d] integers, closed-form engine) is set. ``unit`` [d] is the value of one level per channel,
    ``step_weights`` [T] the weight of a spike at each step.
    """

    coding: Coding
    unit: torch.Tensor
    step_weights: torch.Tensor
    train: torch.Tensor | None = None
    levels: torch.Tensor | None = None
    # Synapse input (spikes or levels times unit), computed once and shared by the consumers.
    _scaled: torch.Tensor | None = None

    def spike_count(self) -> torch.Tensor:
        """Spikes emitted per neuron, [..., d] int64, identical for both engines."""
        if self.train is not None:
            return self.train.abs().sum(0).to(torch.int64)
        return self.coding.spike_count(self.levels)

    def integer_levels(self) -> torch.Tensor:
        if self.levels is not None:
            return self.levels
        w = self.step_weights.to(self.train.dtype)
        return torch.tensordot(w, self.train, dims=1)

    def scaled(self, dtype: torch.dtype) -> torch.Tensor:
        """What the synapses multiply by their weights: train * unit ([T, ..., d]) or levels * unit."""
        if self._scaled is None or self._scaled.dtype != dtype:
            source = self.train if self.train is not None else self.levels
            self._scaled = source.to(dtype) * self.unit.to(dtype)
        return self._scaled

    def sum_steps(self, per_step: torch.Tensor) -> torch.Tensor:
        """sum_t step_weight[t] * per_step[t] for a [T, ...] tensor, as one [T] x [T, rest] product."""
        steps = per_step.shape[0]
        return (self.step_weights.to(per_step.dtype) @ per_step.reshape(steps, -1)).view(per_step.shape[1:])

    def decoded(self) -> torch.Tensor:
        """The value the synapses see, x_hat = unit * levels."""
        return self.integer_levels() * self.unit


# The encoder whose memo is alive (see SpikeEncoder.forward).
_LAST_ENCODER: list["SpikeEncoder | None"] = [None]


class SpikeEncoder(nn.Module):
    """A population of ``channels`` spiking neurons per token, run for T steps on each new input.

    Neuron state lives in the SpikingJelly node and is reset before and after every input, so no state
    crosses tokens, calls or requests. The last code is memoised for the consumers that share this
    encoder (q/k/v read the same input); the memo holds the input tensor itself, never a stale copy.
    """

    def __init__(self, channels: int, coding: str, timesteps: int, engine: str = "closed_form",
                 steps_per_octave: int = 1, coarse_octaves: int = 0):
        super().__init__()
        self.channels = channels
        self.coding = make_coding(coding, timesteps, steps_per_octave, coarse_octaves)
        self.node = self.coding.make_node()
        self.engine = engine
        self.register_buffer("threshold", torch.ones(channels))
        self._memo: tuple[torch.Tensor, int, str, SpikeCode] | None = None
        self._unit_cache: tuple[int, int, torch.Tensor] | None = None

    def _unit(self) -> torch.Tensor:
        """``coding.unit(threshold)``, recomputed only when the threshold buffer changes."""
        threshold = self._buffers["threshold"]
        if torch.compiler.is_compiling():
            return self.coding.unit(threshold.float())
        key = (threshold._version, threshold.data_ptr())
        cached = self._unit_cache
        if cached is None or cached[:2] != key:
            # __dict__ directly: nn.Module.__setattr__ costs more than a decode step's closed form
            self.__dict__["_unit_cache"] = cached = (*key, self.coding.unit(threshold.float()))
        return cached[2]

    def _step_weights(self, device: torch.device) -> torch.Tensor:
        """``coding.step_weights()`` on ``device``, made at run time. Not a buffer: from_pretrained builds
        modules on the meta device and leaves non-persistent buffers as uninitialised memory."""
        cached = self.__dict__.get("_step_weights_cache")
        if cached is None or cached.device != device:
            cached = self.coding.step_weights().to(device)
            self.__dict__["_step_weights_cache"] = cached
        return cached

    @property
    def engine(self) -> str:
        return self._engine

    @engine.setter
    def engine(self, value: str) -> None:
        if value not in ENGINES:
            raise ValueError(f"unknown engine {value!r}; known engines: {list(ENGINES)}")
        self._engine = value
        self._memo = None

    def reset(self) -> None:
        """Clear neuron state and the memo."""
        self.node.reset()
        self.forget()

    def forget(self) -> None:
        """Drop the memoised code (the node is already at rest: it is reset after every input)."""
        self.__dict__["_memo"] = None
        if _LAST_ENCODER[0] is self:
            _LAST_ENCODER[0] = None

    def forward(self, x: torch.Tensor) -> SpikeCode:
        tracing = torch.compiler.is_compiling()  # export/compile: no memo (it guards on tensor versions)
        memo = self._memo
        if not tracing and memo is not None and memo[0] is x and memo[1] == x._version and memo[2] == self._engine:
            return memo[3]
        threshold = self._buffers["threshold"].float()
        unit = self._unit()
        step_weights = self._step_weights(x.device)
        if self._engine == "time_stepped":
            node = self._modules["node"]
            node.reset()
            train = self.coding.run(node, x, threshold, unit)
            node.reset()
            code = SpikeCode(self.coding, unit, step_weights, train=train)
        else:
            levels, scaled = self.coding.closed_form_scaled(x, threshold, unit)
            code = SpikeCode(self.coding, unit, step_weights, levels=levels, _scaled=scaled)
        if not tracing:
            # Consumers of one input run one after another (q, k, v; gate, up): once another encoder
            # encodes, the previous memo has served its consumers. Dropping it keeps one code alive at a
            # time instead of one per encoder until the forward ends (a time-stepped prefill's trains are
            # tens of MB per encoder). A consumer arriving later still gets the same spikes, recomputed.
            last = _LAST_ENCODER[0]
            if last is not None and last is not self:
                last.forget()
            _LAST_ENCODER[0] = self
            self.__dict__["_memo"] = (x, x._version, self._engine, code)
        return code

    def extra_repr(self) -> str:
        steps = f", steps={self.coding.steps}" if self.coding.steps != self.coding.timesteps else ""
        return f"channels={self.channels}, coding={self.coding.name}, T={self.coding.timesteps}{steps}, engine={self._engine}"


def _linear_weight(layer: nn.Linear) -> torch.Tensor:
    return layer.weight


def _conv1d_weight(layer: Conv1D) -> torch.Tensor:
    return layer.weight.t()  # GPT-2's Conv1D stores [in, out]


# Module types a SpikingLinear can drive, and how to read their weight as [out, in].
SYNAPSES: dict[type, Callable[[nn.Module], torch.Tensor]] = {
    nn.Linear: _linear_weight,
    Conv1D: _conv1d_weight,
}


def _parameter_dtype(layer: nn.Module) -> torch.dtype:
    return layer.weight.dtype


def _weights_serve_events(base: nn.Module, grad: bool = True) -> bool:
    """Whether the compiled kernel can read ``base``'s weights: float32 on the CPU, no autograd through
    them (``grad``: as things stand now), and nothing hooked into base's call (the kernel reads the weight)."""
    weight = base.weight
    return (
        weight.dtype is torch.float32
        and weight.device.type == "cpu"
        and not (grad and weight.requires_grad and torch.is_grad_enabled())
        and not base._forward_hooks
        and not base._forward_pre_hooks
        and "forward" not in base.__dict__  # accelerate-style hooks replace the bound forward
    )


def _weight_key(weight: torch.Tensor) -> tuple[int, int]:
    return weight.data_ptr(), weight._version


def pack_synapse_rows(layers: Iterable["SpikingLinear"]) -> int:
    """Give every layer that needs one its [in, out] weight copy as a view of one shared buffer.

    Made one layer at a time, the copies are a few MB each: the C allocator serves them from its heap,
    and after ``release`` keeps most of that memory (on glibc, all but about 108 MB of SmolLM2-135M's
    538 MB stayed resident after ``set_engine("closed_form")``). One buffer is one large allocation,
    returned to the system when the last copy is released. Returns the buffer's size in bytes (0 if no
    layer needs a copy).
    """
    todo = [layer for layer in layers if layer.needs_row_copy()]
    if not todo:
        return 0
    sizes = [layer.base_layer.weight.numel() for layer in todo]
    buffer = torch.empty(sum(sizes), dtype=torch.float32)
    offset = 0
    for layer, size in zip(todo, sizes):
        weight = layer.base_layer.weight.detach()  # [out, in]
        rows = buffer[offset:offset + size].view(weight.shape[1], weight.shape[0])
        rows.copy_(weight.t())
        layer.adopt_rows(rows)
        offset += size
    return buffer.numel() * buffer.element_size()


class SpikingLinear(nn.Module):
    """A weight matmul whose input arrives as spikes from a (possibly shared) SpikeEncoder."""

    def __init__(self, base_layer: nn.Module, encoder: SpikeEncoder):
        super().__init__()
        if type(base_layer) not in SYNAPSES:
            raise TypeError(
                f"cannot drive {type(base_layer).__name__} with spikes; supported: "
                f"{[t.__name__ for t in SYNAPSES]}"
            )
        self.base_layer = base_layer
        # A plain tuple keeps the shared encoder out of this module's children: it is registered once,
        # in the block that owns it, so its thresholds are saved once.
        self._encoder = (encoder,)

    @property
    def encoder(self) -> SpikeEncoder:
        return self._encoder[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self._encoder[0](x)
        # Calling base_layer (not reading its weight) keeps hooks on it working, e.g. accelerate's offload.
        base = self._modules["base_layer"]
        if code.train is None:
            return base(code.scaled(_parameter_dtype(base)))
        bias = base.bias  # added once, not once per step
        out = self.train_sum(code, base)
        return out if bias is None else out + bias

    def train_sum(self, code: SpikeCode, base: nn.Module) -> torch.Tensor:
        """sum_t w_t W (s_t * unit) over the steps of a time-stepped ``code``, without the bias."""
        if self._event_driven(base, code.train):
            # One multiply-add per spike and synapse (stac.kernels.spike_synapse): the dense product below,
            # summed in another order.
            return _kernel_spike_synapse(code.train, code.unit, code.step_weights, self._synapse_rows(base))
        # [T, ..., in] -> [T, ..., out]: every step's spikes pass through the synapses
        per_step = base(code.scaled(_parameter_dtype(base)))
        if base.bias is not None:
            per_step = per_step - base.bias
        return code.sum_steps(per_step)

    @staticmethod
    def _event_driven(base: nn.Module, train: torch.Tensor) -> bool:
        """Whether the time-stepped synapses can run as events in the compiled kernel: float32 CPU weights
        without autograd, and nothing hooked into base_layer's call (the kernel reads its weight)."""
        return _kernel_applies(train) and _weights_serve_events(base)

    def _synapse_rows(self, base: nn.Module) -> torch.Tensor:
        """The weights as [in, out] (one row per input neuron), kept while the weights are unchanged: a
        copy for nn.Linear (dropped by ``release``), GPT-2's Conv1D weight itself."""
        weight = base.weight
        cached = self.__dict__.get("_rows")
        if cached is None or cached[0] != _weight_key(weight):
            current = SYNAPSES[type(base)](base).detach().t()
            if cached is not None and cached[1].shape == current.shape and cached[1].data_ptr() != weight.data_ptr():
                cached[1].copy_(current)  # the weights changed in place: refresh the copy where it lives
                self.adopt_rows(cached[1])
            else:
                self.adopt_rows(current.contiguous())
            cached = self.__dict__["_rows"]
        return cached[1]

    def needs_row_copy(self) -> bool:
        """Whether the event-driven synapses would copy this layer's weights (nn.Linear that can serve them)."""
        base = self._modules["base_layer"]
        return type(base) is not Conv1D and _weights_serve_events(base, grad=False)

    def has_rows(self) -> bool:
        """Whether a copy of the current weights is held."""
        cached = self.__dict__.get("_rows")
        return cached is not None and cached[0] == _weight_key(self.base_layer.weight)

    def adopt_rows(self, rows: torch.Tensor) -> None:
        """Use ``rows`` ([in, out], the current weights transposed) as the event-driven synapses' copy."""
        self.__dict__["_rows"] = (_weight_key(self.base_layer.weight), rows)

    def release(self) -> None:
        """Drop the [in, out] copy of the weights the event-driven synapses keep."""
        self.__dict__.pop("_rows", None)

    def extra_repr(self) -> str:
        return f"synapse={type(self.base_layer).__name__}"
