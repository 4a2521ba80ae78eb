"""One syntax for every CLI list option: comma-separated (``--passkey-lengths 256,512``).

:func:`add_list_argument` also accepts the space-separated form (``256 512``) and mixes of both, so
the options that used to take spaces keep working."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def csv_list(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (blanks dropped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _typed(item: Callable[[str], Any], what: str) -> Callable[[str], list]:
    def parse(value: str) -> list:
        try:
            return [item(v) for v in csv_list(value)]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {value!r}") from exc

    parse.__name__ = f"{what.replace(' ', '_')}_list"
    return parse


int_list = _typed(int, "integers")
float_list = _typed(float, "numbers")


class _Flatten(argparse.Action):
    """Joins the lists of ``nargs="+"`` values (``256,512`` or ``256 512``) into one list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [v for part in values for v in part])


def add_list_argument(
    parser, flag: str, *, item: Callable[[str], list] = csv_list, default=None, spaces: bool = True, **kwargs
) -> argparse.Action:
    """A list option: comma- (or space-) separated values parsed by ``item`` (:func:`csv_list`,
    :func:`int_list`, :func:`float_list`); ``default`` is a list, used as is. ``spaces=False``: one
    comma-separated word only (for a command with positional arguments, which spaces would swallow)."""
    if not spaces:
        return parser.add_argument(flag, type=item, default=default, **kwargs)
    return parser.add_argument(flag, type=item, nargs="+", action=_Flatten, default=default, **kwargs)
