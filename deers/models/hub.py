"""Hugging Face model folders in and out: `from_pretrained` and `save_pretrained`.

    model = deers.models.from_pretrained("path/to/folder")    # config.json + model.safetensors
    model = deers.models.from_pretrained("Qwen/Qwen3-0.6B")   # a repo id: downloaded (extra `hf`)
    deers.models.save_pretrained(model, "out/")               # transformers loads it back

A folder holds `config.json` (its `model_type` picks the Deers class) and either `model.safetensors`
or `model.safetensors.index.json` naming the shard that holds each tensor. safetensors is a JSON
header (name -> dtype, shape, byte range) followed by the raw little-endian bytes; this module reads
it itself, through a memory map, copying each tensor once into its parameter and then letting the
kernel drop the mapped pages, so loading never holds the file and the model at once. 16-bit floats
are widened to f32 by default (bf16 by shifting its 16 bits into the top of an f32: no ml_dtypes).
"""
from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np

from ..array import NDArray
from ..checkpoint import atomic_write
from ..device import Device, as_device
from ..dtype import DType, as_dtype, bf16, f32
from ..errors import DeersError, ShapeError
from ..nn import ParamStore
from ..tensor import Var
from .gpt2 import GPT2
from .llama import Llama
from .shared import UnsupportedConfig

MODELS = {"gpt2": GPT2, "llama": Llama, "qwen2": Llama, "qwen3": Llama}  # config.json's model_type -> class
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DOWNLOADED = ["config.json", "generation_config.json", "*.safetensors", INDEX_FILE, "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json"]  # what a repo id fetches
# safetensors dtype -> NumPy dtype of its bytes (BF16: raw 16-bit words, widened or viewed below)
FILE_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
               "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
SAVED_DTYPES = {"f64": "F64", "f32": "F32", "f16": "F16", "bf16": "BF16", "i64": "I64", "u8": "U8", "bool": "BOOL"}
TORCH_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}


class PretrainedError(DeersError, ValueError):
    """A model folder cannot be used: a missing, truncated or inconsistent file, or a missing tensor."""


class UnsupportedModel(UnsupportedConfig):
    """config.json names a model_type that Deers does not implement."""


class HubUnavailable(PretrainedError):
    """A repo id was given but cannot be downloaded (huggingface_hub missing, or offline)."""


