"""The core ops: one `Op` subclass per operation (forward + backward), with a plain function beside it.

unary.py     y = f(x): one class per primitive of deers.backend.UnaryFn (Exp, Log, Relu, ...);
             square and rsqrt written from them
binary.py    y = f(a, b) with broadcasting: Add, Sub, Mul, Div, Pow, FloorDivide (//), Remainder (%),
             Maximum, Minimum; clamp
compare.py   masks: comparisons (no gradient), where, masked_fill
bitwise.py   &, |, ^, ~ on integers and bool (no gradient); logical_and/or/xor/not written from them
operands.py  PyTorch's type promotion (result_type), device checks, broadcasting, Python numbers as
             0-d constants
inplace.py   add_, mul_, ..., copy_, x[key] = value, w -= ...: written into the tensor's own buffer;
             the per-buffer version counter that backward checks
convert.py   casts and device moves
reduce.py    Sum, Max, Min, ArgMax, ArgMin; amax/amin, max/min(dim) -> (values, indices), mean and
             logsumexp written from them; softmax, log_softmax
sort.py      sort, argsort, topk: the order found on the host, the values gathered (gather's gradient)
shape.py     views (permute, broadcast_to, reshape, narrow, indexing), compact, cat, stack
linalg.py    matmul, linear (x @ W^T as one op, what nn.Linear records)
indexing.py  gather, index_select, embedding
scan.py      CumSum: running sums as a log-step scan of shifted adds (its backward the same scan reversed)
stats.py     var, std (composites), Norm2 and the other vector norms, the nuclear norm (host SVD)
split.py     split, chunk, unbind: views made with narrow and indexing
flip.py      flip (index_select with reversed positions), used by negative-step slices
advanced_index.py  several tensor indices and bool masks in getitem, placed by PyTorch's rule
triangle.py  tril, triu: where with a triangle mask
einsum.py    einsum ("...", diagonals, broadcasting, any number of operands): sums, permutes, reshapes and
             one batched matmul per pair of operands
special.py   erf and erfc from core array ops, to the dtype's rounding (the exact GELU's normal CDF)

An op's facts live in its class: the backend primitive it runs (`fn`, from the vocabulary in
deers/backend/__init__.py), whether it needs floats (`float_only`; Div: `float_result`), what it saves for backward,
its derivative (with a one-line derivation comment), and `differentiable = False` for ops whose
output has no gradient (comparisons, argmax, casts to integers), which `apply` never records.
Composite ops (sub's reverse form, square, rsqrt, clamp, mean, logsumexp, softmax over several
dims) are plain functions over other ops, with no backward of their own.

The fused fast path (cross-entropy, lm_head + cross-entropy, RMSNorm, RoPE, causal softmax,
AdamW) sits apart in deers/fused/, each op beside a reference written from these core ops.

docs/architecture.md follows one expression through these files; adding an op is one Op subclass
here, a Tensor method in deers/tensor.py, and a check_op test in tests/test_ops.py.
"""
