"""Command-line helpers for training scripts: argparse types that reject bad values up front, a
help formatter that shows each default once, and a device check.

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps")
    p.add_argument("--lr", type=positive_float, default=3e-4)

The examples in examples/ use them, so every invalid value is an argparse error (usage line,
message, exit status 2) before any work starts.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to an option's help once: not when the help already states its
    default, and not for options without one. Descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _checked(parse: Callable[[str], float], accept: Callable[[float], bool], what: str):
    """An argparse type: `parse` the text, then require `accept(value)`; `what` names the rule."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    convert.__name__ = what  # argparse names the type in some messages
    return convert


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
nonnegative_float = _checked(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
fraction = _checked(float, lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")
top_p_value = _checked(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """A malformed device string, or a device whose package is missing, is a command-line error."""
    from .creation import zeros

    try:
        zeros(1, device=device)
    except ValueError as err:  # BackendUnavailable is a ValueError too
        parser.error(f"--device {device}: {err}")
