"""Typed events: a dataclass that names and validates an event's payload.

``@event("order.placed")`` marks a dataclass. A bus that knows the class validates
every payload emitted under that name (missing, unknown or wrongly typed fields are a
``PayloadError`` at emit) and hands the instance to handlers subscribed with the class.
Validation checks the declared field types: ``int``, ``float`` (accepts int), ``str``,
``bytes``, ``bool``, ``datetime``, ``date``, ``UUID``, ``Decimal``, ``Any``, ``None``,
unions and optionals, ``Literal``, ``list[X]`` and ``tuple[X, ...]`` (either accepts a
list or a tuple: msgpack carries both as an array), ``dict[K, V]`` and any other class
by ``isinstance``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ._errors import PayloadError
from ._names import check_name

T = TypeVar("T")
Check = Callable[[Any], bool]
_SCHEMA_ATTR = "__eventbus_schema__"


def event(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a dataclass as the typed event for signal ``name``.

    The class must be a dataclass (apply ``@dataclass`` first, below this decorator).
    Field types are resolved and checked once, here; an unsupported type is a TypeError.
    """
    check_name(name)

    def decorate(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"@event({name!r}) needs a dataclass; put @dataclass below it")
        setattr(cls, _SCHEMA_ATTR, Schema(name, cls))
        return cls

    return decorate


def schema_of(cls: type[Any]) -> Schema:
    """Return the schema of a class decorated with ``@event``; TypeError otherwise."""
    schema = cls.__dict__.get(_SCHEMA_ATTR) if isinstance(cls, type) else None
    if not isinstance(schema, Schema):
        raise TypeError(f"{cls!r} is not a typed event; decorate it with @event(name)")
    return schema


def is_typed_event(obj: object) -> bool:
    """Return True if ``obj`` is an instance of an ``@event`` class."""
    return isinstance(type(obj).__dict__.get(_SCHEMA_ATTR), Schema)


class Schema:
    """The compiled field checks of one typed event class."""

    __slots__ = ("checks", "cls", "defaults", "name", "required")

    def __init__(self, name: str, cls: type[Any]) -> None:
        self.name = name
        self.cls = cls
        try:
            hints = typing.get_type_hints(cls)
        except NameError as exc:
            raise TypeError(f"cannot resolve the field types of {cls.__qualname__}: {exc}") from exc
        self.checks: dict[str, tuple[Check, str]] = {}
        self.required: list[str] = []
        self.defaults: dict[str, Callable[[], Any]] = {}
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            hint = hints[field.name]
            self.checks[field.name] = (_compile(hint), _describe(hint))
            if field.default is not dataclasses.MISSING:
                self.defaults[field.name] = _constant(field.default)
            elif field.default_factory is not dataclasses.MISSING:
                self.defaults[field.name] = field.default_factory
            else:
                self.required.append(field.name)

    def validate(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Return the payload with defaults filled in; PayloadError if it does not fit."""
        checks = self.checks
        unknown = [key for key in payload if key not in checks]
        if unknown:
            raise PayloadError(f"{self.name}: unknown field(s) {', '.join(sorted(unknown))}")
        missing = [key for key in self.required if key not in payload]
        if missing:
            raise PayloadError(f"{self.name}: missing field(s) {', '.join(missing)}")
        for key, value in payload.items():
            check, expected = checks[key]
            if not check(value):
                raise PayloadError(
                    f"{self.name}: field {key!r} must be {expected}, "
                    f"got {type(value).__name__} {value!r:.60}"
                )
        if len(payload) == len(checks):
            return dict(payload)
        full = {key: make() for key, make in self.defaults.items() if key not in payload}
        full.update(payload)
        return full

    def payload_of(self, instance: object) -> dict[str, Any]:
        """Return the validated payload of an instance of this class."""
        payload = {key: getattr(instance, key) for key in self.checks}
        return self.validate(payload)

    def build(self, payload: Mapping[str, Any]) -> Any:
        """Return an instance from a payload already validated by ``validate``."""
        return self.cls(**payload)


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _compile(hint: Any) -> Check:
    """Return a predicate for one type hint; TypeError for hints it cannot check."""
    if hint is Any or hint is object:
        return lambda value: True
    if hint is None or hint is type(None):
        return lambda value: value is None
    if hint is float:
        return lambda value: type(value) in (float, int)
    if hint is int:
        return lambda value: type(value) is int
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [_compile(arg) for arg in args]
        return lambda value: any(check(value) for check in options)
    if origin is typing.Literal:
        allowed = args
        return lambda value: any(value == a and type(value) is type(a) for a in allowed)
    if origin in (list, tuple, Sequence, dict, Mapping) or hint in (list, tuple, dict):
        return _compile_container(hint, origin or hint, args)
    if isinstance(hint, type) and not dataclasses.is_dataclass(hint):
        cls = hint
        return lambda value: isinstance(value, cls)
    raise TypeError(f"unsupported field type in a typed event: {hint!r}")


def _compile_container(hint: Any, origin: Any, args: tuple[Any, ...]) -> Check:
    if origin in (dict, Mapping):
        key_check = _compile(args[0]) if args else _compile(Any)
        value_check = _compile(args[1]) if args else _compile(Any)
        return lambda value: (
            isinstance(value, dict)
            and all(key_check(k) and value_check(v) for k, v in value.items())
        )
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        fixed = [_compile(arg) for arg in args]
        return lambda value: (
            isinstance(value, (list, tuple))
            and len(value) == len(fixed)
            and all(check(item) for check, item in zip(fixed, value, strict=True))
        )
    item_check = _compile(args[0]) if args else _compile(Any)
    return lambda value: isinstance(value, (list, tuple)) and all(item_check(i) for i in value)
