"""convert(model, config) -> a new StacForCausalLM. The input model is never modified.

Stages, in order: validate -> calibrate -> build -> load weights -> set thresholds. Nothing is returned
(and nothing is changed) unless every stage succeeds.
"""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel

from . import thresholds
from .architectures import architecture_for, synapse_weights
from .attention import PROBABILITY_ENCODER
from .calibration import channel_max, default_calibration
from .config import SpikingConfig
from .configuration_stac import StacConfig
from .modeling_stac import StacForCausalLM
from .sensitivity import Sensitivity, fisher_diagonal

# Keys of a base config that describe how the ANN was stored, not what it computes.
_STORAGE_KEYS = ("quantization_config", "_name_or_path", "name_or_path", "dtype", "torch_dtype")


def convert(model: PreTrainedModel, config: SpikingConfig | None = None, calibration=None,
            tokenizer=None, progress: bool = False,
            stats: dict[str, torch.Tensor] | None = None,
            sensitivity: Sensitivity | None = None) -> StacForCausalLM:
    """Convert a causal LM into a spiking StacForCausalLM.

    Args:
        model: a transformers causal LM of a registered architecture (see ``stac.ARCHITECTURES``).
        config: spiking parameters (defaults: ``SpikingConfig()``).
        calibration: token id sequences (1-D tensors) to calibrate thresholds on. Defaults to
            ``default_calibration(tokenizer)``.
        tokenizer: needed only when ``calibration`` is not given.
        progress: show a progress bar while calibrating.
        stats: per-channel statistics from ``stac.calibration.channel_max`` on this model, to skip
            calibration (a sweep over configs calibrates once).
    """
    config = config or SpikingConfig()
    if not isinstance(config, SpikingConfig):
        raise TypeError(f"config must be a SpikingConfig, got {type(config).__name__}")
    arch = architecture_for(model.config.model_type)
    by_sensitivity = config.threshold_rule == "sensitivity"
    if stats is None or (by_sensitivity and sensitivity is None):
        if calibration is None:
            if tokenizer is None:
                raise ValueError("convert needs calibration sequences or a tokenizer to build the default ones")
            calibration = default_calibration(tokenizer)
        calibration = list(calibration)
    if stats is None:
        stats = channel_max(model, arch, calibration, progress=progress)
    if by_sensitivity and sensitivity is None:
        sensitivity = fisher_diagonal(model, arch, calibration, progress=progress)

    text_config = model.config.to_dict()
    for key in _STORAGE_KEYS:
        text_config.pop(key, None)
    stac_config = StacConfig(text_config=text_config, spiking=config.to_dict(),
                             base_model_name=model.config.name_or_path or None)
    # A deep copy keeps the base model's buffers (rotary tables, masks) and weight ties exactly as they are.
    base = copy.deepcopy(model)
    base.config = stac_config.text_config
    snn = StacForCausalLM(stac_config, base_model=base)
    missing = [name for name in snn.encoders
               if name.removeprefix("model.") not in stats and not name.endswith(f".{PROBABILITY_ENCODER}")]
    if missing:
        raise RuntimeError(f"calibration has no statistics for {len(missing)} encoders, e.g. {missing[:3]}")
    consumers = synapse_weights(snn) if config.threshold_weighting or by_sensitivity else {}
    chosen = {}
    for name, encoder in snn.encoders.items():
        base_name = name.removeprefix("model.")
        if base_name.endswith(f".{PROBABILITY_ENCODER}"):
            continue  # threshold fixed at 1 by spikify: nothing to calibrate
        margin = config.for_encoder(base_name).threshold_margin
        threshold = thresholds.calibrated(stats[base_name], margin, config.min_threshold)
        if by_sensitivity and encoder in consumers:  # query encoders drive keys: margin rule
            chosen[base_name] = threshold  # the floor; steps below
        elif config.threshold_weighting and encoder in consumers:
            norms = thresholds.column_norms(consumers[encoder])
            threshold = thresholds.weighted(threshold, norms, config.threshold_weighting, margin)
        encoder.threshold.copy_(threshold)
    if chosen:
        encoders = {n.removeprefix("model."): e for n, e in snn.encoders.items()}
        missing = sorted(set(chosen) - set(sensitivity.fisher))
        if missing:
            raise RuntimeError(f"the sensitivity pass has no statistics for {len(missing)} encoders, e.g. {missing[:3]}")
        steps, _ = thresholds.sensitivity_thresholds(
            sensitivity.fisher, sensitivity.mean_square,
            fanout={n: sum(w.shape[0] for w in consumers[encoders[n]]) for n in chosen},
            floor=chosen, max_level={n: encoders[n].coding.max_level for n in chosen},
            kl_budget=config.kl_budget)
        for n, threshold in steps.items():
            encoders[n].threshold.copy_(threshold)
    snn.to(model.dtype)
    snn.eval()
    return snn
