"""What several offline experiments share: the ANN with the default SNN on one calibration, and each
encoder's input as the ANN computes it. Import it from a script in this folder (``from _setup import ...``)."""
import torch

import stac
from stac.architectures import architecture_for, encoder_inputs, synapse_weights
from stac.calibration import default_calibration
from stac.frontier import calibrate, convert_calibrated


def default_pair():
    """(ann, tokenizer, arch, snn, encoders by name inside the ANN, fan-out of each encoder)."""
    ann, tok = stac.load_base("embedded")
    arch = architecture_for(ann.config.model_type)
    snn = convert_calibrated(ann, stac.SpikingConfig(), calibrate(ann, default_calibration(tok)))
    enc_by_key = {name.removeprefix("model."): enc for name, enc in snn.encoders.items()}
    fan = {enc: sum(w.shape[0] for w in ws) for enc, ws in synapse_weights(snn).items()}
    return ann, tok, arch, snn, enc_by_key, fan


@torch.no_grad()
def collect(ann, arch, sequences, limit=None):
    """({encoder name: its inputs [tokens, channels]}, tokens run): the ANN over ``sequences`` until
    ``limit`` tokens, observed where each encoder's input arrives."""
    acts, handles = {}, []

    def pre(key):
        def hook(module, args):
            acts.setdefault(key, []).append(args[0].detach().float().reshape(-1, args[0].shape[-1]))
        return hook

    for key, layer in encoder_inputs(ann, arch):
        handles.append(layer.register_forward_pre_hook(pre(key)))
    n = 0
    try:
        for ids in sequences:
            ann(input_ids=ids.reshape(1, -1), use_cache=False)
            n += ids.numel()
            if limit and n >= limit:
                break
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in acts.items()}, n
