import torch, time, stac
from stac.attention import spiking_attention_forward
from stac.layers import SpikeEncoder
from transformers.integrations.sdpa_attention import sdpa_attention_forward
torch.set_num_threads(2)
class M(torch.nn.Module):
    def __init__(s):
        super().__init__(); s.encoder_q = SpikeEncoder(576, "signed_digit", 10); s.encoder_p = SpikeEncoder(1, "signed_digit", 10)
        s.encoder_q.threshold.fill_(5.0); s.num_key_value_groups = 3; s.is_causal = True
m = M().eval()
q = torch.randn(1, 9, 1, 64); k = torch.randn(1, 3, 257, 64); v = torch.randn(1, 3, 257, 64)
def t(fn, n=300):
    for _ in range(20): fn()
    s = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - s) / n * 1e6
with torch.no_grad():
    print("sdpa", t(lambda: sdpa_attention_forward(m, q, k, v, None, scaling=0.125)))
    print("spiking", t(lambda: spiking_attention_forward(m, q, k, v, None, scaling=0.125)))
    print("enc_q", t(lambda: m.encoder_q(q.transpose(1,2).reshape(1,1,576))))
    p = torch.rand(1,9,1,257,1)
    print("enc_p", t(lambda: m.encoder_p(p)))
import cProfile, pstats
with torch.no_grad():
    pr = cProfile.Profile(); pr.enable()
    for _ in range(300): spiking_attention_forward(m, q, k, v, None, scaling=0.125)
    pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(14)
