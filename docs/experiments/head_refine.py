"""Offline: stop accumulating lm_head outputs that can no longer matter.

The lm_head's input neurons spike most significant step first, so after step t every logit's
accumulator holds a coarse estimate W x_(<=t) of its final value. An output whose estimate sits more than
``delta`` nats below the best estimate stops there: later spikes skip its synapses and its accumulator
steps, and its logit keeps the coarse value. This measures what that costs in quality (against the ANN,
and against the default SNN's own logits) and saves in energy, for prune steps t and margins delta.

Inputs: the default SNN (closed form) on 2,048 tokens of lee_background; the lm_head encoder's input
is recorded with a hook, its spike train recomputed on integers (stac.neurons.bitplane_digits).
Energy (text average, 45 nm: E_AC 0.9 pJ, element-wise 4.6 pJ): the head's synaptic ops and Horner steps
with and without pruning, plus two element-wise ops per output at the prune step (a max and a compare).

Usage: python docs/experiments/head_refine.py            (one decision: every t, delta; the variance checks)
       python docs/experiments/head_refine.py stages     (several decisions in sequence)
"""
import sys
import math

import torch
import torch.nn.functional as F

import stac
from stac.architectures import architecture_for, head_encoder_name
from stac.calibration import default_calibration
from stac.data import read_text, token_windows
from stac.frontier import calibrate, convert_calibrated
from stac.neurons import bitplane_digits

torch.set_num_threads(2)
E_AC, E_EW = 0.9e-12, 4.6e-12
ann, tok = stac.load_base("embedded")
arch = architecture_for(ann.config.model_type)
snn = convert_calibrated(ann, stac.SpikingConfig(), calibrate(ann, default_calibration(tok)))
enc = next(e for name, e in snn.encoders.items() if name.endswith(head_encoder_name(arch)))
W = snn.model.lm_head.base_layer.weight.detach().float()  # [V, d]
inputs, ann_logits, snn_logits, targets = [], [], [], []
handle = enc.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().float().reshape(-1, a[0].shape[-1])))
with torch.no_grad():
    for ids in token_windows(tok, read_text("lee_background"), 2048, 512):
        ids = ids.reshape(1, -1)
        ann_logits.append(ann(input_ids=ids, use_cache=False).logits[0, :-1].float())
        snn_logits.append(snn(input_ids=ids, use_cache=False).logits[0, :-1].float())
        inputs[-1] = inputs[-1][:-1]
        targets.append(ids[0, 1:])
handle.remove()
x, la, ls, target = torch.cat(inputs), torch.cat(ann_logits), torch.cat(snn_logits), torch.cat(targets)
lpa = F.log_softmax(la, -1)
del ann_logits, snn_logits
c = enc.coding
unit = c.unit(enc.threshold.float())
levels = c.levels(c.normalise(x, enc.threshold.float()))
digits = bitplane_digits(levels, c.timesteps, c.sparsity, c.steps_per_octave, c.coarse_octaves)  # [S, P, d]
weights = torch.tensor(c.step_weights(), dtype=torch.float32)
S, P, V = digits.shape[0], digits.shape[1], W.shape[0]
spikes_per_step = digits.abs().float().sum(-1)  # [S, P]
full_logits = (levels * unit) @ W.t()
print(f"steps {S}, positions {P}, spikes per token {float(spikes_per_step.sum(0).mean()):.0f}, "
      f"closed form matches the model: max |diff| {float((full_logits - ls).abs().max()):.2e}")


def quality(logits):
    lp = F.log_softmax(logits, -1)
    return dict(top1=float((logits.argmax(-1) == la.argmax(-1)).float().mean()),
                kl=float((lpa.exp() * (lpa - lp)).sum(-1).mean()),
                ppl_ratio=math.exp(float((lpa - lp).gather(1, target[:, None]).mean())))


base = quality(full_logits)
e_full = float(spikes_per_step.sum(0).mean()) * V * E_AC + (S - 1) * V * E_EW
print(f"default SNN: {base}, head {e_full * 1e6:.2f} uJ per token")
def staged(stages):
    """Decisions at (t, delta) in order: after step t, outputs more than delta behind the best current value
    stop (those already stopped stay stopped). Returns (logits, head energy per token, kept counts)."""
    value = torch.zeros(P, V)
    active = torch.ones(P, V, dtype=torch.bool)
    cum_prev = torch.zeros_like(x)
    cum = torch.zeros_like(x)
    synops = torch.zeros(P)
    acc_ops = torch.zeros(P)
    done = 0
    for t_stop, delta in list(stages) + [(S - 1, None)]:
        for t in range(done, t_stop + 1):
            cum += weights[t] * digits[t].float()
        n = active.sum(-1).float()
        synops += spikes_per_step[done:t_stop + 1].sum(0) * n
        acc_ops += (t_stop + 1 - done) * n
        value = torch.where(active, value + ((cum - cum_prev) * unit) @ W.t(), value)
        cum_prev = cum.clone()
        done = t_stop + 1
        if delta is not None:
            best = value.masked_fill(~active, -float("inf")).amax(-1, keepdim=True)
            active &= value >= best - delta
            acc_ops += 2 * V
    energy = synops.mean() * E_AC + (acc_ops.mean() - V) * E_EW
    return value, float(energy), active.sum(-1).float()


