"""Ad hoc: the first chat turn of stac/chat_eval.json (What is the capital of France?) through the 3.05x
configuration (T=12 spiking attention, two lm_head decisions), with a full readout and with one decision:
the top-3 logits of the first reply token and 12 greedy tokens, against the ANN.
Usage: python docs/experiments/first_turn_diag.py
"""
import torch, stac
from stac.frontier import PRESETS, calibrate, convert_calibrated
from stac.calibration import default_calibration
torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
stats = calibrate(ann, default_calibration(tok))
best = PRESETS['sd-T10-m5+down12+gate_up9+q12+p12+headmx1.6+qoct1+poct1+downtop6+head+attn+oct8top4+prune5.4@16/6.75@10+w0.5']
msgs = [{"role": "user", "content": "What is the capital of France?"}]
enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True, return_tensors="pt")
n = enc["input_ids"].shape[1]
with torch.no_grad():
    la = ann(**enc).logits[0, -1]
print("ann", tok.decode(ann.generate(**enc, max_new_tokens=12, do_sample=False)[0, n:]), la.topk(3))
for name, cfg in (("best", best), ("best, full readout", best.replace(head_prune=())), ("best, one decision", best.replace(head_prune=((6.5, 10.0),)))):
    snn = convert_calibrated(ann, cfg, stats)
    with torch.no_grad():
        ls = snn(**enc).logits[0, -1]
        out = snn.generate(**enc, max_new_tokens=12, do_sample=False)[0, n:]
    print(name, repr(tok.decode(out)), ls.topk(3), snn.model.lm_head.last_kept if hasattr(snn.model.lm_head, "last_kept") else "")
