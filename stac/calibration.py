"""Calibration: per-input-channel activation statistics of the ANN, gathered with forward pre-hooks.

The ANN is only observed: hooks are removed and its training flag restored whatever happens.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import Architecture, attention_modules, encoder_inputs
from .attention import observe_queries
from .data import CALIBRATION_CHATS, chat_token_sequences, read_text, token_windows


def default_calibration(tokenizer, n_tokens: int | None = None, window: int = 512) -> list[torch.Tensor]:
    """Chat-formatted prompts plus gensim's ``lee.cor`` (all ~5,100 tokens unless ``n_tokens`` is given).

    Never the evaluation text (``lee_background.cor``).
    """
    chats = chat_token_sequences(tokenizer, CALIBRATION_CHATS) if tokenizer.chat_template else []
    return chats + token_windows(tokenizer, read_text("lee"), n_tokens, window)


@torch.no_grad()
def channel_max(model: nn.Module, arch: Architecture, sequences: list[torch.Tensor],
                progress: bool = False) -> dict[str, torch.Tensor]:
    """Largest |x| per input channel of every encoder group (and the head's), keyed by encoder name.

    Where the architecture has an attention entry, also the largest |query| per head and channel after
    RoPE (what ``stac.attention``'s query encoders see), keyed by the query encoder's name; the model's
    own attention implementation still computes every output.
    """
    if not sequences:
        raise ValueError("calibration needs at least one token sequence")
    stats: dict[str, torch.Tensor] = {}
    handles = []

    def observer(key):
        def hook(module, args):
            x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(0)
            stats[key] = x if key not in stats else torch.maximum(stats[key], x)
        return hook

    for key, layer in encoder_inputs(model, arch):
        handles.append(layer.register_forward_pre_hook(observer(key)))
    was_training = model.training
    model.eval()
    queries = (observe_queries(model, attention_modules(model, arch)) if arch.attention is not None
               else contextlib.nullcontext({}))
    try:
        with queries as query_stats:
            for ids in tqdm(sequences, desc="calibrating", unit="seq", disable=not progress):
                ids = ids.reshape(1, -1).to(model.device)
                model(input_ids=ids, use_cache=False)
        stats.update(query_stats)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats
