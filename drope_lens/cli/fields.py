"""CLI options declared from, and built back into, the fields of an options dataclass.

:func:`add_option` reads a flag's type, choices and default from a field of a class of
:mod:`drope_lens.options` (or another dataclass, e.g. the recalibration ``Recipe``) and stores it
under the field's name; :func:`options_from_args` builds the class from the parsed arguments by
those names. So each default and choice lives once, in the class.

>>> add_option(parser, TaskOptions, "scoring", "how answers are scored")   # --scoring {logprob,...}
>>> options_from_args(TaskOptions, args, chat=not args.plain)
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, Optional, TypeVar

from drope_lens.cli.lists import add_list_argument, csv_list, float_list, int_list
from drope_lens.options import field_default

T = TypeVar("T")


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def add_option(
    parser: Any, cls: type, name: str, help: Optional[str] = None, *, flag: Optional[str] = None, **kwargs: Any
) -> argparse.Action:
    """Declare ``flag`` (default ``--name-with-dashes``) for field ``name`` of ``cls``, stored as ``name``.

    From the field's type: ``bool`` (default False) a ``store_true`` switch; ``Literal`` its values as
    ``choices``; ``tuple[X, ...]`` a list option (:func:`~drope_lens.cli.lists.add_list_argument`, items
    parsed as ``X``); ``int`` / ``float`` / ``str`` (``Optional`` too) that ``type``. The default is the
    field's. ``kwargs`` go to ``add_argument`` and override these (e.g. ``choices=`` of a ``str`` field,
    ``dest=`` for an option :func:`options_from_args` must not read as the field).
    ``help`` gets ``(default %(default)s)`` appended unless it already speaks of its default or that is
    None; a list's ``%(default)s`` is shown comma-separated, as it is typed."""
    flag = flag or "--" + name.replace("_", "-")
    dest = kwargs.pop("dest", name)
    hint = _strip_optional(typing.get_type_hints(cls)[name])
    default = kwargs.pop("default", field_default(cls, name))
    if hint is bool:
        if default is not False:
            raise TypeError(f"{cls.__name__}.{name} defaults to {default!r}: declare its switch by hand")
        return parser.add_argument(flag, action="store_true", dest=dest, help=help, **kwargs)
    if help is not None and default is not None and "default" not in help:
        help += " (default %(default)s)"
    if typing.get_origin(hint) is tuple:
        item = _strip_optional(typing.get_args(hint)[0])
        parse = {int: int_list, float: float_list}.get(item, csv_list)
        listed = None if default is None else list(default)
        if help is not None and listed is not None:  # shown as typed: 256,512
            help = help.replace("%(default)s", ",".join(map(str, listed)))
        return add_list_argument(parser, flag, item=parse, default=listed, dest=dest, help=help, **kwargs)
    if typing.get_origin(hint) is Literal:
        kwargs.setdefault("choices", typing.get_args(hint))
    elif hint in (int, float, str) and "type" not in kwargs:
        kwargs["type"] = hint
    return parser.add_argument(flag, default=default, dest=dest, help=help, **kwargs)


def options_from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """``cls`` built (and so validated) from ``args``: every field ``args`` has an attribute of (lists
    become tuples), with ``given`` taking the place of the fields the command spells differently."""
    values = {
        f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in given and hasattr(args, f.name)
    }
    return cls(**values, **given)
