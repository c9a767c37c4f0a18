"""The fast path: fused ops, each one backend kernel (or one composed primitive) where the core
ops of `deers/ops/` would need several passes and saved intermediates.

Each module pairs the fused op with a `*_reference` built from core ops only (the same maths in
the readable form, what `GPT(config, fused=False)` runs); tests/test_fused.py checks that both give
the same values and gradients. Each Op class that runs a fused backend primitive (14-22) says so
with `fused = True`, as does the softmax of deers/ops/reduce.py (primitive 14);
tests/test_gpt_core_path.py finds those ops from the code and checks the marks.

cross_entropy.py         loss and dlogits in one pass over (N, C) logits      (backend item 15)
linear_cross_entropy.py  lm_head GEMM + cross-entropy in row chunks, no full logits
rms_norm.py              RMSNorm forward and backward                           (item 16)
attention.py             rotary embedding (item 17), the causal softmax       (item 14, causal)
                         and the whole causal attention softmax(q k^T) v     (item 22)
adamw.py                 one AdamW update of a parameter and its moments       (item 18)

Fused ops that compute their gradient in forward give it out through `Op.hand_out`
(deers/autograd.py), which honours `retain_graph`; their losses are 0-d tensors on the device.
"""
