"""Read-only events: what the probe and the report hand to sinks, plugins and rules cannot be changed by them.

:func:`frozen` copies an event into :class:`FrozenEvent` (a ``dict``) whose
nested mappings and lists are read-only too (:class:`FrozenList` is a
``list``): every reader, ``json.dumps`` and ``isinstance(x, list)`` included,
sees plain containers, and a consumer that tries to change one gets a
``TypeError`` (and is switched off alone) instead of altering what the next
consumer, or the rules, see.
"""

from __future__ import annotations

from typing import Any, NoReturn

_MESSAGE = "gradprobe events are read-only once published: copy one (dict(event), list(values)) to change it"


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(_MESSAGE)


class FrozenEvent(dict[str, Any]):
    """A ``dict`` that refuses to change (an event, or a mapping inside one)."""

    __slots__ = ()

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        import copy

        return {key: copy.deepcopy(value, memo) for key, value in self.items()}


class FrozenList(list[Any]):
    """A ``list`` that refuses to change (a series inside an event)."""

    __slots__ = ()

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = clear = extend = insert = pop = remove = reverse = sort = _refuse

    def __reduce__(self) -> Any:
        return (list, (list(self),))

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        import copy

        return [copy.deepcopy(value, memo) for value in self]


def frozen(value: Any) -> Any:
    """``value`` with every ``dict`` and ``list`` (or tuple) in it made read-only; other values as they are."""
    kind = type(value)
    if kind is FrozenEvent or kind is FrozenList:
        return value
    if isinstance(value, dict):
        return FrozenEvent({key: frozen(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        if all(type(item) in _SCALARS for item in value):
            return FrozenList(value)
        return FrozenList([frozen(item) for item in value])
    return value


_SCALARS = frozenset({float, int, str, bool, type(None)})
