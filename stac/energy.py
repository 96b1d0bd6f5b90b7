"""Energy accounting: an observer that counts the operations of forward passes and prices them.

    with EnergyMeter(model, energy_model="45nm_fp32") as meter:   # a plain HF model or a StacForCausalLM
        model(input_ids)                                           # or model.generate(...)
    report = meter.report()

The meter only registers forward hooks that read shapes and spike codes; it never changes a tensor, so
every output is bit-identical with and without it. Counting rules (docs/energy.md has the full table):

    spiking      per SpikeEncoder: spikes = sum of SpikeCode.spike_count(); synaptic ops = spikes x fan-out
                 (out_features) of every SpikingLinear it feeds, one accumulate (E_AC) each; neuron work
                 (input normalisation, one membrane update per step, one soft reset per spike) and the
                 accumulator doubling of binary-weighted codes as element-wise ops.
    dense        every weight matmul still computed densely (nn.Linear / Conv1D not driven by spikes,
                 lm_head): positions x in x out MACs; attention QK^T and AV: batch x query heads x new
                 positions x context length (KV cache included) x head_dim MACs each, unless the
                 attention's inputs spike (stac.attention): then synaptic ops of its query encoder
                 (fan-out: the context length) and weight encoder (fan-out: head_dim + 1, the
                 normaliser) instead, and a division per output in place of the softmax's sum and
                 divide.
    elementwise  norms, activations (and the gate*up product), softmax, RoPE, residual and bias adds: a
                 fixed number of ops per element, each priced at E_elementwise.

Tokens are the positions fed to the model (batch x new sequence length, padding included).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.activations import NewGELUActivation, SiLUActivation
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from .architectures import UnsupportedArchitectureError, architecture_for
from .attention import PROBABILITY_ENCODER, QUERY_ENCODER
from .layers import SYNAPSES, SpikeCode, SpikeEncoder, SpikingLinear
from .readout import SpikingReadout
from .modeling_stac import StacForCausalLM

PICO = 1e-12


# ----- energy models ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnergyModel:
    """Energy of one operation (picojoules) and, in memory-aware models, of one byte moved.

    Element-wise ops (norms, softmax, activations, residual adds, neuron updates) are priced like one
    MAC of the same precision: deliberately on the high side for single adds and compares, and exp, tanh
    and rsqrt are counted as one op each. Both networks run the same float element-wise work, so this
    choice narrows, never widens, the ANN/SNN ratio.
    """

    name: str
    e_mac_pj: float  # one multiply-accumulate (multiply + add)
    e_ac_pj: float  # one accumulate: a synaptic op driven by a spike adds a weight
    e_elementwise_pj: float  # one element-wise op
    e_memory_pj_per_byte: float = 0.0  # SRAM traffic per byte; 0 counts compute only
    operand_bytes: int = 4  # bytes read per MAC or synaptic op (a weight, or a cached K/V element)
    state_bytes: int = 4  # bytes of one membrane potential (read and written once per neuron per step)
    source: str = ""

    def __post_init__(self):
        for f in ("e_mac_pj", "e_ac_pj", "e_elementwise_pj", "e_memory_pj_per_byte"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"EnergyModel.{f} must be a finite number >= 0, got {value!r}")
        for f in ("operand_bytes", "state_bytes"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise ValueError(f"EnergyModel.{f} must be a positive int, got {getattr(self, f)!r}")


_HOROWITZ = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm"

ENERGY_MODELS: dict[str, EnergyModel] = {
    m.name: m
    for m in (
        # fp32: multiply 3.7 pJ + add 0.9 pJ = 4.6 pJ per MAC; one add per synaptic op.
        EnergyModel("45nm_fp32", 4.6, 0.9, 4.6, source=f"{_HOROWITZ}: FMult32 3.7 pJ, FAdd32 0.9 pJ"),
        # fp16: multiply 1.1 pJ + add 0.4 pJ.
        EnergyModel("45nm_fp16", 1.5, 0.4, 1.5, operand_bytes=2, state_bytes=2,
                    source=f"{_HOROWITZ}: FMult16 1.1 pJ, FAdd16 0.4 pJ"),
        # int8: multiply 0.2 pJ + add 0.03 pJ.
        EnergyModel("45nm_int8", 0.23, 0.03, 0.23, operand_bytes=1, state_bytes=1,
                    source=f"{_HOROWITZ}: Mult8 0.2 pJ, Add8 0.03 pJ"),
        # fp32 compute plus SRAM traffic: a 64-bit read from a 1 MB SRAM costs 100 pJ, 12.5 pJ per byte.
        # Every MAC and every synaptic op reads one 4-byte operand (no reuse assumed: exact for one
        # decoded token, where each weight is used once); every neuron reads and writes its 4-byte
        # membrane once per step.
        EnergyModel("45nm_fp32_sram", 4.6, 0.9, 4.6, e_memory_pj_per_byte=12.5,
                    source=f"{_HOROWITZ}: FMult32 3.7 pJ, FAdd32 0.9 pJ, 64-bit read of a 1 MB SRAM 100 pJ"),
    )
}


def energy_model_for(model: str | EnergyModel) -> EnergyModel:
    """An EnergyModel, or the preset of that name; unknown names raise listing the known ones."""
    if isinstance(model, EnergyModel):
        return model
    try:
        return ENERGY_MODELS[model]
    except KeyError:
        raise ValueError(f"unknown energy model {model!r}; known energy models: {sorted(ENERGY_MODELS)}") from None


# ----- counting rules --------------------------------------------------------------------------------
# Element-wise ops per output element of float modules, by module type.
NORM_RULES: dict[type, int] = {
    LlamaRMSNorm: 4,  # square, sum, scale by 1/rms, scale by weight (one rsqrt per row not counted)
    MistralRMSNorm: 4,
    Qwen2RMSNorm: 4,
    nn.LayerNorm: 7,  # mean, subtract, square, sum, scale by 1/std, scale, shift
}
ACTIVATION_RULES: dict[type, int] = {
    SiLUActivation: 4,  # x * 1/(1 + exp(-x)): exp, add, reciprocal, multiply
    nn.SiLU: 4,
    NewGELUActivation: 9,  # 0.5 x (1 + tanh(c (x + 0.044715 x^3))): 2 for x^3, then 7 more
}
ELEMENTWISE_RULES: dict[type, int] = {**NORM_RULES, **ACTIVATION_RULES}
POSITION_EMBEDDING_OPS = 1  # per element: added to the token embedding
SOFTMAX_OPS = 7  # per attention score: scale, mask add, max, subtract, exp, sum, divide
SPIKING_SOFTMAX_OPS = 5  # the same without sum and divide: stac.attention normalises from the spikes
ROPE_OPS = 3  # per rotated q or k element: q*cos + rotate_half(q)*sin
RESIDUAL_ADDS = 2  # per hidden element per decoder block: after attention and after the MLP
NORMALISE_OPS = 3  # per encoder neuron per input: divide by the threshold unit, clamp, round


@dataclass(frozen=True)
class FloatLayout:
    """Where the float (non-spiking) work of a decoder block lives, for counting it."""

    attention: str  # path of the attention module inside a block
    rotary: bool  # RoPE rotates q and k inside the attention module
    gated_mlp: bool  # the activation's output is multiplied by an up projection (1 op per element)
    position_embedding: str | None = None  # module (from the base model root) added to token embeddings


_LLAMA_FLOATS = FloatLayout(attention="self_attn", rotary=True, gated_mlp=True)

# model_type -> layout; keys match stac.architectures.ARCHITECTURES.
FLOAT_LAYOUTS: dict[str, FloatLayout] = {
    "llama": _LLAMA_FLOATS,
    "mistral": _LLAMA_FLOATS,
    "qwen2": _LLAMA_FLOATS,
    "gpt2": FloatLayout(attention="attn", rotary=False, gated_mlp=False, position_embedding="transformer.wpe"),
}


# ----- reports ---------------------------------------------------------------------------------------
@dataclass
class LayerEnergy:
    """Counts and energy of one module (or one derived computation, named ``module:what``)."""

    name: str
    kind: str  # "spiking" | "dense" | "elementwise"
    spikes: int = 0
    synops: int = 0
    macs: int = 0
    elementwise_ops: int = 0
    neurons: int = 0  # neuron evaluations: channels x positions, summed over inputs
    firing_rate: float = 0.0  # spikes / (neurons * timesteps)
    energy_j: float = 0.0
    timesteps: int = 0
    memory_bytes: int = 0



def is_attention(layer_name: str) -> bool:
    """Whether a report entry is attention work (QK^T, AV, softmax, RoPE, or with spiking attention its
    query and softmax-weight encoders), whose cost grows with the context."""
    return layer_name.endswith((":attention", f".{QUERY_ENCODER}", f".{PROBABILITY_ENCODER}"))

@dataclass
class EnergyReport:
    """Totals over everything a meter observed, and the per-module breakdown."""

    energy_model: str
    tokens: int
    energy_j: float
    energy_per_token_j: float
    spikes: int
    spikes_per_token: float
    firing_rate: float
    synops: int
    macs: int
    elementwise_ops: int
    memory_bytes: int
    energy_mac_j: float
    energy_ac_j: float
    energy_elementwise_j: float
    energy_memory_j: float
    per_layer: list[LayerEnergy] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class _Tally:
    kind: str
    spikes: int = 0
    synops: int = 0
    macs: int = 0
    elementwise_ops: int = 0
    neurons: int = 0
    timesteps: int = 0


def _weight(layer: nn.Module) -> torch.Tensor:
    return SYNAPSES[type(layer)](layer)  # [out, in]


def _accumulator_steps(code: SpikeCode) -> int:
    """Steps an output accumulator needs to weight spikes by step (acc = (w_(t-1) / w_t) acc + W s_t:
    a doubling for one step per octave)."""
    w = code.step_weights
    return 0 if bool((w == w[0]).all()) else code.coding.steps - 1


def _synapse_counts(module: SpikingLinear, code: SpikeCode, spikes: int, positions: int,
                    fan_out: int) -> tuple[int, int]:
    """(synaptic ops, accumulator steps) of one SpikingLinear call: every spike reaches every output."""
    return spikes * fan_out, positions * fan_out * _accumulator_steps(code)


def _readout_counts(module: SpikingReadout, code: SpikeCode, spikes: int, positions: int,
                    fan_out: int) -> tuple[int, int]:
    """(synaptic ops, element-wise ops) of one SpikingReadout call. The steps before the first decision
    reach every output, those after decision i only the outputs it kept for that position
    (``module.last_kept``); an accumulator steps once per step after the first while its output runs; each
    decision takes a max and a compare per output still running."""
    steps = code.coding.steps
    if code.train is not None:
        per_step = code.train.abs().sum(-1).to(torch.int64).reshape(steps, -1)
    else:
        per_step = code.coding.spikes_per_step(code.levels).reshape(steps, -1)
    running = [torch.full((per_step.shape[1],), fan_out, dtype=torch.int64)]
    running += [k.reshape(-1).to(torch.int64) for k in module.last_kept]
    bounds = (0, *module.splits, steps)
    synops = elementwise = 0
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        synops += int((per_step[start:end].sum(0) * running[i]).sum())
        elementwise += (end - start) * int(running[i].sum())
        if i < len(module.splits):
            elementwise += 2 * int(running[i].sum())
    return synops, elementwise - positions * fan_out  # no accumulator step at the first step


# How each kind of spiking matmul's work is counted (by the module's exact type).
SYNAPSE_COUNTS = {SpikingLinear: _synapse_counts, SpikingReadout: _readout_counts}


# ----- the meter -------------------------------------------------------------------------------------
class EnergyMeter:
    """Counts the operations of every forward pass run inside ``with EnergyMeter(model) as meter:``.

    Works on a transformers causal LM of a registered architecture and on a StacForCausalLM. Counts
    accumulate over passes until ``reset()``; ``report()`` prices them with ``energy_model``.
    """

    def __init__(self, model: nn.Module, energy_model: str | EnergyModel = "45nm_fp32"):
        self.model = model
        self.energy_model = energy_model_for(energy_model)
        base = model.model if isinstance(model, StacForCausalLM) else model
        config = base.config
        model_type = config.model_type
        arch = architecture_for(model_type)
        if model_type not in FLOAT_LAYOUTS:
            raise UnsupportedArchitectureError(
                f"energy accounting has no float layout for {model_type!r}; known: {sorted(FLOAT_LAYOUTS)}"
            )
        self.layout = FLOAT_LAYOUTS[model_type]
        self._heads = config.num_attention_heads
        self._kv_heads = getattr(config, "num_key_value_heads", None) or self._heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // self._heads
        self._names = {m: n for n, m in model.named_modules()}
        self._synapse_layers = {m.base_layer for m in model.modules() if isinstance(m, SpikingLinear)}
        self._blocks = list(base.get_submodule(arch.blocks))
        self._position_embedding = (base.get_submodule(self.layout.position_embedding)
                                    if self.layout.position_embedding else None)
        self._handles: list = []
        self._codes: dict[SpikeEncoder, tuple[SpikeCode, int, int]] = {}
        self.reset()

    # ----- lifecycle -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero every count."""
        self.tokens = 0
        self._tallies: dict[str, _Tally] = {}
        self._codes = {}

    def __enter__(self) -> "EnergyMeter":
        if self._handles:
            raise RuntimeError("this EnergyMeter is already observing a model")
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._detach()

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._codes = {}  # drop references to the last spike codes

    def _attach(self) -> None:
        hook = self._handles.append
        hook(self.model.register_forward_pre_hook(self._on_model_input, with_kwargs=True))
        for module in self.model.modules():
            if isinstance(module, SpikeEncoder):
                hook(module.register_forward_hook(self._on_encode))
            elif isinstance(module, SpikingLinear):
                hook(module.register_forward_hook(self._on_synapse))
            elif type(module) in SYNAPSES and module not in self._synapse_layers:
                hook(module.register_forward_hook(self._on_dense))
            elif type(module) in ELEMENTWISE_RULES:
                hook(module.register_forward_hook(self._on_elementwise))
        for block in self._blocks:
            attention = block.get_submodule(self.layout.attention)
            hook(attention.register_forward_hook(self._on_attention, with_kwargs=True))
            hook(block.register_forward_hook(self._on_block, with_kwargs=True))
        if self._position_embedding is not None:
            hook(self._position_embedding.register_forward_hook(self._on_elementwise))

    def _tally(self, name: str, kind: str) -> _Tally:
        t = self._tallies.get(name)
        if t is None:
            t = self._tallies[name] = _Tally(kind)
        return t

    # ----- hooks (read only) -----------------------------------------------------------------------
    def _on_model_input(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += ids.numel()
        elif kwargs.get("inputs_embeds") is not None:
            self.tokens += kwargs["inputs_embeds"].shape[:-1].numel()

    @torch.no_grad()
    def _on_encode(self, module: SpikeEncoder, args, code: SpikeCode) -> None:
        last = self._codes.get(module)
        if last is not None and last[0] is code:
            return  # the encoder's memo: consumers sharing an input (q/k/v) share one encoding
        count = code.spike_count()
        spikes, neurons, steps = int(count.sum()), count.numel(), code.coding.steps
        t = self._tally(self._names[module], "spiking")
        t.spikes += spikes
        t.neurons += neurons
        t.timesteps = steps
        t.elementwise_ops += neurons * (NORMALISE_OPS + steps) + spikes  # normalise, T updates, resets
        self._codes[module] = (code, spikes, neurons // module.channels)

    def _on_synapse(self, module: SpikingLinear, args, out) -> None:
        code, spikes, positions = self._codes[module.encoder]
        fan_out = _weight(module.base_layer).shape[0]
        t = self._tally(self._names[module.encoder], "spiking")
        synops, elementwise = SYNAPSE_COUNTS[type(module)](module, code, spikes, positions, fan_out)
        t.synops += synops
        t.elementwise_ops += elementwise
        if module.base_layer.bias is not None:
            t.elementwise_ops += positions * fan_out

    def _on_dense(self, module: nn.Module, args, out) -> None:
        out_features, in_features = _weight(module).shape
        positions = args[0].numel() // in_features
        t = self._tally(self._names[module], "dense")
        t.macs += positions * in_features * out_features
        if module.bias is not None:
            t.elementwise_ops += positions * out_features

    def _on_elementwise(self, module: nn.Module, args, out) -> None:
        ops = ELEMENTWISE_RULES.get(type(module), POSITION_EMBEDDING_OPS)
        if self.layout.gated_mlp and type(module) in ACTIVATION_RULES:
            ops += 1  # gate * up
        self._tally(self._names[module], "elementwise").elementwise_ops += out.numel() * ops

    def _on_attention(self, module: nn.Module, args, kwargs, out) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        batch, new = hidden.shape[0], hidden.shape[1]
        cache = kwargs.get("past_key_values")
        # The hook runs after the cache update, so the cache holds past and new keys.
        context = cache.get_seq_length(module.layer_idx) if cache is not None else new
        scores = batch * self._heads * new * context
        t = self._tally(f"{self._names[module]}:attention", "dense")
        encoder_q = module._modules.get(QUERY_ENCODER)
        if encoder_q is None:
            t.macs += 2 * scores * self._head_dim  # QK^T and AV
        else:
            # stac.attention: each query spike adds a key column (context synapses), each probability
            # spike a value row (head_dim synapses); outputs accumulate as in a SpikingLinear.
            # A weight spike also adds to its row's normaliser (fan-out head_dim + 1); the output is then
            # divided by it (one op per output), and the softmax's own sum and divide are not done.
            outputs = batch * self._heads * new * self._head_dim
            for encoder, fan_out, accumulators in (
                (encoder_q, context, scores),
                (module._modules[PROBABILITY_ENCODER], self._head_dim + 1, outputs + batch * self._heads * new),
            ):
                code, spikes, _ = self._codes[encoder]
                s = self._tally(self._names[encoder], "spiking")
                s.synops += spikes * fan_out
                s.elementwise_ops += accumulators * _accumulator_steps(code)
            t.elementwise_ops += outputs  # the division by the normaliser
        t.elementwise_ops += (SOFTMAX_OPS if encoder_q is None else SPIKING_SOFTMAX_OPS) * scores
        if self.layout.rotary:
            t.elementwise_ops += ROPE_OPS * batch * new * (self._heads + self._kv_heads) * self._head_dim

    def _on_block(self, module: nn.Module, args, kwargs, out) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        self._tally(f"{self._names[module]}:residual", "elementwise").elementwise_ops += (
            RESIDUAL_ADDS * hidden.numel()
        )

    # ----- pricing ---------------------------------------------------------------------------------
    def report(self) -> EnergyReport:
        """Price everything counted since construction or the last ``reset()``."""
        em = self.energy_model
        order = {name: i for i, name in enumerate(self._names.values())}
        layers = []
        sums = dict(mac=0.0, ac=0.0, elementwise=0.0, memory=0.0)
        for name in sorted(self._tallies, key=lambda n: (order.get(n.split(":")[0], len(order)), n)):
            t = self._tallies[name]
            memory_bytes = (t.macs + t.synops) * em.operand_bytes + 2 * t.neurons * t.timesteps * em.state_bytes
            parts = dict(mac=t.macs * em.e_mac_pj, ac=t.synops * em.e_ac_pj,
                         elementwise=t.elementwise_ops * em.e_elementwise_pj,
                         memory=memory_bytes * em.e_memory_pj_per_byte)
            for k, v in parts.items():
                sums[k] += v
            layers.append(LayerEnergy(
                name=name, kind=t.kind, spikes=t.spikes, synops=t.synops, macs=t.macs,
                elementwise_ops=t.elementwise_ops, neurons=t.neurons,
                firing_rate=t.spikes / (t.neurons * t.timesteps) if t.neurons else 0.0,
                energy_j=sum(parts.values()) * PICO, timesteps=t.timesteps, memory_bytes=memory_bytes,
            ))
        spikes = sum(lay.spikes for lay in layers)
        neuron_steps = sum(lay.neurons * lay.timesteps for lay in layers)
        energy = sum(sums.values()) * PICO
        per = (lambda x: x / self.tokens) if self.tokens else (lambda x: 0.0)
        return EnergyReport(
            energy_model=em.name, tokens=self.tokens, energy_j=energy, energy_per_token_j=per(energy),
            spikes=spikes, spikes_per_token=per(spikes),
            firing_rate=spikes / neuron_steps if neuron_steps else 0.0,
            synops=sum(lay.synops for lay in layers), macs=sum(lay.macs for lay in layers),
            elementwise_ops=sum(lay.elementwise_ops for lay in layers),
            memory_bytes=sum(lay.memory_bytes for lay in layers),
            energy_mac_j=sums["mac"] * PICO, energy_ac_j=sums["ac"] * PICO,
            energy_elementwise_j=sums["elementwise"] * PICO, energy_memory_j=sums["memory"] * PICO,
            per_layer=layers,
        )


# ----- the headline figure ---------------------------------------------------------------------------
def _context_ids(tokenizer_or_ids, n: int) -> torch.Tensor:
    if isinstance(tokenizer_or_ids, torch.Tensor):
        ids = tokenizer_or_ids.reshape(1, -1)
    elif isinstance(tokenizer_or_ids, (list, tuple)):
        ids = torch.tensor(tokenizer_or_ids).reshape(1, -1)
    else:
        from .data import read_text

        ids = tokenizer_or_ids(read_text("lee_background"), return_tensors="pt",
                               add_special_tokens=False)["input_ids"]
    if ids.shape[1] < n:
        raise ValueError(f"need {n} tokens of context and one to decode, got {ids.shape[1]}")
    return ids[:, :n]


@torch.no_grad()
def measure_decode_step(model: nn.Module, tokenizer_or_ids, context: int = 256,
                        energy_model: str | EnergyModel = "45nm_fp32") -> EnergyReport:
    """The report of one decode step after ``context`` tokens: prefill them (unmetered) into a KV cache,
    then meter the forward pass of the next token (token ``context`` of the text, the same for every
    model compared). ``tokenizer_or_ids``: token ids, or a tokenizer to read ``lee_background`` with."""
    ids = _context_ids(tokenizer_or_ids, context + 1).to(model.device)
    cache = model(input_ids=ids[:, :context], use_cache=True).past_key_values
    with EnergyMeter(model, energy_model) as meter:
        model(input_ids=ids[:, context:], past_key_values=cache, use_cache=True)
    return meter.report()


def energy_per_token_at_context(model: nn.Module, tokenizer_or_ids, context: int = 256,
                                energy_model: str | EnergyModel = "45nm_fp32") -> float:
    """Joules to generate one token after a ``context``-token prompt, KV cache in use (the headline)."""
    return measure_decode_step(model, tokenizer_or_ids, context, energy_model).energy_per_token_j
