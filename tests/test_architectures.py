"""The registry decides what is replaced; unknown architectures are named in the error."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, BertConfig, BertLMHeadModel

import stac
from stac.architectures import ARCHITECTURES, spikify
from stac.layers import SpikingLinear
from tests.conftest import tiny_ann, tiny_calibration


def test_every_block_matmul_is_spiking_and_nothing_else(kind):
    ann = tiny_ann(kind)
    snn = stac.convert(ann, stac.SpikingConfig(), calibration=tiny_calibration())
    arch = ARCHITECTURES[kind]
    blocks = snn.model.get_submodule(arch.blocks)
    for block in blocks:
        spiking = [n for n, m in block.named_modules() if isinstance(m, SpikingLinear)]
        assert sorted(spiking) == sorted(c for g in arch.groups for c in g.consumers)
        leftover = [n for n, m in block.named_modules()
                    if isinstance(m, nn.Linear) and not n.endswith("base_layer")]
        assert leftover == []
    # + the lm_head's encoder, + each attention's query and softmax-weight encoders (spiking_attention, the default)
    assert len(snn.encoders) == len(arch.groups) * len(blocks) + 1 + 2 * len(blocks)
    assert isinstance(snn.model.lm_head, SpikingLinear)
    assert snn.model.lm_head.encoder is snn.encoders["model.encoder_head"]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_spiking_head_false_keeps_a_float_lm_head(kind):
    config = stac.SpikingConfig(spiking_head=False)
    assert "lm_head" in config.float_operations
    snn = stac.convert(tiny_ann(kind), config, calibration=tiny_calibration())
    assert type(snn.model.lm_head) is nn.Linear
    assert "model.encoder_head" not in snn.encoders
    assert "lm_head" not in stac.SpikingConfig().float_operations


def test_a_saved_config_without_spiking_head_reads_as_a_float_head():
    """Checkpoints written before the option existed have a float lm_head and must load as they were."""
    old = stac.SpikingConfig(spiking_head=False).to_dict()
    del old["spiking_head"]
    assert stac.SpikingConfig.from_dict(old).spiking_head is False


def test_an_unsupported_model_is_refused_by_name_and_left_untouched():
    model = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, is_decoder=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(stac.UnsupportedArchitectureError, match="'bert'.*gpt2.*llama"):
        stac.convert(model, stac.SpikingConfig(), calibration=tiny_calibration())
    with pytest.raises(stac.UnsupportedArchitectureError):
        spikify(model, stac.SpikingConfig())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
