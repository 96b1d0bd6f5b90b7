"""Registry of supported architectures: which weight matmuls get spiking inputs, and which share them.

Adding an architecture is adding an entry to ``ARCHITECTURES``; ``spikify`` applies an entry to a model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from torch import nn
from transformers import PretrainedConfig

from .attention import ATTENTION_NAME, PROBABILITY_ENCODER, PROBABILITY_THRESHOLD, QUERY_ENCODER
from .config import SpikingConfig
from .layers import SYNAPSES, SpikeEncoder, SpikingLinear
from .readout import SpikingReadout


@dataclass(frozen=True)
class EncoderGroup:
    """One population of encoder neurons inside a decoder block, feeding one or more matmuls."""

    name: str  # attribute the encoder is registered under, on ``owner``
    owner: str  # path of the owning submodule inside a block
    consumers: tuple[str, ...]  # paths of the matmuls (inside a block) that read the same input


@dataclass(frozen=True)
class Architecture:
    blocks: str  # path of the ModuleList of decoder blocks
    groups: tuple[EncoderGroup, ...]
    # The output projection's encoder, at the model's root (owner ""), used when SpikingConfig.spiking_head
    head: EncoderGroup | None = None
    # Path of the attention module inside a block, for SpikingConfig.spiking_attention (stac.attention):
    # its queries and probabilities get encoders of their own there.
    attention: str | None = None


_LLAMA_LAYOUT = Architecture(
    blocks="model.layers",
    groups=(
        EncoderGroup("encoder_qkv", "self_attn", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        EncoderGroup("encoder_o", "self_attn", ("self_attn.o_proj",)),
        EncoderGroup("encoder_gate_up", "mlp", ("mlp.gate_proj", "mlp.up_proj")),
        EncoderGroup("encoder_down", "mlp", ("mlp.down_proj",)),
    ),
    head=EncoderGroup("encoder_head", "", ("lm_head",)),
    attention="self_attn",
)

_GPT2_LAYOUT = Architecture(
    blocks="transformer.h",
    groups=(
        EncoderGroup("encoder_qkv", "attn", ("attn.c_attn",)),
        EncoderGroup("encoder_o", "attn", ("attn.c_proj",)),
        EncoderGroup("encoder_fc", "mlp", ("mlp.c_fc",)),
        EncoderGroup("encoder_proj", "mlp", ("mlp.c_proj",)),
    ),
    head=EncoderGroup("encoder_head", "", ("lm_head",)),
    attention="attn",
)

# model_type (as in a transformers config) -> layout.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LAYOUT,
    "mistral": _LLAMA_LAYOUT,
    "qwen2": _LLAMA_LAYOUT,
    "gpt2": _GPT2_LAYOUT,
}


class UnsupportedArchitectureError(ValueError):
    pass


def architecture_for(model_type: str) -> Architecture:
    """The registry entry for ``model_type``; raises naming the type and the supported ones."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported by STAC; supported model types: "
            f"{sorted(ARCHITECTURES)}"
        ) from None


def encoder_name(arch: Architecture, block_index: int, group: EncoderGroup) -> str:
    """Module path of a group's encoder inside the base model, e.g. ``model.layers.3.mlp.encoder_down``."""
    return f"{arch.blocks}.{block_index}.{group.owner}.{group.name}"


def head_encoder_name(arch: Architecture) -> str:
    """Module path of the lm_head's encoder inside the base model (it sits at the root): ``encoder_head``."""
    return arch.head.name


def attention_encoder_names(arch: Architecture, block_index: int) -> tuple[str, str]:
    """Module paths of a block's query and probability encoders (``stac.attention``)."""
    prefix = f"{arch.blocks}.{block_index}.{arch.attention}"
    return f"{prefix}.{QUERY_ENCODER}", f"{prefix}.{PROBABILITY_ENCODER}"


def attention_modules(model: nn.Module, arch: Architecture) -> dict[str, nn.Module]:
    """Each block's attention module, keyed by the name of its query encoder."""
    return {attention_encoder_names(arch, i)[0]: block.get_submodule(arch.attention)
            for i, block in enumerate(blocks_of(model, arch))}


