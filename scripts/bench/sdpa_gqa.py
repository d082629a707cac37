#!/usr/bin/env python3
"""Attention over grouped query heads on CPU: SDPA with keys/values repeated per query head
against SDPA's grouped path (`enable_gqa`), for SmolLM2's 9 query / 3 kv heads.

  sdpa_gqa.py   (one torch thread; prints one line per shape: batch, new tokens, keys)
"""
import torch, time
torch.set_num_threads(1)
F=torch.nn.functional
def bench(f, n=10):
    f(); t=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t)/n*1e3
for dt in [torch.float32, torch.bfloat16]:
  for (b,l,t) in [(16,1,300),(16,16,360),(16,64,400),(16,128,400),(4,256,256)]:
    q=torch.randn(b,9,l,64,dtype=dt); k=torch.randn(b,3,t,64,dtype=dt); v=torch.randn(b,3,t,64,dtype=dt)
    m=torch.ones(b,1,l,t,dtype=torch.bool).tril(t-l)
    rep=lambda: F.scaled_dot_product_attention(q,k.repeat_interleave(3,1),v.repeat_interleave(3,1),attn_mask=m)
    gqa=lambda: F.scaled_dot_product_attention(q,k,v,attn_mask=m,enable_gqa=True)
    print(dt,b,l,t,"rep %.2f gqa %.2f ms"%(bench(rep),bench(gqa)))
