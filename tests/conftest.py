"""Shared fixtures: tiny seeded models built in the test, and the real SmolLM2 for slow tests."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import stac

torch.set_num_threads(2)

VOCAB = 96


def tiny_config(kind: str):
    if kind == "llama":
        return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                           max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0)
    raise ValueError(kind)


def tiny_ann(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(kind)).eval()


def tiny_calibration(seed: int = 1, n: int = 4, length: int = 64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=g) for _ in range(n)]


@pytest.fixture(params=["llama", "gpt2"])
def kind(request):
    return request.param


@pytest.fixture
def tiny_pair(kind):
    """(ann, snn) for a tiny random model of each architecture, default spiking config."""
    ann = tiny_ann(kind)
    snn = stac.convert(ann, stac.SpikingConfig(), calibration=tiny_calibration())
    return ann, snn


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct ANN, its tokenizer and its SNN at the default config."""
    ann, tok = stac.load_base("embedded")
    snn = stac.convert(ann, stac.SpikingConfig(), calibration=stac.default_calibration(tok))
    return ann, tok, snn
