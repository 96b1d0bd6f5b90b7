"""Ad hoc: microseconds per call of the compiled kernels that serve the default at decode sizes, against
the torch operations they replace, on random tensors of SmolLM2-135M's shapes (2 threads):
- the lm_head's row kernel (stac.kernels.rows_linear) over all 49,152 rows and over 30% of them, against
  F.linear and a gather (index_select) + F.linear;
- spiking attention's two closed-form loops (attention_weights, attention_values) at a 257-token context,
  9 query heads over 3 key/value heads of 64.
Usage: python docs/experiments/kernel_micro.py
"""
import time

import torch
import torch.nn.functional as F

from stac import kernels

torch.set_num_threads(2)


def us(fn, n=30):
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - start) / n * 1e6, 1)


weight, x = torch.randn(49152, 576), torch.randn(1, 576)
every = torch.arange(49152)
share = torch.randperm(49152)[: 49152 * 3 // 10].sort().values
print("lm_head, every row: rows_linear", us(lambda: kernels.rows_linear(x, weight, every)),
      "us; F.linear", us(lambda: F.linear(x, weight)), "us")
print("lm_head, 30% of the rows: rows_linear", us(lambda: kernels.rows_linear(x, weight, share)),
      "us; index_select + F.linear", us(lambda: F.linear(x, weight.index_select(0, share))), "us")
q, k, v = torch.randn(1, 1, 9 * 64), torch.randn(1, 3, 257, 64), torch.randn(1, 3, 257, 64)
w = kernels.attention_weights(q, k, None, 9, 0.125)
p = torch.where(torch.rand_like(w) < 0.2, w, torch.zeros_like(w))
print("attention at 257 keys: attention_weights", us(lambda: kernels.attention_weights(q, k, None, 9, 0.125), 300),
      "us; attention_values", us(lambda: kernels.attention_values(p, v), 300), "us")
