"""Models built from deers.nn: the GPT of docs/design.md."""
from .gpt import GPT, GPTBlock, GPTConfig, KVCache

__all__ = ["GPT", "GPTBlock", "GPTConfig", "KVCache"]
