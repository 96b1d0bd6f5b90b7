"""Ad hoc: the ANN's own replies to the first chat turn of stac/chat_eval.json (What is the capital of
France?) when its first token is forced to each of its top 3 candidates ("The", "L", "La"): what a
flipped near-tie leads to without any spiking. Prints the top-5 first tokens and the three greedy replies.
Usage: python docs/experiments/forced_first_token.py
"""
import torch

import stac

torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
msgs = [{"role": "user", "content": "What is the capital of France?"}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True, return_tensors="pt")["input_ids"]
n = ids.shape[1]
with torch.no_grad():
    values, tokens = ann(input_ids=ids).logits[0, -1].topk(5)
print([(tok.decode(int(t)), round(float(v), 2)) for t, v in zip(tokens, values)])
for first in tokens[:3]:
    x = torch.cat([ids, first.view(1, 1)], 1)
    out = ann.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False)
    print(repr(tok.decode(out[0, n:])))
