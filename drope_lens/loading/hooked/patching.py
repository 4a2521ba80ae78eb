"""How drope_lens changes TransformerLens components: by class, so patched models pickle and deep-copy.

Each change (fp32 scores and finiteness checks, the sdpa fast path, the zero-bias skip, DroPE's q/k norms)
is a *mixin*: a small class whose methods override TransformerLens's and call ``super()`` for the rest.
:func:`patch_class` switches a module's class to a subclass of its TransformerLens class with the mixins
it has so far plus the new one (one class per combination, made once and cached; mixins in a fixed order).
Nothing is stored on the instance, so:

* ``torch.save(model)`` / ``torch.load(..., weights_only=False)``, ``pickle`` and ``copy.deepcopy`` round-trip:
  a patched module reduces to "TransformerLens class + mixins + state" (:meth:`Patched.__reduce_ex__`), and
  the same class is rebuilt on load (an instance attribute bound as a method would be looked up by its
  function's name on load and fail);
* the patch is visible: ``isinstance(model.blocks[0].attn, FastAttention)``; the class keeps its
  TransformerLens name, and ``isinstance(..., GroupedQueryAttention)`` still holds.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn


class Patched:
    """Base of every drope_lens mixin. ``ORDER`` places the mixin in the class's MRO (lower = earlier).

    Mixins add no instance layout (``__slots__ = ()``), so ``module.__class__`` can be switched to a class
    made of them and a TransformerLens component class.
    """

    __slots__ = ()
    ORDER = 100
    _drope_lens_base: type
    _drope_lens_mixins: tuple[Any, ...]

    def __reduce_ex__(self, protocol):
        cls = type(self)
        return (_rebuild, (cls._drope_lens_base, cls._drope_lens_mixins), self.__getstate__())  # type: ignore[attr-defined]


_CLASSES: dict[tuple[type, tuple[Any, ...]], type] = {}
_METAS: dict[type, Any] = {}


def _meta(base_meta: Any) -> Any:
    """A metaclass (derived from the TransformerLens class's own, e.g. ABCMeta) that puts the mixins first.

    The patched class lists the TransformerLens class as its *first* base, so its memory layout is that
    class's and ``__class__`` can be switched (a mixin first would make CPython refuse the assignment);
    its method resolution order is then set to ``[class, mixins..., Patched, TransformerLens class ...]``
    so the mixins' methods override and their ``super()`` reaches TransformerLens's.
    """
    meta = _METAS.get(base_meta)
    if meta is None:

        def mro(cls):
            mixins = cls.__dict__.get("_drope_lens_mixins")
            if mixins is None:  # a user's subclass of a patched class: the usual order
                return base_meta.mro(cls)
            order = [cls, *mixins]
            for mixin in mixins:
                order += [c for c in mixin.__mro__ if c is not object and c not in order]
            return order + list(cls.__dict__["_drope_lens_base"].__mro__)

        meta = _METAS[base_meta] = type(f"Patched{base_meta.__name__}", (base_meta,), {"mro": mro})
    return meta


def patched_class(base: type, mixins: tuple[Any, ...]) -> type:
    """The subclass of ``base`` with ``mixins`` (made once per combination)."""
    mixins = tuple(sorted(set(mixins), key=lambda m: (m.ORDER, m.__name__)))
    key = (base, mixins)
    cls = _CLASSES.get(key)
    if cls is None:
        cls = _meta(type(base))(
            base.__name__,
            (base, *mixins),
            {
                "__module__": __name__,
                "__qualname__": f"{base.__qualname__}+{'+'.join(m.__name__ for m in mixins)}",
                "__doc__": base.__doc__,
                "_drope_lens_base": base,
                "_drope_lens_mixins": mixins,
            },
        )
        _CLASSES[key] = cls
    return cls


def _rebuild(base: type, mixins: tuple[Any, ...]) -> Any:
    """Unpickling: an empty instance of the patched class; pickle then restores its state."""
    cls: Any = patched_class(base, mixins)
    return cls.__new__(cls)


def base_class(module: nn.Module) -> Any:
    """The TransformerLens class of ``module`` (its own class if drope_lens has not patched it)."""
    return getattr(type(module), "_drope_lens_base", type(module))


def mixins_of(module: nn.Module) -> tuple[Any, ...]:
    return getattr(type(module), "_drope_lens_mixins", ())


def patch_class(module: nn.Module, mixin: type, *, base: Optional[type] = None) -> nn.Module:
    """Add ``mixin`` to ``module``'s class (idempotent). Returns ``module``."""
    if isinstance(module, mixin):
        return module
    module.__class__ = patched_class(base or base_class(module), (*mixins_of(module), mixin))
    return module
