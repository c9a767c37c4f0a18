"""ParamStore and its path builder: every parameter is created under a stable dotted name.

    store = ParamStore(device="cpu", dtype=deers.f32)
    vb = store.root()
    w = vb.pp("blocks").pp(0).pp("mlp").get((H, D), "weight", init=Normal(0.0, 0.02))
    store.named_parameters()      # [("blocks.0.mlp.weight", w)]

Layers take a path (`vb=`) and create their Vars through it, so the names a checkpoint stores are
the names the model code spells out. The initialisers below draw from deers' generator, so
`deers.manual_seed` makes a model's initial weights reproducible.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from ..creation import full, rand, randn
from ..device import Device, as_device
from ..dtype import DType, as_dtype, f32
from ..errors import ShapeError
from ..tensor import Tensor, Var
from .module import LoadResult, load_named


# ---- initialisers: callables (shape, dtype, device) -> Tensor ----------------------------------
class Init:
    """How a new parameter is filled. Subclasses implement `__call__(shape, dtype, device)`."""

    def __call__(self, shape: tuple[int, ...], dtype: DType, device: Device) -> Tensor:
        raise NotImplementedError(type(self).__name__)


class Normal(Init):
    """Samples from N(mean, std^2) (GPT weights use Normal(0, 0.02))."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = float(mean), float(std)

    def __call__(self, shape, dtype, device):
        return randn(*shape, dtype=dtype, device=device) * self.std + self.mean

    def __repr__(self) -> str:
        return f"Normal({self.mean}, {self.std})"


class Uniform(Init):
    """Samples from U(low, high)."""

    def __init__(self, low: float, high: float):
        self.low, self.high = float(low), float(high)

    def __call__(self, shape, dtype, device):
        return rand(*shape, dtype=dtype, device=device) * (self.high - self.low) + self.low

    def __repr__(self) -> str:
        return f"Uniform({self.low}, {self.high})"


class Constant(Init):
    """Every element set to `value` (norm gains use Constant(1.0), biases Constant(0.0))."""

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, shape, dtype, device):
        return full(tuple(shape), self.value, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"Constant({self.value})"


def kaiming_uniform(fan_in: int) -> Uniform:
    """PyTorch's default for Linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (kaiming_uniform_ with a = sqrt(5) gives bound = sqrt(6 / ((1 + 5) fan_in)) = 1/sqrt(fan_in).)
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return Uniform(-bound, bound)


# ---- the store and its path builder --------------------------------------------------------------
class ParamStore:
    """Owns the parameters of a model, by dotted name, in creation order, on one device and dtype."""

    def __init__(self, device: "Device | str | None" = None, dtype: "DType | str" = f32):
        self.device = as_device(device)
        self.dtype = as_dtype(dtype)
        self._vars: dict[str, Var] = {}

    def root(self) -> "ParamPath":
        """The empty path; extend it with `.pp(name)`."""
        return ParamPath(self, ())

    def get_or_create(self, name: str, shape: tuple[int, ...], init: Init, dtype: DType | None = None) -> Var:
        """The Var called `name`, created with `init` on first request (same shape required later)."""
        shape = tuple(int(s) for s in shape)
        existing = self._vars.get(name)
        if existing is not None:
            if existing.shape != shape:
                raise ShapeError(f"ParamStore: parameter {name!r} exists with shape {existing.shape}, "
                                 f"requested again with shape {shape}")
            return existing
        value = init(shape, dtype or self.dtype, self.device)
        if value.shape != shape:
            raise ShapeError(f"ParamStore: init {init!r} for {name!r} gave shape {value.shape}, expected {shape}")
        var = Var(value.detach())
        self._vars[name] = var
        return var

    def parameters(self) -> list[Var]:
        """Every parameter, in creation order."""
        return list(self._vars.values())

    def named_parameters(self) -> list[tuple[str, Var]]:
        """(dotted name, Var) pairs in creation order."""
        return list(self._vars.items())

    def state_dict(self) -> dict[str, Tensor]:
        """Name -> Tensor (detached, sharing the parameter's buffer), in creation order."""
        return {name: var.detach() for name, var in self._vars.items()}

    def load_state_dict(self, state: "Mapping[str, Any]", strict: bool = True) -> LoadResult:
        """Copy values into the parameters in place, with the same checks as Module.load_state_dict."""
        return load_named(self.named_parameters(), state, strict, "ParamStore")

    def __getitem__(self, name: str) -> Var:
        return self._vars[name]

    def __contains__(self, name: str) -> bool:
        return name in self._vars

    def __len__(self) -> int:
        return len(self._vars)

    def __repr__(self) -> str:
        return f"ParamStore({len(self._vars)} parameters, device={self.device}, dtype={self.dtype.name})"


class ParamPath:
    """A position in a ParamStore's name space: `pp` extends it, `get` creates a Var under it."""

    __slots__ = ("store", "parts")

    def __init__(self, store: ParamStore, parts: tuple[str, ...]):
        self.store = store
        self.parts = parts

    def pp(self, part: "str | int") -> "ParamPath":
        """A path one level deeper: `vb.pp("blocks").pp(0)` names "blocks.0"."""
        part = str(part)
        if not part or "." in part:
            raise ValueError(f"ParamPath.pp: a path part must be non-empty and contain no '.', got {part!r}")
        return ParamPath(self.store, self.parts + (part,))

    def name(self, leaf: str) -> str:
        """The dotted name of `leaf` under this path."""
        return ".".join(self.parts + (leaf,))

    def get(self, shape: tuple[int, ...], leaf: str, init: Init, dtype: "DType | str | None" = None) -> Var:
        """The Var `leaf` under this path, created with `init` if it does not exist yet."""
        return self.store.get_or_create(self.name(leaf), shape, init, as_dtype(dtype) if dtype else None)

    @property
    def device(self) -> Device:
        return self.store.device

    @property
    def dtype(self) -> DType:
        return self.store.dtype

    @property
    def prefix(self) -> str:
        return ".".join(self.parts)

    def __repr__(self) -> str:
        return f"ParamPath({self.prefix!r})"
