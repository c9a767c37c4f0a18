"""Datasets and loaders: MNIST (IDX files), story text, token files, and a NumPy mini-batch loader."""
from .loader import DataLoader
from .mnist import MNIST, IDXFormatError, parse_idx
from .text import TextDataset, iter_stories
from .tokens import TokenBinDataset, TokenFileError, TokenWriter, read_tokens, write_tokens

__all__ = ["DataLoader", "MNIST", "IDXFormatError", "parse_idx", "TextDataset", "iter_stories", "TokenBinDataset",
           "TokenFileError", "TokenWriter", "read_tokens", "write_tokens"]
