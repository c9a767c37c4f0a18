"""Checkpoints: one safetensors file with the model, the optimizer state, the step and the RNG state.

    checkpoint.save("ckpt/model.safetensors", model=model, optimizer=opt, step=step, extra={"config": cfg})
    info = checkpoint.load("ckpt/model.safetensors", model=model, optimizer=opt)   # info["step"], info["extra"]

`optimizer` may also be a list of optimizers over disjoint parameters (Muon + AdamW): each one's
state is saved and loaded, in order.

Layout of the file:
  - model tensors under exactly their state_dict names ("blocks.0.attn.qkv.weight"), so
    `safetensors.torch.load_file` opens a Deers checkpoint with the names of the PyTorch model;
  - optimizer arrays under "optim.<parameter name>.<slot>" ("optim.wte.weight.exp_avg");
  - JSON strings in the header metadata: "step", "extra" (your config), "rng" (every generator's
    state), "optimizer" (its type, hyper-parameters and scalar state such as step counts), and the
    deers / numpy versions.
Writes are atomic: a temporary file in the same folder is written, flushed and fsynced, then
renamed over the target, so a crash leaves the previous checkpoint intact.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, BinaryIO, Callable

import numpy as np

from .creation import get_rng_state, set_rng_state
from .errors import DeersError
from .nn.module import StateDictError

OPTIM_PREFIX = "optim."
_FORMAT = "deers-checkpoint-1"
_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
           "U64": np.uint64, "BOOL": np.bool_}


class CheckpointError(DeersError, ValueError):
    """A checkpoint file cannot be read, or does not fit the model / optimizer it is loaded into."""


# ---- save ------------------------------------------------------------------------------------------
def save(path: "str | os.PathLike", model=None, optimizer=None, step: int | None = None,
         extra: dict | None = None) -> None:
    """Write model, optimizer, step, RNG state and `extra` (JSON-serialisable) to `path`, atomically."""
    from . import __version__

    path = os.fspath(path)
    tensors: dict[str, np.ndarray] = {}
    if model is not None:
        for name, value in model.state_dict().items():
            tensors[name] = np.ascontiguousarray(value.numpy()).reshape(value.shape)  # a 0-d buffer stays 0-d
    optimizer_meta = None
    if isinstance(optimizer, (list, tuple)):
        optimizer_meta = [_optimizer_to_file(opt, _parameter_names(model, opt), tensors) for opt in optimizer]
    elif optimizer is not None:
        optimizer_meta = _optimizer_to_file(optimizer, _parameter_names(model, optimizer), tensors)
    metadata = {
        "format": _FORMAT,
        "deers_version": __version__,
        "numpy_version": np.__version__,
        "step": json.dumps(step),
        "extra": _to_json(extra, "extra"),
        "rng": _to_json(get_rng_state(), "rng state"),
        "optimizer": _to_json(optimizer_meta, "optimizer state"),
    }
    from safetensors.numpy import save as serialize

    atomic_write(path, serialize(tensors, metadata=metadata))


def _parameter_names(model, optimizer) -> list[str]:
    """The model's name of each optimizer parameter ("param<i>" for one the model does not hold)."""
    by_id = {id(var): name for name, var in model.named_parameters()} if model is not None else {}
    return [by_id.get(id(p), f"param{i}") for i, p in enumerate(optimizer.params)]


