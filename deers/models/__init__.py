"""Models built from deers.nn: the GPT of docs/design.md, and GPT-2, Llama, Qwen2 and Qwen3 loaded from
Hugging Face folders (`from_pretrained`) and written back to them (`save_pretrained`)."""
from .gpt import GPT, GPTBlock, GPTConfig, KVCache
from .gpt2 import GPT2, GPT2Config
from .hub import HubUnavailable, PretrainedError, UnsupportedModel, from_pretrained, save_pretrained
from .llama import Llama, LlamaConfig
from .shared import UnsupportedConfig

__all__ = ["GPT", "GPTBlock", "GPTConfig", "KVCache", "GPT2", "GPT2Config", "Llama", "LlamaConfig",
           "from_pretrained", "save_pretrained", "PretrainedError", "UnsupportedModel", "UnsupportedConfig",
           "HubUnavailable"]