def in_features(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    return layer.weight.shape[0]  # Conv1D: [in, out]


def blocks_of(model: nn.Module, arch: Architecture) -> nn.ModuleList:
    return model.get_submodule(arch.blocks)


def group_consumers(block: nn.Module, group: EncoderGroup) -> list[nn.Module]:
    return [block.get_submodule(path) for path in group.consumers]


def encoder_inputs(model: nn.Module, arch: Architecture) -> list[tuple[str, nn.Module]]:
    """(encoder name, the first layer reading its input) for every encoder group of every block of an ANN,
    then the lm_head's: where calibration and the sensitivity pass observe what each encoder will see."""
    sites = [(encoder_name(arch, i, group), group_consumers(block, group)[0])
             for i, block in enumerate(blocks_of(model, arch)) for group in arch.groups]
    if arch.head is not None:
        sites.append((head_encoder_name(arch), group_consumers(model, arch.head)[0]))
    return sites


def _synapse_for(spiking: SpikingConfig, head: bool) -> Callable[[nn.Module, SpikeEncoder], SpikingLinear]:
    """The spiking module that replaces a matmul: the lm_head's stops trailing outputs early when asked."""
    if head and spiking.head_prune:
        return functools.partial(SpikingReadout, stages=spiking.head_prune)
    return SpikingLinear


def spikify(model: nn.Module, spiking: SpikingConfig) -> dict[str, SpikeEncoder]:
    """Replace, in place, every registered matmul of ``model`` by a SpikingLinear fed by a SpikeEncoder.

    Thresholds start at 1 and are set by calibration or by loading a checkpoint. Returns the encoders
    by their full module name. Checks everything before changing anything, so an unsupported model is
    left untouched.
    """
    arch = architecture_for(model.config.model_type)
    blocks = blocks_of(model, arch)
    # (owner module, group, encoder name) for every encoder to create, blocks first, then the head
    sites = [(block, group, encoder_name(arch, i, group))
             for i, block in enumerate(blocks) for group in arch.groups]
    if spiking.spiking_head and arch.head is not None:
        sites.append((model, arch.head, head_encoder_name(arch)))
    for owner, group, _ in sites:
        for layer in group_consumers(owner, group):
            if type(layer) not in SYNAPSES:
                raise UnsupportedArchitectureError(
                    f"cannot make {type(layer).__name__} spiking in {group.consumers}; supported "
                    f"module types: {[t.__name__ for t in SYNAPSES]}"
                )
    if spiking.spiking_attention and arch.attention is None:
        raise UnsupportedArchitectureError(
            f"spiking attention is not supported for {model.config.model_type!r}; supported model types: "
            f"{sorted(t for t, a in ARCHITECTURES.items() if a.attention)}"
        )
    encoders = {}
    for owner, group, name in sites:
        layers = group_consumers(owner, group)
        own = spiking.for_encoder(name)
        encoder = SpikeEncoder(in_features(layers[0]), own.coding, own.timesteps, own.engine, own.steps_per_octave,
                               own.coarse_octaves)
        (owner.get_submodule(group.owner) if group.owner else owner).add_module(group.name, encoder)
        for path, layer in zip(group.consumers, layers):
            parent_path, _, attr = path.rpartition(".")
            parent = owner.get_submodule(parent_path) if parent_path else owner
            setattr(parent, attr, _synapse_for(spiking, group is arch.head)(layer, encoder))
            if owner is model:
                _retarget_ties(model, path)
        encoders[name] = encoder
    if spiking.spiking_attention:
        encoders.update(_spikify_attention(model, arch, spiking))
    return encoders


def _spikify_attention(model: nn.Module, arch: Architecture, spiking: SpikingConfig) -> dict[str, SpikeEncoder]:
    """Give every attention module its query and probability encoders and route the model's attention
    through ``stac.attention`` (transformers' AttentionInterface, by name in the config)."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    encoders = {}
    for i, block in enumerate(blocks_of(model, arch)):
        attention = block.get_submodule(arch.attention)
        for name, channels in zip(attention_encoder_names(arch, i), (heads * head_dim, 1)):
            own = spiking.for_encoder(name)
            encoder = SpikeEncoder(channels, own.coding, own.timesteps, own.engine, own.steps_per_octave,
                               own.coarse_octaves)
            attention.add_module(name.rsplit(".", 1)[-1], encoder)
            encoders[name] = encoder
        attention.get_submodule(PROBABILITY_ENCODER).threshold.fill_(PROBABILITY_THRESHOLD)
    # Every config object inside the model (a deep copy may hold several) names the implementation: the
    # attention modules read theirs, the mask builder the base model's.
    for module in model.modules():
        inner = getattr(module, "config", None)
        if isinstance(inner, PretrainedConfig):
            inner._attn_implementation = ATTENTION_NAME
    return encoders


def _retarget_ties(model: nn.Module, path: str) -> None:
    """The layer at ``path`` now lives at ``path.base_layer``: say so in the model's tied-weight maps.

    transformers ties (and, when saving, de-duplicates) weights by parameter name, from the class's
    ``_tied_weights_keys`` (e.g. lm_head.weight -> model.embed_tokens.weight) expanded into the instance's
    ``all_tied_weights_keys`` by ``post_init``; both follow the wrapped layer.
    """
    old, new = f"{path}.", f"{path}.base_layer."

    def moved(name: str) -> str:
        return new + name[len(old):] if name.startswith(old) else name

    for attr in ("_tied_weights_keys", "all_tied_weights_keys"):
        ties = getattr(model, attr, None)
        if isinstance(ties, dict):
            setattr(model, attr, {moved(k): moved(v) for k, v in ties.items()})


def encoders_of(model: nn.Module) -> dict[str, SpikeEncoder]:
    """All SpikeEncoders of a model, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SpikeEncoder)}


def synapse_weights(model: nn.Module) -> dict[SpikeEncoder, list]:
    """The weights ([out, in]) each encoder drives, from the SpikingLinear layers that read it."""
    weights: dict[SpikeEncoder, list] = {}
    for module in model.modules():
        if isinstance(module, SpikingLinear):
            base = module.base_layer
            weights.setdefault(module.encoder, []).append(SYNAPSES[type(base)](base))
    return weights