def _optimizer_to_file(optimizer, names: list[str], tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Put the optimizer's arrays into `tensors` and return its JSON part (groups by name, scalars)."""
    state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            if isinstance(value, np.ndarray):
                tensors[f"{OPTIM_PREFIX}{names[index]}.{slot}"] = np.ascontiguousarray(value)
            else:
                scalars.setdefault(names[index], {})[slot] = value
    groups = []
    for group in state["param_groups"]:
        entry = {k: v for k, v in group.items() if k != "params"}
        entry["params"] = [names[i] for i in group["params"]]
        groups.append(entry)
    return {"type": state["type"], "groups": groups, "scalars": scalars}


def atomic_write(path: "str | os.PathLike", data: "bytes | Callable[[BinaryIO], None]") -> None:
    """Write `data` (bytes, or a function that writes into the open file, for outputs too large to
    hold twice) to a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder:
    a reader sees the old file or the new one, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (POSIX; not possible on every platform)
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _to_json(value: Any, what: str) -> str:
    def default(obj):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if isinstance(obj, (np.ndarray, np.generic)):
            return obj.tolist()
        if isinstance(obj, tuple):
            return list(obj)
        raise TypeError(f"checkpoint.save: {what} holds a {type(obj).__name__}, which JSON cannot store")

    return json.dumps(value, default=default)


# ---- load ------------------------------------------------------------------------------------------
def load(path: "str | os.PathLike", model=None, optimizer=None, strict: bool = True,
         restore_rng: bool = True) -> dict[str, Any]:
    """Read a checkpoint, copy it into `model` / `optimizer` in place, restore the RNG state.

    Returns {"step", "extra", "rng", "metadata"} (metadata: the raw header strings). Raises
    CheckpointError naming the file for a truncated or corrupted file, and naming the parameter
    when names or shapes do not fit the model or the optimizer.
    """
    path = os.fspath(path)
    tensors, metadata = read(path)
    if model is not None:
        model_state = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
        try:
            model.load_state_dict(model_state, strict=strict)
        except StateDictError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    if optimizer is not None:
        optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        saved = json.loads(metadata.get("optimizer", "null"))
        saved = saved if isinstance(saved, list) else [saved]
        if len(saved) != len(optimizers):
            raise CheckpointError(f"checkpoint {path} holds the state of {len(saved)} optimizer(s), "
                                  f"{len(optimizers)} were given to load it into")
        for opt, opt_saved in zip(optimizers, saved):
            _optimizer_from_file(path, opt, _parameter_names(model, opt), tensors, opt_saved)
    rng = json.loads(metadata.get("rng", "null"))
    if restore_rng and rng is not None:
        set_rng_state(rng)
    return {"step": json.loads(metadata.get("step", "null")), "extra": json.loads(metadata.get("extra", "null")),
            "rng": rng, "metadata": metadata}


def read(path: "str | os.PathLike") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a safetensors file as NumPy arrays (bf16 through ml_dtypes), and its metadata."""
    import safetensors

    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        items = safetensors.deserialize(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except Exception as exc:  # the Rust error type is not importable by name in every version
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupted?): {exc}") from exc
    if metadata.get("format", _FORMAT) != _FORMAT:
        raise CheckpointError(f"checkpoint {path}: unknown format {metadata['format']!r}")
    tensors = {name: _to_numpy(path, name, info) for name, info in items}
    return tensors, metadata


def _to_numpy(path: str, name: str, info: dict) -> np.ndarray:
    dtype = _DTYPES.get(info["dtype"])
    if dtype is None and info["dtype"] == "BF16":
        try:
            import ml_dtypes
        except ImportError as exc:
            raise CheckpointError(f"checkpoint {path}: tensor {name} is bf16, which needs the package "
                                  "ml_dtypes (pip install 'deers[bf16]')") from exc
        dtype = ml_dtypes.bfloat16
    if dtype is None:
        raise CheckpointError(f"checkpoint {path}: tensor {name} has unsupported dtype {info['dtype']}")
    return np.frombuffer(info["data"], dtype=dtype).reshape(info["shape"])


def _optimizer_from_file(path: str, optimizer, names: list[str], tensors: dict[str, np.ndarray],
                         saved: dict[str, Any] | None) -> None:
    """Rebuild the optimizer's state_dict from the file (matching parameters by name) and load it.

    Only the arrays of this optimizer's parameters are taken; another optimizer of the same file
    (Muon beside AdamW) holds the others."""
    if saved is None:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state")
    if saved["type"] != type(optimizer).__name__:
        raise CheckpointError(f"checkpoint {path} holds {saved['type']} state, not {type(optimizer).__name__} state")
    index = {name: i for i, name in enumerate(names)}
    saved_names = {name for group in saved["groups"] for name in group["params"]}
    arrays = {}
    for key, array in tensors.items():
        if key.startswith(OPTIM_PREFIX):
            name, slot = key[len(OPTIM_PREFIX):].rsplit(".", 1)  # "optim.<name>.<slot>"
            if name in saved_names:
                arrays[(name, slot)] = array
    unknown = sorted(({name for name, _ in arrays} | set(saved["scalars"])) - set(index))
    if unknown:
        raise CheckpointError(f"checkpoint {path}: optimizer state for parameters {', '.join(unknown)}, "
                              "which this optimizer does not hold")
    state: dict[int, dict[str, Any]] = {}
    for (name, slot), array in arrays.items():
        param = optimizer.params[index[name]]
        if tuple(array.shape) != param.shape:
            raise CheckpointError(f"checkpoint {path}: optimizer slot {slot} of parameter {name} has shape "
                                  f"{tuple(array.shape)}, the parameter has shape {param.shape}")
        state.setdefault(index[name], {})[slot] = array
    for name, slots in saved["scalars"].items():
        state.setdefault(index[name], {}).update(slots)
    groups = []
    for group in saved["groups"]:
        missing = [name for name in group["params"] if name not in index]
        if missing:
            raise CheckpointError(f"checkpoint {path}: the optimizer was saved with parameters {missing}, "
                                  "which this optimizer does not hold")
        groups.append(dict(group, params=[index[name] for name in group["params"]]))
    try:
        optimizer.load_state_dict({"type": saved["type"], "param_groups": groups, "state": state})
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
