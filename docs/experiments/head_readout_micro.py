"""Ad hoc: one decoded position through the default lm_head, SpikingLinear (every output receives every spike)
against the early-stopping SpikingReadout, on the same encoder and weights (3 rounds of 200 calls), and a
profile of the readout. Usage: python docs/experiments/head_readout_micro.py
"""
import time, torch, stac
from stac.layers import SpikingLinear
torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
snn = stac.convert(ann, stac.SpikingConfig(), calibration=stac.default_calibration(tok, n_tokens=512))
head = snn.model.lm_head
x = []
h = head.encoder.register_forward_pre_hook(lambda m, a: x.append(a[0].detach()))
with torch.no_grad(): snn(input_ids=tok("The capital of France is Paris, and the capital of Germany is", return_tensors="pt").input_ids)
h.remove()
xs = x[-1][:, -1:]
plain = SpikingLinear(head.base_layer, head.encoder)
def bench(m, n=200):
    with torch.no_grad():
        for _ in range(10): m(xs.clone())
        t = time.perf_counter()
        for _ in range(n): m(xs.clone())
    return (time.perf_counter() - t) / n * 1e3
for r in range(3):
    print("plain %.2f ms  readout %.2f ms" % (bench(plain), bench(head)), head.last_kept)
import cProfile, pstats
with torch.no_grad():
    cProfile.run("for _ in range(100): head(xs.clone())", "/tmp/prof")
pstats.Stats("/tmp/prof").sort_stats("tottime").print_stats(12)
