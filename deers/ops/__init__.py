"""The ops: one `Op` subclass per operation (forward + backward), with a plain function beside it.

elementwise.py  unary math, binary arithmetic with broadcasting, scalars, comparisons, where, casts
reduce.py       sum, max, min, mean, argmax, logsumexp, softmax, log_softmax
shape.py        views (permute, broadcast_to, reshape, narrow, indexing), compact, cat
linalg.py       matmul
indexing.py     gather, index_select, embedding
fused.py        cross_entropy and rms_norm kernels with hand-written backward
"""
