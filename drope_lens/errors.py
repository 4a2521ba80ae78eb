"""Exceptions raised by drope_lens. Each message says what went wrong and what to do.

Every class derives from :class:`DropeLensError` and from the builtin a caller would expect
(``ValueError`` for bad values, ``FileNotFoundError`` for missing files, ``OSError`` for failed
writes, ``FloatingPointError`` for NaN/inf), so ``except ValueError`` keeps working. The CLI prints any of
them as one line.
"""

from __future__ import annotations


class DropeLensError(Exception):
    """Base class for every error drope_lens raises on purpose."""


class DropeLensInputError(DropeLensError, ValueError):
    """A bad input from the user (option value, path, file contents). The CLI prints it as one line."""


class UnsupportedModelError(DropeLensInputError):
    """The checkpoint is not a Llama-family causal LM (or a DroPE variant we cannot run)."""


class TokenizerMismatchError(DropeLensInputError):
    """The two models of a pair do not tokenize text identically."""


class InputTooLongError(DropeLensInputError):
    """A text is longer than the model's context window."""


class CorruptFileError(DropeLensInputError):
    """A model or data file exists but cannot be parsed (truncated safetensors, bad JSON/CSV)."""


class MissingFileError(DropeLensError, FileNotFoundError):
    """A file or folder drope_lens needs is not there (model folder, tokenizer files, data file)."""


class OutputWriteError(DropeLensError, OSError):
    """A result could not be written (full disk, read-only folder); the previous file is left intact."""


class NonFiniteError(DropeLensError, FloatingPointError):
    """NaN or inf appeared in attention scores or logits.

    drope_lens never replaces such values by zeros; it stops and says where they came from.
    """


class ReportLockedError(DropeLensInputError):
    """Another live process is writing the same results folder."""
