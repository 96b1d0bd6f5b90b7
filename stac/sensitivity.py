"""How much each encoder channel's rounding error costs at the output: the diagonal Fisher information.

Rounding a channel's values with step D adds noise of variance about D^2 / 12 (at most the values' own
mean square, where D is so coarse that they round to 0). To second order, the KL divergence from the ANN's
next-token distribution to the SNN's grows by

    1/2 * sum over channels c of F_c * noise_c,   F_c = E[(d log p(y) / d x_c)^2],  y ~ p

per position: F_c is the diagonal of the Fisher information of the output distribution with respect to the
activation x_c (Kirkpatrick et al. 2017; used for bit allocation by HAWQ, Dong et al. 2019, and
mixed-precision quantisation since). ``fisher_diagonal`` estimates F_c and the mean square of x_c for every
encoder input of an ANN in one forward and backward pass per calibration sequence, with the next tokens
sampled from the ANN's own distribution (seeded). Every sequence weighs the same, whatever its length: the
short chat prompts count as much as a 512-token window of news text. Pooled over positions instead, the
chat prompts were 4% of the estimate, and the resulting SNN answered "What is the capital of France?" in
nonsense (docs/levers.md (l)). The ANN's weights get no gradients and its outputs are
unchanged; hooks are removed and its training flag restored whatever happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import Architecture, encoder_inputs


@dataclass
class Sensitivity:
    """Per encoder (keyed like ``calibration.channel_max``): Fisher diagonal and mean square, per channel."""

    fisher: dict[str, torch.Tensor]
    mean_square: dict[str, torch.Tensor]
    tokens: int


def fisher_diagonal(model: nn.Module, arch: Architecture, sequences: list[torch.Tensor], seed: int = 0,
                    progress: bool = False) -> Sensitivity:
    """F_c and E[x_c^2] at the input of every encoder group (and the lm_head's): the mean over positions of
    each sequence, averaged over the sequences."""
    if not sequences:
        raise ValueError("the sensitivity pass needs at least one token sequence")
    fisher: dict[str, torch.Tensor] = {}  # sums over the current sequence's positions
    square: dict[str, torch.Tensor] = {}
    totals: tuple[dict, dict] = ({}, {})  # sums over sequences of the per-sequence means
    handles = []

    def observer(key):
        def hook(module, args):
            x = args[0]
            flat = x.detach().float().reshape(-1, x.shape[-1])
            square[key] = square.get(key, 0) + flat.pow(2).sum(0)
            if x.requires_grad:
                def on_grad(grad):
                    g = grad.detach().float().reshape(-1, grad.shape[-1]).pow(2).sum(0)
                    fisher[key] = fisher.get(key, 0) + g
                x.register_hook(on_grad)
        return hook

    sites = encoder_inputs(model, arch)
    for key, layer in sites:
        handles.append(layer.register_forward_pre_hook(observer(key)))
    # Gradients reach the activations from the embeddings' output; no parameter takes part.
    embeddings = model.get_input_embeddings()
    handles.append(embeddings.register_forward_hook(lambda module, args, out: out.requires_grad_()))
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = 0
    try:
        model.requires_grad_(False)
        with torch.enable_grad():
            for ids in tqdm(sequences, desc="sensitivity", unit="seq", disable=not progress):
                ids = ids.reshape(1, -1).to(model.device)
                logits = model(input_ids=ids, use_cache=False).logits[0].float()
                log_p = torch.log_softmax(logits, -1)
                y = torch.multinomial(log_p.detach().exp().cpu(), 1, generator=generator).to(log_p.device)
                log_p.gather(1, y).sum().backward()
                tokens += ids.numel()
                for total, current in zip(totals, (fisher, square)):
                    for key, value in current.items():
                        total[key] = total.get(key, 0) + value / ids.numel()
                    current.clear()
    finally:
        for h in handles:
            h.remove()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    missing = sorted(key for key, _ in sites if key not in totals[0])
    if missing:
        raise RuntimeError(f"no gradient reached {len(missing)} encoder inputs, e.g. {missing[:3]}")
    n = len(sequences)
    return Sensitivity(fisher={k: (v / n).cpu() for k, v in totals[0].items()},
                       mean_square={k: (v / n).cpu() for k, v in totals[1].items()}, tokens=tokens)
