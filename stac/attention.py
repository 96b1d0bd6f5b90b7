"""Spike-coded attention inputs: QK^T and AV driven by spikes instead of dense float matmuls.

With ``SpikingConfig.spiking_attention`` every attention module gets two encoders (``stac.architectures``):

    encoder_q  the queries after RoPE, one neuron per head and channel, thresholds calibrated like any
               other encoder's (``observe_queries`` records them); each spike adds one column of the
               keys to the scores, a fan-out of the context length.
    encoder_p  the attention weights before normalisation, exp(score - row max), one neuron per score,
               threshold 1 (the row's largest weight is exactly 1, so nothing to calibrate); each spike
               adds one row of the values and its own value to the row's normaliser (one more synapse,
               of weight 1): a fan-out of head_dim + 1. The output is divided by the normaliser, so the
               weights the values see sum to 1 exactly. Most weights are near 0 and never fire.

Coding the normalised probabilities instead (threshold 1, no normaliser) was measured first: small
probabilities round to 0, a row loses part of its mass, and quality fell (docs/levers.md (h)).

Keys and values stay in float (they are the synapses' weights here, written into the KV cache by the
spiking k/v projections); the scale, the mask, the row max and the exponential stay element-wise float
work, and so does the division by the normaliser. Both engines
give the same result: the closed form multiplies ``levels * unit``, the time-stepped engine sums
``step_weight[t] * (spikes[t] * unit)`` over T products. At decode sizes (up to 16 new positions) the
closed form runs the scores with their softmax numerators, and the weighted values with their
normaliser, as two compiled loops (``stac.kernels.attention_weights`` / ``attention_values``): the same
sums in another order, in place of about 20 small tensor operations per call; the time-stepped engine
feeds each spike through its synapses event by event (``stac.kernels.spike_synapse``, as the weight
matmuls do), in place of T dense products.

The function is registered with transformers' ``AttentionInterface`` as ``stac_spiking``, with the
eager (additive float) mask under the same name in ``AttentionMaskInterface``: without a registered mask
transformers passes no causal mask to an implementation it does not know. A model uses it through its
config's ``_attn_implementation``, which ``stac.architectures.spikify`` sets.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from . import kernels

ATTENTION_NAME = "stac_spiking"
QUERY_ENCODER = "encoder_q"
PROBABILITY_ENCODER = "encoder_p"
PROBABILITY_THRESHOLD = 1.0


def _drive(code, dtype: torch.dtype, product: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``product`` (linear in its input) applied to what a spike code delivers: levels * unit, or each
    step's spikes * unit weighted by the step weights and summed."""
    out = product(code.scaled(dtype))
    return out if code.train is None else code.sum_steps(out)


