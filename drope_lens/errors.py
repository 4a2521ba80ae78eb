"""Exceptions raised by drope_lens. Each message says what went wrong and what to do."""

from __future__ import annotations


class DropeLensError(Exception):
    """Base class for every error drope_lens raises on purpose."""


class UnsupportedModelError(DropeLensError):
    """The checkpoint is not a Llama-family causal LM (or a DroPE variant we cannot run)."""


class TokenizerMismatchError(DropeLensError):
    """The two models of a pair do not tokenize text identically."""


class InputTooLongError(DropeLensError):
    """A text is longer than the model's context window."""


class NonFiniteError(DropeLensError):
    """NaN or inf appeared in attention scores or logits.

    drope_lens never replaces such values by zeros; it stops and says where they came from.
    """


class DropeLensInputError(DropeLensError, ValueError):
    """A bad input from the user (option value, path, file contents). The CLI prints it as one line."""


class ReportLockedError(DropeLensInputError):
    """Another live process is writing the same results folder."""
