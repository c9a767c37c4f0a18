"""The ops: one `Op` subclass per operation (forward + backward), with a plain function beside it.

elementwise.py    unary math, binary arithmetic with broadcasting, scalars, comparisons, where, casts
reduce.py         sum, max, min, mean, argmax, logsumexp, softmax, log_softmax
shape.py          views (permute, broadcast_to, reshape, narrow, indexing), compact, cat, stack
linalg.py         matmul
indexing.py       gather, index_select, embedding

The fused fast path (cross-entropy, lm_head + cross-entropy, RMSNorm, RoPE, causal softmax,
AdamW) sits apart in deers/fused/, each op beside a reference written from these core ops.

docs/architecture.md follows one expression through these files; adding an op is one Op subclass
here, a plain function, and a check_op test in tests/test_ops.py.
"""