def spiking_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with spike-coded queries and attention weights; the signature of transformers' attention
    functions (query [b, heads, n, d], key/value [b, kv_heads, context, d]). Returns the output
    [b, n, heads, d] and the probabilities the values saw (decoded from the spikes, normalised)."""
    encoder_q = module._modules.get(QUERY_ENCODER)
    encoder_p = module._modules.get(PROBABILITY_ENCODER)
    if encoder_q is None or encoder_p is None:
        raise RuntimeError(
            f"{type(module).__name__} has no {QUERY_ENCODER}/{PROBABILITY_ENCODER}: the {ATTENTION_NAME!r} "
            "attention implementation only runs inside a model converted with spiking_attention=True"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    batch, heads, new, head_dim = query.shape
    kv_heads, context = key.shape[1], key.shape[2]
    group = heads // kv_heads  # query heads sharing one key/value head (GQA), handled without copies
    dtype = query.dtype

    # queries: [b, n, heads * d], one neuron per head and channel; each spike adds a key column
    q_code = encoder_q(query.transpose(1, 2).reshape(batch, new, heads * head_dim))
    keys_t = key.transpose(-1, -2)  # [b, kv, d, context]

    def by_query(q: torch.Tensor) -> torch.Tensor:  # [..., b, n, heads * d] -> [..., b, heads, n, context]
        lead = q.shape[:-2]
        q = q.view(*lead, new, kv_heads, group, head_dim).movedim(-4, -2)  # [.., kv, group, n, d]
        scores = q.reshape(*lead[:-1], batch, kv_heads, group * new, head_dim) @ keys_t
        return scores.view(*lead[:-1], batch, heads, new, context)

    compiled = _kernels_serve(query, key, value, attention_mask, new, dropout, module)
    if compiled and q_code.train is None:
        # closed form at decode sizes: the two products in compiled loops (stac.kernels), same sums
        weights = kernels.attention_weights(q_code.scaled(dtype), key, attention_mask, heads, scaling)
        w_code = encoder_p(weights.unsqueeze(-1))
        decoded = w_code.scaled(dtype).squeeze(-1)
        out, normaliser = kernels.attention_values(decoded, value)
        return out, decoded / normaliser.unsqueeze(-1)

    # time-stepped at decode sizes: every spike adds its synapses' weights, event by event (stac.kernels):
    # a query spike its key column, a weight spike its value row
    if compiled:
        trains = q_code.scaled(torch.float32).view(-1, batch, new, kv_heads, group, head_dim).permute(0, 1, 3, 4, 2, 5)
        scores = _events(trains, q_code.step_weights, key.transpose(-1, -2)) * scaling
    else:
        scores = _drive(q_code, dtype, by_query) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    # The softmax's numerator exp(s - max): in (0, 1], exactly 1 at each row's largest score.
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)

    # one neuron per score; each spike adds a value row, and its step weight to the row's normaliser
    w_code = encoder_p(weights.unsqueeze(-1))

    def by_value(w: torch.Tensor) -> torch.Tensor:  # [..., b, heads, n, context, 1] -> [..., b, heads, n, d]
        lead = w.shape[:-5]
        out = w.view(*lead, batch, kv_heads, group * new, context) @ value
        return out.view(*lead, batch, heads, new, head_dim)

    if compiled:
        trains = w_code.scaled(torch.float32).view(-1, batch, kv_heads, group, new, context)
        out = _events(trains, w_code.step_weights, value)
    else:
        out = _drive(w_code, dtype, by_value)
    decoded = w_code.scaled(dtype) if w_code.train is None else w_code.decoded().to(dtype)
    normaliser = decoded.sum(-2)  # [b, heads, n, 1]
    return (out / normaliser).transpose(1, 2).contiguous(), (decoded / normaliser.unsqueeze(-1)).squeeze(-1)


def _events(trains: torch.Tensor, step_weights: torch.Tensor, synapses: torch.Tensor) -> torch.Tensor:
    """sum_t w_t trains[t] @ synapses, event by event (stac.kernels.spike_synapse), for each batch row and
    key/value head: ``trains`` [T, b, kv_heads, group, n, in] (spikes times unit), ``synapses``
    [b, kv_heads, in, out]. Returns [b, kv_heads * group, n, out]."""
    _, batch, kv_heads, group, new, inputs = trains.shape
    ones = torch.ones(inputs)  # the unit is inside ``trains`` (the same events: its nonzero entries)
    out = torch.empty(batch, kv_heads, group, new, synapses.shape[-1])
    for b in range(batch):
        for g in range(kv_heads):
            out[b, g] = kernels.spike_synapse(trains[:, b, g], ones, step_weights, synapses[b, g])
    return out.view(batch, kv_heads * group, new, -1)


# The compiled attention loops serve up to this many new positions per call (decode steps); a prompt's
# matmuls are faster through torch.
_KERNEL_POSITIONS = 16


def _kernels_serve(query, key, value, mask, new: int, dropout: float, module: nn.Module) -> bool:
    """Whether ``stac.kernels``' attention loops can take this call: float32 CPU tensors without autograd,
    a few new positions, no dropout at work, one float additive mask for all heads (or none), heads the
    kernels can hold; anything else takes the tensor path."""
    # kernels.applies first: it is False while tracing, where comparing ``new`` would add a shape guard
    return (kernels.applies(query) and new <= _KERNEL_POSITIONS and key.dtype is value.dtype is torch.float32
            and not (dropout and module.training)
            and (mask is None or (mask.dtype is torch.float32 and mask.dim() == 4 and mask.shape[1] == 1))
            and max(query.shape[-1], value.shape[-1]) <= kernels.ATTENTION_MAX_HEAD_DIM
            and query.shape[1] % key.shape[1] == 0 and key.shape[0] == value.shape[0] == query.shape[0])


AttentionInterface.register(ATTENTION_NAME, spiking_attention_forward)
AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


# ----- calibration: the queries as the attention function sees them (after RoPE) ------------------------
def _observer_for(implementation: str) -> str:
    """Register (once) an attention function that records |query| and then runs ``implementation``
    itself, with ``implementation``'s mask: the observed model computes exactly what it did."""
    name = f"stac_observe_{implementation}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        inner = ALL_ATTENTION_FUNCTIONS[implementation] if implementation in ALL_ATTENTION_FUNCTIONS else None

        def observe(module, query, *args, **kwargs):
            record = getattr(module, "_stac_observe", None)
            if record is not None:
                record(query)
            fn = inner if inner is not None else _eager_of(module)
            return fn(module, query, *args, **kwargs)

        AttentionInterface.register(name, observe)
        if implementation in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[implementation])
        else:
            AttentionMaskInterface.register(name, eager_mask)
    return name


def _eager_of(module: nn.Module) -> Callable:
    """The eager attention function of the module's own transformers model file."""
    fn = getattr(inspect.getmodule(type(module)), "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"no eager attention function found for {type(module).__name__}")
    return fn


@contextlib.contextmanager
def observe_queries(model: nn.Module, attentions: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of ``model`` records the largest |query| per head and channel
    (after RoPE) of each attention module in ``attentions`` (name -> module), into the yielded dict
    under the same names. The model's attention implementation is restored on exit, whatever happens."""
    stats: dict[str, torch.Tensor] = {}
    config = model.config
    previous = config._attn_implementation
    observer = _observer_for(previous or "eager")
    for name, module in attentions.items():
        def record(query, name=name):
            q = query.detach().float().abs().transpose(1, 2).reshape(-1, query.shape[1] * query.shape[-1]).amax(0)
            stats[name] = q if name not in stats else torch.maximum(stats[name], q)
        module._stac_observe = record
    try:
        config._attn_implementation = observer
        yield stats
    finally:
        config._attn_implementation = previous
        for module in attentions.values():
            module.__dict__.pop("_stac_observe", None)