# ---- finding the folder --------------------------------------------------------------------------------
def resolve(path_or_repo_id: "str | os.PathLike", patterns: list[str] = DOWNLOADED) -> Path:
    """A local folder as is; a repo id ("gpt2", "Qwen/Qwen3-0.6B") downloaded into the hub's cache."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists():
        raise PretrainedError(f"{text} is a file; pass the folder that holds config.json and the .safetensors files")
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        raise PretrainedError(f"no folder {text}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubUnavailable(f"{text!r} is not a local folder, and downloading it from the Hugging Face hub needs "
                             f"huggingface_hub: pip install 'deers[hf]' (or pass a folder holding config.json "
                             f"and model.safetensors)") from None
    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, gated model: the hub's own message says which
        raise HubUnavailable(f"could not download {text!r} from the Hugging Face hub ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); offline, pass a local folder "
                             f"holding config.json and model.safetensors") from err


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise PretrainedError(f"{path} is missing: a model folder needs config.json")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise PretrainedError(f"{path} is not valid JSON: {err}") from err


def config_dtype(config: dict) -> DType:
    """The dtype config.json declares: `dtype` (transformers 5) or `torch_dtype` (4.x); f32 when absent."""
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return as_dtype(name)


# ---- reading safetensors files -------------------------------------------------------------------------
class SafetensorsFile:
    """One .safetensors file, memory-mapped: its header, and each tensor's bytes as a NumPy view."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise PretrainedError(f"{path} is missing")
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise PretrainedError(f"{path} is truncated: {size} bytes, shorter than the 8-byte header length")
            header_len = int.from_bytes(prefix, "little")
            if 8 + header_len > size:
                raise PretrainedError(f"{path} is truncated: its header alone needs {8 + header_len} bytes, "
                                      f"the file has {size}")
            try:
                header = json.loads(f.read(header_len))
            except ValueError as err:
                raise PretrainedError(f"{path} is not a safetensors file (its header is not JSON: {err})") from err
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        header.pop("__metadata__", None)
        self.start = 8 + header_len  # where the tensor bytes begin
        self.entries: dict[str, dict] = header
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
        if self.start + end > size:
            raise PretrainedError(f"{path} is truncated: its tensors need {self.start + end} bytes, "
                                  f"the file has {size}")

    def raw(self, name: str) -> np.ndarray:
        """The bytes of tensor `name` as a read-only array of its file dtype (no copy)."""
        info = self.entries[name]
        if info["dtype"] not in FILE_DTYPES:
            raise PretrainedError(f"{self.path}: tensor {name} has dtype {info['dtype']}, which Deers cannot read")
        dtype = np.dtype(FILE_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        return np.frombuffer(self.map, dtype=dtype, count=count, offset=self.start + begin).reshape(info["shape"])

    def release(self, name: str) -> None:
        """Let the kernel drop the mapped pages of tensor `name` (copied already), so they stop counting
        in this process's memory; the file stays mapped."""
        if self.map is None or not hasattr(self.map, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        begin, end = self.entries[name]["data_offsets"]
        first = (self.start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > begin:
            self.map.madvise(mmap.MADV_DONTNEED, first, self.start + end - first)

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # a view is still alive (an error raised mid-copy): the map closes when it dies
                pass


class CheckpointFiles:
    """A folder's tensors by name: one model.safetensors, or the shards its index names."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise PretrainedError(f"{index} has no valid weight_map: {err}") from err
            self.files = {shard: SafetensorsFile(folder / shard) for shard in sorted(set(weight_map.values()))}
            self.where = {name: self.files[shard] for name, shard in weight_map.items()}
            for name, file in self.where.items():
                if name not in file.entries:
                    raise PretrainedError(f"{index} puts tensor {name} in {file.path}, which does not hold it")
        elif (folder / SINGLE_FILE).is_file():
            file = SafetensorsFile(folder / SINGLE_FILE)
            self.files = {SINGLE_FILE: file}
            self.where = {name: file for name in file.entries}
        else:
            raise PretrainedError(f"{folder} holds neither {SINGLE_FILE} nor {INDEX_FILE}")
        self.used: set[str] = set()

    def describe(self) -> str:
        return ", ".join(str(f.path) for f in self.files.values())

    def close(self) -> None:
        for file in self.files.values():
            file.close()


class CheckpointStore(ParamStore):
    """A ParamStore whose parameters come from a checkpoint instead of an initializer: a model built
    on it (`Llama(config, vb=store.root())`) asks for each Var by its name and gets the file's tensor,
    converted to the store's dtype and copied once to its device."""

    def __init__(self, checkpoint: CheckpointFiles, device: Device, dtype: DType, optional_prefix: str = ""):
        super().__init__(device=device, dtype=dtype)
        self.checkpoint = checkpoint
        self.optional_prefix = optional_prefix  # GPT-2: "transformer." may be absent from the file's names

    def file_name(self, name: str) -> str:
        """The name the checkpoint uses for parameter `name`, or PretrainedError naming both."""
        where = self.checkpoint.where
        if name in where:
            return name
        if self.optional_prefix and name.startswith(self.optional_prefix):
            short = name[len(self.optional_prefix):]
            if short in where:
                return short
        raise PretrainedError(f"tensor {name} is missing from {self.checkpoint.describe()}")

    def get_or_create(self, name: str, shape: tuple[int, ...], init, dtype: DType | None = None) -> Var:
        if name in self._vars:
            return super().get_or_create(name, shape, init, dtype)
        key = self.file_name(name)
        file = self.checkpoint.where[key]
        info = file.entries[key]
        if tuple(info["shape"]) != tuple(shape):
            raise ShapeError(f"tensor {key} in {file.path} has shape {tuple(info['shape'])}; the model "
                             f"expects {tuple(shape)} (does config.json match the weights?)")
        dtype = dtype or self.dtype
        raw = file.raw(key)
        host = raw
        if info["dtype"] == "BF16":  # raw holds the 16-bit words
            # with ml_dtypes the copy below converts (no temporary); without it, widen the words to f32 first
            host = raw.view(bf16.numpy) if bf16.available else widen_bf16(raw)
        var = Var(NDArray.from_numpy(host, dtype, self.device))  # the one copy, converting to dtype
        del raw, host
        file.release(key)
        self.checkpoint.used.add(key)
        self._vars[name] = var
        return var


def widen_bf16(words: np.ndarray) -> np.ndarray:
    """bf16 values given as their 16-bit words -> f32: a bf16 is the top half of an f32."""
    return np.left_shift(words, 16, dtype=np.uint32).view(np.float32)


# ---- from_pretrained -----------------------------------------------------------------------------------
def from_pretrained(path_or_repo_id: "str | os.PathLike", device: "Device | str" = "cpu",
                    dtype: "DType | str | None" = None):
    """The Deers model of a Hugging Face folder or repo id, with its weights (GPT2 or Llama).

    dtype None computes in f32 whatever the file stores; "auto" keeps config.json's dtype; or name
    one ("f32", "bf16", "f16"). Raises UnsupportedModel for an unknown model_type, PretrainedError
    naming the file for a missing or truncated file and naming the tensor for a missing or
    misshapen one, HubUnavailable when a repo id cannot be downloaded.
    """
    folder = resolve(path_or_repo_id)
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type not in MODELS:
        raise UnsupportedModel(f"{folder / 'config.json'}: model_type {model_type!r} is not supported; "
                               f"supported: {', '.join(sorted(MODELS))}")
    model_class = MODELS[model_type]
    model_config = model_class.config_class.from_hf(config)
    dtype = f32 if dtype is None else config_dtype(config) if dtype == "auto" else as_dtype(dtype)
    checkpoint = CheckpointFiles(folder)
    try:
        store = CheckpointStore(checkpoint, as_device(device), dtype, getattr(model_class, "OPTIONAL_PREFIX", ""))
        model = model_class(model_config, vb=store.root())
        unused = [name for name in checkpoint.where if name not in checkpoint.used
                  and not model_class.IGNORED_TENSORS.search(name)
                  and not (name == "lm_head.weight" and model_config.tie_word_embeddings)]
        if unused:
            raise PretrainedError(f"{checkpoint.describe()} hold tensors the {model_type} model has no place for: "
                                  f"{', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}")
    finally:
        checkpoint.close()
    model.source_folder = folder
    return model


# ---- save_pretrained -----------------------------------------------------------------------------------
def save_pretrained(model, folder: "str | os.PathLike") -> None:
    """Write `config.json` and `model.safetensors` into `folder` (created if needed), atomically, so
    that transformers' AutoModelForCausalLM.from_pretrained(folder) gives the same logits.

    The tensors are the model's state_dict under the checkpoint names; a tied head is stored once,
    as the embedding, as transformers writes it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    dtypes = {value.dtype.name for value in state.values()}
    config = model.config.to_hf()
    for key in ("dtype", "torch_dtype"):
        config.pop(key, None)
    config["dtype"] = TORCH_NAMES.get(dtypes.pop() if len(dtypes) == 1 else "f32", "float32")
    atomic_write(folder / "config.json", json.dumps(config, indent=2, sort_keys=True).encode())
    atomic_write(folder / SINGLE_FILE, lambda f: write_safetensors(f, state))


def write_safetensors(f, state: dict) -> None:
    """safetensors: an 8-byte header length, the JSON header (padded to 8 bytes), then each tensor's bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, value in state.items():
        nbytes = value.numel() * value.dtype.itemsize
        header[name] = {"dtype": SAVED_DTYPES[value.dtype.name], "shape": list(value.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for value in state.values():  # little-endian, as every platform Deers runs on stores them
        f.write(np.ascontiguousarray(value.numpy()).view(np.uint8).data)
