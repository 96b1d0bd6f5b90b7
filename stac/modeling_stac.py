"""StacForCausalLM: a converted spiking model as a transformers PreTrainedModel.

It holds the base architecture (built from ``config.text_config``) with its registered matmuls replaced
by spiking layers, so its state dict is the base weights plus the calibrated thresholds. Generation,
caches and masks are transformers' own: this class only routes arguments to the inner model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .architectures import encoders_of, spikify
from .configuration_stac import StacConfig, StacFormatError
from .kernels import available as _kernels_available
from .layers import SpikeEncoder, SpikingLinear, pack_synapse_rows


class StacCheckpointError(StacFormatError):
    """A STAC checkpoint that is missing tensors, has tensors of the wrong shape, or is corrupt."""


class StacPreTrainedModel(PreTrainedModel):
    config_class = StacConfig
    base_model_prefix = "stac"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, SpikeEncoder):
            module.threshold.fill_(1.0)
            return
        super()._init_weights(module)


class StacForCausalLM(StacPreTrainedModel, GenerationMixin):
    """A causal LM whose decoder-block matmuls are driven by spike trains."""

    def __init__(self, config: StacConfig, base_model: PreTrainedModel | None = None):
        super().__init__(config)
        if base_model is None:
            base_model = AutoModelForCausalLM.from_config(config.text_config)
        self.model = base_model
        spikify(self.model, config.spiking_config)
        self.post_init()

    # ----- engines and neurons -------------------------------------------------------------------
    @property
    def encoders(self) -> dict[str, SpikeEncoder]:
        return encoders_of(self)

    def _encoder_list(self) -> list[SpikeEncoder]:
        # Cached: walking every module on each forward costs more than a decode step's neurons.
        cached = self.__dict__.get("_encoders_cache")
        if cached is None:
            cached = list(self.encoders.values())
            self.__dict__["_encoders_cache"] = cached
        return cached

    def set_engine(self, engine: str) -> "StacForCausalLM":
        """Switch every encoder to ``"closed_form"`` or ``"time_stepped"`` (same outputs, same spikes)."""
        for encoder in self.encoders.values():
            encoder.engine = engine
        self._prepare_synapses()
        self.config.spiking = {**self.config.spiking, "engine": engine}
        return self

    def _prepare_synapses(self) -> None:
        """Give the event-driven synapses their [in, out] weight copies in one buffer while any encoder is
        time-stepped (where the compiled kernel runs), and drop copies nothing will read. Run by
        ``set_engine`` and, for a model built or loaded time-stepped, by its first forward."""
        keep = _kernels_available() and any(e.engine == "time_stepped" for e in self._encoder_list())
        needing = []
        for module in self.modules():
            if isinstance(module, SpikingLinear):
                if keep and module.needs_row_copy():
                    needing.append(module)
                else:
                    module.release()  # e.g. after .half() or .to("cuda"): the CPU float32 copy is stale
        if not all(module.has_rows() for module in needing):
            for module in needing:
                module.release()
            pack_synapse_rows(needing)  # one allocation, returned to the system as a whole
        self.__dict__["_synapses_prepared"] = True

    def reset_neurons(self) -> None:
        """Clear every neuron's state (done per input anyway; call between independent requests)."""
        for encoder in self._encoder_list():
            encoder.reset()

    # ----- transformers plumbing -----------------------------------------------------------------
    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.model.set_output_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        # Newer transformers pass the KV cache as `cache`, older ones as `past_key_values`.
        if cache is not None:
            if past_key_values is not None and past_key_values is not cache:
                raise ValueError("pass the KV cache as either `cache` or `past_key_values`, not both")
            past_key_values = cache
        self._check_context(input_ids if input_ids is not None else inputs_embeds, past_key_values)
        if not self.__dict__.get("_synapses_prepared"):
            self._prepare_synapses()
        try:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        finally:
            # Every encoder resets its neurons after each input; what is left to drop is the memo.
            for encoder in self._encoder_list():
                encoder.forget()

    def _check_context(self, inputs: torch.Tensor | None, past_key_values) -> None:
        """Refuse input that runs past the base model's positions (GPT-2 would fail obscurely, Llama silently)."""
        limit = getattr(self.config.get_text_config(), "max_position_embeddings", None)
        if limit is None or inputs is None:
            return
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if past + inputs.shape[1] > limit:
            raise ValueError(
                f"context overflow: {past} cached + {inputs.shape[1]} new tokens exceed the model's "
                f"max_position_embeddings of {limit}; shorten the conversation or drop older turns"
            )

    # ----- safe saving and loading ---------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Write safetensors + config into a temporary directory, then move it into place.

        A crash half-way leaves any earlier checkpoint at ``save_directory`` untouched. Files already in
        ``save_directory`` that the model does not write (a tokenizer, a model card) are kept.
        """
        if kwargs.get("push_to_hub"):
            return super().save_pretrained(save_directory, *args, **kwargs)
        kwargs["safe_serialization"] = True
        target = Path(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            if target.is_dir():
                for item in target.iterdir():
                    if item.is_file() and not _is_model_file(item.name):
                        shutil.copy2(item, tmp / item.name)
            super().save_pretrained(tmp, *args, **kwargs)
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                target.rename(old)
            tmp.rename(target)
            if old is not None:
                shutil.rmtree(old)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' from_pretrained, strict: missing, unexpected or mis-shaped tensors are errors."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["output_loading_info"] = True
        kwargs.setdefault("use_safetensors", True)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (StacFormatError, OSError, EnvironmentError):
            raise
        except Exception as err:  # safetensors/torch errors on truncated or garbled files
            if type(err).__name__ in ("SafetensorError", "HeaderTooLarge") or "deserializ" in str(err):
                raise StacCheckpointError(
                    f"checkpoint at {pretrained_model_name_or_path} is corrupt or truncated: {err}"
                ) from err
            raise
        problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
        if info.get("error_msgs"):
            problems["error_msgs"] = info["error_msgs"]
        if problems:
            raise StacCheckpointError(
                f"checkpoint at {pretrained_model_name_or_path} does not match its config: "
                + "; ".join(f"{k}: {sorted(map(str, v))[:8]}" for k, v in problems.items())
            )
        return (model, info) if want_info else model


_MODEL_FILE_PREFIXES = ("model", "config.json", "generation_config.json", "pytorch_model")


def _is_model_file(name: str) -> bool:
    return name.startswith(_MODEL_FILE_PREFIXES)
