"""Fidelity of an SNN against its ANN on real text and in greedy chat, measured side by side."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import read_text, token_windows


@torch.no_grad()
def compare_on_text(ann, snn, tokenizer, text: str = "lee_background", n_tokens: int = 2048,
                    window: int = 512) -> dict:
    """Perplexity of both models, top-1 next-token agreement and mean KL(ANN || SNN).

    ``text`` is a corpus name (``lee_background``) or a path. Non-overlapping windows of ``window`` tokens.
    """
    if isinstance(text, str) and "\n" not in text and len(text) < 4096:
        text = read_text(text)
    nll_a = nll_s = kl = 0.0
    agree = count = 0
    for ids in token_windows(tokenizer, text, n_tokens, window):
        ids = ids.reshape(1, -1)
        la = ann(input_ids=ids, use_cache=False).logits[0, :-1].float()
        ls = snn(input_ids=ids, use_cache=False).logits[0, :-1].float()
        target = ids[0, 1:]
        lpa, lps = F.log_softmax(la, -1), F.log_softmax(ls, -1)
        nll_a += -lpa.gather(1, target[:, None]).sum().item()
        nll_s += -lps.gather(1, target[:, None]).sum().item()
        kl += (lpa.exp() * (lpa - lps)).sum().item()
        agree += (la.argmax(-1) == ls.argmax(-1)).sum().item()
        count += target.numel()
    ppl_ann, ppl_snn = math.exp(nll_a / count), math.exp(nll_s / count)
    return {
        "tokens": count,
        "ppl_ann": ppl_ann,
        "ppl_snn": ppl_snn,
        "ppl_ratio": ppl_snn / ppl_ann,
        "top1_agreement": agree / count,
        "kl": kl / count,
    }