if sys.argv[1:] == ["stages"]:
    for stages in ([(22, 10.0)], [(14, 16.0)], [(14, 16.0), (22, 10.0)], [(12, 16.0), (22, 10.0)],
                   [(14, 16.0), (24, 10.0)], [(14, 16.0), (20, 12.0)], [(10, 20.0), (16, 14.0), (24, 10.0)],
                   [(14, 16.0), (22, 10.0), (28, 7.0)], [(12, 18.0), (18, 13.0), (24, 9.0)]):
        logits, energy, kept = staged(stages)
        q = quality(logits)
        print(f"{stages}: head {energy * 1e6:6.2f} uJ (saves {(e_full - energy) * 1e6:5.2f}), kept at the end "
              f"{float(kept.mean()):6.0f}; top1 {q['top1']:.4f}, KL {q['kl']:.5f}, PPL x{q['ppl_ratio']:.4f}, "
              f"top-1 changed vs SNN {float((logits.argmax(-1) != full_logits.argmax(-1)).float().mean()):.4f}",
              flush=True)
    sys.exit()

# The variance correction: a pruned logit misses W_j r (r: the neurons' residual after step t), so
# exp(logit) is biased up by about exp(var_j / 2); subtracting var_j / 2, with var_j = sum_i W_ji^2 E[r_i^2]
# and E[r_i^2] per neuron from the first half of the positions, removes that bias from the normaliser.
# Quality is reported on the second half for both (the raw coarse logit, and the corrected one).
half = P // 2
W2 = W.pow(2)
held = slice(half, P)


def quality_on(logits, rows):
    lp, lpa_r = F.log_softmax(logits[rows], -1), lpa[rows]
    return dict(top1=float((logits[rows].argmax(-1) == la[rows].argmax(-1)).float().mean()),
                kl=float((lpa_r.exp() * (lpa_r - lp)).sum(-1).mean()),
                ppl_ratio=math.exp(float((lpa_r - lp).gather(1, target[rows][:, None]).mean())))


cum = torch.zeros_like(x)
held_base = quality_on(full_logits, held)
print(f"second half, default SNN: {held_base}")
for t in range(S):
    cum += weights[t] * digits[t].float()
    if t < 4 or t > 30 or t % 2:
        continue
    partial = (cum * unit) @ W.t()  # [P, V]
    residual = (levels - cum) * unit
    var = W2 @ residual[:half].pow(2).mean(0)  # [V]
    gap = partial.amax(-1, keepdim=True) - partial
    for delta in (6.0, 8.0, 10.0, 12.0, 16.0):
        active = gap <= delta
        logits = torch.where(active, full_logits, partial)
        pruned_first = ~active[:half]
        offset = float((full_logits[:half] - partial[:half])[pruned_first].mean())  # selection bias
        plus = torch.where(active, full_logits, partial + var / 2)
        shifted = torch.where(active, full_logits, partial + offset)
        n_active = active.sum(-1).float()  # [P]
        synops = spikes_per_step[:t + 1].sum(0) * V + spikes_per_step[t + 1:].sum(0) * n_active
        energy = synops.mean() * E_AC + (t * V + (S - 1 - t) * n_active.mean() + 3 * V) * E_EW
        q, qh, qc, qs = quality(logits), quality_on(logits, held), quality_on(plus, held), quality_on(shifted, held)
        print(f"t={t:2d} (weight {int(weights[t]):3d}, {float(spikes_per_step[:t + 1].sum() / spikes_per_step.sum()):.0%} of spikes) "
              f"delta={delta:4.1f}: active {float(n_active.mean()):7.0f} (max {int(n_active.max())}), "
              f"head {float(energy) * 1e6:6.2f} uJ (saves {(e_full - float(energy)) * 1e6:5.2f}); all: "
              f"top1 {q['top1']:.4f}, KL {q['kl']:.5f}, PPL x{q['ppl_ratio']:.4f}, top-1 changed vs SNN "
              f"{float((logits.argmax(-1) != full_logits.argmax(-1)).float().mean()):.4f}; second half raw: "
              f"KL {qh['kl']:.5f} PPL x{qh['ppl_ratio']:.4f}, +var/2: KL {qc['kl']:.5f} PPL x{qc['ppl_ratio']:.4f}; "
              f"+{offset:.3f} (mean on the first half): KL {qs['kl']:.5f} PPL x{qs['ppl_ratio']:.4f}", flush=True)
