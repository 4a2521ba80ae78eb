"""Type aliases for TransformerLens hook functions."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import torch
from transformer_lens.hook_points import HookPoint

#: ``fn(activation, hook) -> replacement or None``, as TransformerLens expects.
HookFn = Callable[[torch.Tensor, HookPoint], Optional[torch.Tensor]]
#: A hook-point name (or a name predicate) paired with its function.
FwdHook = Tuple[Union[str, Callable[[str], bool]], HookFn]
#: A list of them, as built by drope_lens's hook factories (parameters accept any ``Sequence[FwdHook]``).
FwdHooks = List[FwdHook]
