"""StacConfig: a transformers config that holds the base model's config and every spiking parameter."""

from __future__ import annotations

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .architectures import architecture_for
from .config import SpikingConfig

# Bumped whenever the checkpoint layout changes; a reader refuses checkpoints newer than itself.
STAC_FORMAT_VERSION = 1


class StacFormatError(ValueError):
    """A STAC checkpoint or config this version cannot read."""


class StacConfig(PreTrainedConfig):
    r"""Configuration of a spiking model converted by STAC.

    Args:
        text_config: the base (ANN) model's config; its ``model_type`` must be in STAC's registry.
        spiking: a ``SpikingConfig`` as a dict (timesteps, coding, threshold margin, engine, and the list
            of operations that stay in floating point).
        stac_format_version: checkpoint layout version.
        base_model_name: where the base weights came from (for model cards and reports).
    """

    model_type = "stac"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    spiking: dict | None = None
    stac_format_version: int = STAC_FORMAT_VERSION
    base_model_name: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if isinstance(self.stac_format_version, bool) or not isinstance(self.stac_format_version, int):
            raise StacFormatError(f"stac_format_version must be an int, got {self.stac_format_version!r}")
        if self.stac_format_version > STAC_FORMAT_VERSION:
            raise StacFormatError(
                f"this checkpoint was written in STAC format {self.stac_format_version}, newer than the "
                f"format {STAC_FORMAT_VERSION} this version of stac reads; upgrade stac to load it"
            )
        if self.text_config is not None and not isinstance(self.text_config, (dict, PreTrainedConfig)):
            raise StacFormatError(
                f"text_config must be the base model's config (a dict), got {type(self.text_config).__name__}")
        if isinstance(self.spiking, (list, tuple, str, bytes, int, float)):
            raise StacFormatError(f"spiking must be a dict of SpikingConfig fields, got {self.spiking!r}")
        try:
            super().__post_init__(**kwargs)
        except StrictDataclassError as err:
            raise StacFormatError(f"invalid base model config in text_config: {err}") from err
        architecture_for(self.text_config.model_type)
        self.spiking = (SpikingConfig() if self.spiking is None else SpikingConfig.from_dict(self.spiking)).to_dict()
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, key, None) is None and getattr(self.text_config, key, None) is not None:
                setattr(self, key, getattr(self.text_config, key))

    @property
    def spiking_config(self) -> SpikingConfig:
        return SpikingConfig.from_dict(self.spiking)
