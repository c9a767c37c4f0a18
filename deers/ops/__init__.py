"""The ops: one `Op` subclass per operation (forward + backward), with a plain function beside it.

elementwise.py    unary math, binary arithmetic with broadcasting, scalars, comparisons, where, casts
reduce.py         sum, max, min, mean, argmax, logsumexp, softmax, log_softmax
shape.py          views (permute, broadcast_to, reshape, narrow, indexing), compact, cat, stack
linalg.py         matmul
indexing.py       gather, index_select, embedding
cross_entropy.py  fused cross-entropy (loss and gradient in one backend kernel)
norm.py           fused RMSNorm
attention.py      fused rotary embedding and causal masked softmax
linear_cross_entropy.py  fused, chunked lm_head + cross-entropy (never holds the full logits)

docs/architecture.md follows one expression through these files; adding an op is one Op subclass
here, a plain function, and a check_op test in tests/test_ops.py.
"""
