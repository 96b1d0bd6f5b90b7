"""STAC: convert pretrained transformer LLMs into spiking neural networks that still hold a conversation.

    import stac
    ann, tok = stac.load_base("embedded")
    snn = stac.convert(ann, stac.SpikingConfig(), calibration=stac.default_calibration(tok))
    snn.save_pretrained("out/snn")                # then AutoModelForCausalLM.from_pretrained("out/snn")
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .architectures import ARCHITECTURES, UnsupportedArchitectureError, architecture_for
from .calibration import default_calibration
from .coding import CODINGS, make_coding
from .config import ENGINES, SpikingConfig
from .configuration_stac import STAC_FORMAT_VERSION, StacConfig, StacFormatError
from .convert import convert
from .layers import SpikeCode, SpikeEncoder, SpikingLinear
from .modeling_stac import StacCheckpointError, StacForCausalLM
from .sources import EMBEDDED, load_base

AutoConfig.register(StacConfig.model_type, StacConfig, exist_ok=True)
AutoModelForCausalLM.register(StacConfig, StacForCausalLM, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES", "CODINGS", "EMBEDDED", "ENGINES", "STAC_FORMAT_VERSION", "SpikeCode", "SpikeEncoder",
    "SpikingConfig", "SpikingLinear", "StacCheckpointError", "StacConfig", "StacForCausalLM",
    "StacFormatError", "UnsupportedArchitectureError", "architecture_for", "convert", "default_calibration",
    "load_base", "make_coding",
]
