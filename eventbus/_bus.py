"""The event bus: a thin, fast layer over a blinker ``Namespace``.

Each signal the bus touches gets a ``_Slot``: the ordered snapshot of the bus's
handlers for that signal, kept in step with every subscribe, unsubscribe and
sender clean-up. The slot is also connected to the blinker signal as its one
receiver, so a plain ``signal.send()`` reaches the bus's handlers, while
``bus.emit()`` walks the snapshot directly and skips blinker's per-send work.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

import blinker

from ._errors import EmitError, HandlerFailure, handler_name
from ._names import check_name, compile_pattern, is_pattern
from ._typed import Schema, is_typed_event, schema_of

ANY = blinker.ANY
F = TypeVar("F", bound=Callable[..., Any])
ErrorPolicy = Literal["raise", "log"] | Callable[[HandlerFailure], object]
log = logging.getLogger("eventbus")

# How a handler is called.
_PLAIN = 0  # handler(sender, **payload)
_TYPED = 1  # handler(instance of the typed event class)
_EVENT = 2  # handler(Event)


@dataclass(frozen=True, slots=True)
class Event:
    """One emitted event: the signal name, the sender and the payload (keyword args)."""

    name: str
    sender: Any
    payload: Mapping[str, Any]


class _Subscription:
    __slots__ = ("fn", "is_async", "kind", "matches", "only", "pattern", "seq")

    def __init__(
        self,
        seq: int,
        pattern: str,
        fn: Callable[..., Any],
        kind: int,
        only: Callable[[], Any] | None,
    ) -> None:
        self.seq = seq
        self.pattern = pattern
        self.matches = compile_pattern(pattern) if is_pattern(pattern) else pattern.__eq__
        self.fn = fn
        self.kind = kind
        self.only = only  # returns the one sender this handler listens to, or None for any
        self.is_async = inspect.iscoroutinefunction(fn)


class _Slot:
    """Per-signal state; also the blinker receiver that forwards ``signal.send()``."""

    __slots__ = ("__weakref__", "bus", "entries", "name", "schema", "signal")

    def __init__(self, bus: EventBus, name: str, signal: blinker.NamedSignal) -> None:
        self.bus = bus
        self.name = name
        self.signal = signal
        self.schema: Schema | None = None
        # (fn, plain_sync, only, subscription): plain_sync is the fast-path flag.
        self.entries: tuple[tuple[Callable[..., Any], bool, Any, _Subscription], ...] = ()

    def __call__(self, sender: Any, /, **payload: Any) -> None:
        # Reached through a plain blinker send(): blinker already handled muting and
        # its other receivers; run ours with the bus's isolation and error policy.
        bus = self.bus
        if bus._muted:
            return
        if self.schema is not None:
            payload = self.schema.validate(payload)
        failures = bus._run(self, sender, payload, None)
        if failures:
            bus._report(self.name, failures)


class EventBus:
    """An in-process event bus over a blinker ``Namespace``.

    ``EventBus()`` owns a fresh namespace; ``EventBus(blinker.default_namespace)``
    adopts the signals an application already has. ``bus.signal(name)`` is the real
    ``blinker.NamedSignal``: receivers connected with ``signal.connect()`` are reached
    by ``bus.emit()``, and a plain ``signal.send()`` reaches the bus's handlers.

    Handlers run in registration order, in the emitting thread. A handler that raises
    never stops the others. The error policy decides what happens after all ran:
    ``"raise"`` (default) raises an ``EmitError`` (an ``ExceptionGroup``) of every
    failure; ``"log"`` logs each failure on the ``eventbus`` logger; a callable is
    called with each ``HandlerFailure``.

    Thread safety: emitting from many threads at once, and subscribing while other
    threads emit, are safe. An emit that races with a subscribe sees the handler list
    from before or after the change, never a mix.
    """

    def __init__(
        self,
        namespace: blinker.Namespace | None = None,
        *,
        on_error: ErrorPolicy = "raise",
    ) -> None:
        if namespace is not None and not isinstance(namespace, blinker.Namespace):
            raise TypeError("namespace must be a blinker.Namespace")
        if not (on_error in ("raise", "log") or callable(on_error)):
            raise ValueError("on_error must be 'raise', 'log' or a callable")
        self._namespace = namespace if namespace is not None else _Namespace(self)
        self._on_error = on_error
        self._lock = threading.RLock()
        self._slots: dict[str, _Slot] = {}
        self._subs: list[_Subscription] = []
        self._schemas: dict[str, Schema] = {}
        self._seq = itertools.count()
        self._muted = 0

    # -- signals and schemas -------------------------------------------------------

    @property
    def namespace(self) -> blinker.Namespace:
        """The blinker namespace holding this bus's signals."""
        return self._namespace

    def signal(self, name: str) -> blinker.NamedSignal:
        """Return the blinker signal called ``name``, creating it if needed."""
        return self._slot(name).signal

    def register(self, cls: type[Any]) -> None:
        """Make the ``@event`` class ``cls`` the schema for its signal name on this bus.

        Payloads emitted under that name are validated from now on. Registering a
        different class for a name that already has one is a ValueError.
        """
        schema = schema_of(cls)
        with self._lock:
            known = self._schemas.get(schema.name)
            if known is not None and known.cls is not cls:
                raise ValueError(
                    f"signal {schema.name!r} already has typed event {known.cls.__qualname__}"
                )
            self._schemas[schema.name] = schema
            self._slot(schema.name).schema = schema

    def schema(self, name: str) -> type[Any] | None:
        """Return the typed event class registered for ``name``, or None."""
        schema = self._schemas.get(name)
        return schema.cls if schema is not None else None

    def typed_events(self) -> dict[str, type[Any]]:
        """Return the typed event classes registered on this bus, by signal name."""
        with self._lock:
            return {name: schema.cls for name, schema in self._schemas.items()}

    def validate(self, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``payload`` checked against the typed event of ``name`` (if any).

        Raises PayloadError when it does not fit; without a typed event, returns a copy.
        """
        schema = self._schemas.get(check_name(name))
        return schema.validate(payload) if schema is not None else dict(payload)

    # -- subscribing -----------------------------------------------------------------

    @overload
    def on(self, target: str, *, sender: Any = ...) -> Callable[[F], F]: ...
    @overload
    def on(self, target: type[Any], *, sender: Any = ...) -> Callable[[F], F]: ...

    def on(self, target: str | type[Any], *, sender: Any = ANY) -> Callable[[F], F]:
        """Decorator: call the handler for each event named ``target``.

        ``target`` is a signal name, a pattern (``user.*``, ``user.**``, see
        ``eventbus._names``) that also covers signals created later, or an ``@event``
        class, whose handlers receive the instance. Name and pattern handlers are called
        as ``handler(sender, **payload)``, like blinker receivers. With ``sender``, only
        events from that sender (compared by identity) reach the handler.

        The bus holds the handler strongly (lambdas and closures stay subscribed) and
        the decorator returns it unchanged. Async handlers are awaited by ``emit_async``.
        """
        if isinstance(target, type):
            self.register(target)
            pattern, kind = schema_of(target).name, _TYPED
        else:
            pattern, kind = _check_target(target), _PLAIN

        def decorate(fn: F) -> F:
            self._subscribe(pattern, fn, kind, sender)
            return fn

        return decorate

    def on_event(self, pattern: str, *, sender: Any = ANY) -> Callable[[F], F]:
        """Decorator: like ``on``, but the handler receives one ``Event`` argument.

        Useful for handlers of many signals that need the signal's name.
        """
        _check_target(pattern)

        def decorate(fn: F) -> F:
            self._subscribe(pattern, fn, _EVENT, sender)
            return fn

        return decorate

    def off(self, handler: Callable[..., Any], target: str | type[Any] | None = None) -> int:
        """Unsubscribe ``handler`` from ``target``, or from everything when None.

        Returns how many subscriptions were removed.
        """
        if isinstance(target, type):
            target = schema_of(target).name
        with self._lock:
            gone = [
                s
                for s in self._subs
                if s.fn is handler or s.fn == handler
                if target is None or s.pattern == target
            ]
            self._remove(gone)
        return len(gone)

    def subscriptions(self) -> list[str]:
        """The names and patterns this bus has handlers for, in registration order, then
        the names of signals with receivers connected through blinker directly.

        Useful to check that the handlers an application expects are registered (the
        bridge daemon refuses an inbound route whose signals nobody handles).
        """
        with self._lock:
            found = [s.pattern for s in self._subs]
            for name in list(self._namespace):
                if not isinstance(name, str):
                    continue
                slot = self._slots.get(name)
                signal = self._namespace[name]
                receivers = len(signal.receivers) - (1 if slot is not None else 0)
                if receivers > 0:
                    found.append(name)
        return list(dict.fromkeys(found))

    # -- emitting --------------------------------------------------------------------

    def emit(self, target: str | object, /, sender: Any = None, **payload: Any) -> None:
        """Call every handler of the event, in registration order, in this thread.

        ``target`` is a signal name with the payload as keyword arguments, or an
        instance of an ``@event`` class. Receivers connected straight to the blinker
        signal run after the bus's handlers. A handler that raises does not stop the
        others; the error policy applies after all ran. An async handler is run to
        completion with ``asyncio.run`` when no event loop runs in this thread, and is
        a failure otherwise (use ``emit_async``): it is never skipped silently.
        """
        slot, checked, instance = self._prepare(target, payload)
        if self._muted or slot.signal.is_muted:
            return
        failures = self._run(slot, sender, checked, instance)
        if len(slot.signal.receivers) > 1:
            failures = self._run_foreign(slot, sender, checked, failures)
        if failures:
            self._report(slot.name, failures)

    async def emit_async(self, target: str | object, /, sender: Any = None, **payload: Any) -> None:
        """Like ``emit``, but async handlers are awaited, one after another, in order."""
        slot, checked, instance = self._prepare(target, payload)
        if self._muted or slot.signal.is_muted:
            return
        failures: list[HandlerFailure] = []
        cache: list[Any] = [instance]
        for _fn, _plain, only, sub in slot.entries:
            if only is not None and only() is not sender:
                continue
            try:
                result = self._call(sub, slot.name, sender, checked, cache)
                if sub.is_async:
                    await result
            except Exception as exc:
                failures.append(self._failure(slot, sub, exc, sender, checked, cache))
        for receiver in self._foreign(slot, sender):
            try:
                result = receiver(sender, **checked)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                failures.append(self._foreign_failure(slot.name, receiver, exc, sender, checked))
        if failures:
            self._report(slot.name, failures)

    def dispatch(
        self,
        name: str,
        sender: Any,
        payload: Mapping[str, Any],
        *,
        handlers: Collection[str] | None = None,
    ) -> list[HandlerFailure]:
        """Run the handlers of an event and return the failures instead of applying policy.

        For integrations such as the bridge that decide themselves what a failure means
        (retry, dead-letter). The payload is validated first (PayloadError). A muted
        bus runs nothing and returns no failures. ``handlers``, a collection of
        ``handler_name()`` values, runs only those handlers (a retry of the ones that
        failed before); the others are skipped.
        """
        slot, checked, _ = self._prepare(name, payload)
        if self._muted or slot.signal.is_muted:
            return []
        if handlers is not None:
            return self._run_only(slot, sender, checked, handlers)
        failures = self._run(slot, sender, checked, None)
        if len(slot.signal.receivers) > 1:
            failures = self._run_foreign(slot, sender, checked, failures)
        return failures or []

    def handler_names(self, name: str) -> list[str]:
        """The ``handler_name()`` of every handler and receiver an event ``name`` reaches."""
        slot = self._slot(name)
        names = [handler_name(fn) for fn, _, _, _ in slot.entries]
        names += [handler_name(r) for r in slot.signal.receivers_for(ANY) if r is not slot]
        return names

    async def dispatch_async(
        self,
        name: str,
        sender: Any,
        payload: Mapping[str, Any],
        *,
        executor: Executor | None = None,
        handlers: Collection[str] | None = None,
    ) -> list[HandlerFailure]:
        """Like ``dispatch``, on the running event loop: async handlers are awaited there.

        Sync handlers run on ``executor`` (so that they never block the loop), with the
        caller's context variables, or inline when it is None. Handlers run one after
        another, in registration order. The failures' ``retry()`` returns an awaitable
        that runs the handler again the same way. ``handlers`` as for ``dispatch``.
        """
        slot, checked, _ = self._prepare(name, payload)
        if self._muted or slot.signal.is_muted:
            return []
        loop = asyncio.get_running_loop()
        failures: list[HandlerFailure] = []
        cache: list[Any] = [None]
        calls: list[tuple[Callable[..., Any], tuple[Any, ...], bool, Callable[..., Any], str]] = [
            (self._call, (sub, slot.name, sender, checked, cache), sub.is_async, sub.fn, "handler")
            for _fn, _plain, only, sub in slot.entries
            if only is None or only() is sender
        ]
        calls += [
            (
                _call_receiver,
                (receiver, sender, checked),
                inspect.iscoroutinefunction(receiver),
                receiver,
                "receiver",
            )
            for receiver in self._foreign(slot, sender)
        ]
        if handlers is not None:
            calls = [c for c in calls if handler_name(c[3]) in handlers]
        for call, args, is_async, fn, kind in calls:
            run = _async_runner(loop, executor, call, args, is_async)
            try:
                await run()
            except Exception as exc:
                exc.add_note(f"in {kind} {handler_name(fn)} for event {slot.name!r}")
                failures.append(HandlerFailure(slot.name, fn, exc, run))
        return failures

    # -- testing helpers -----------------------------------------------------------------

    @contextlib.contextmanager
    def capture(self, pattern: str = "**") -> Iterator[list[Event]]:
        """Record the events matching ``pattern`` emitted inside the block. Useful for tests.

        Yields a list that fills with ``Event`` objects (payloads copied) in the order the
        recorder (a handler registered last) is called: an event emitted by a handler of
        another event, which runs at once, comes before the event that caused it.
        """
        events: list[Event] = []

        def record(event: Event) -> None:
            events.append(Event(event.name, event.sender, dict(event.payload)))

        sub = self._subscribe(pattern, record, _EVENT, ANY)
        try:
            yield events
        finally:
            with self._lock:
                self._remove([sub])

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        """Emit nothing to any handler while the block runs. Useful for tests."""
        with self._lock:
            self._muted += 1
        try:
            yield
        finally:
            with self._lock:
                self._muted -= 1

    # -- internals -------------------------------------------------------------------

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is not None:
            return slot
        check_name(name)
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                # Base-class call: our own namespace would call back into _slot.
                signal = blinker.Namespace.signal(self._namespace, name)
                slot = _Slot(self, name, signal)
                slot.schema = self._schemas.get(name)
                slot.entries = self._entries_for(name)
                signal.connect(slot, weak=False)
                self._slots[name] = slot
            return slot

    def _entries_for(
        self, name: str
    ) -> tuple[tuple[Callable[..., Any], bool, Any, _Subscription], ...]:
        return tuple(
            (s.fn, s.kind == _PLAIN and not s.is_async, s.only, s)
            for s in self._subs
            if s.matches(name)
        )

    def _subscribe(
        self, pattern: str, fn: Callable[..., Any], kind: int, sender: Any
    ) -> _Subscription:
        if not callable(fn):
            raise TypeError(f"handler must be callable, not {type(fn).__name__}")
        _check_target(pattern)
        with self._lock:
            sub = _Subscription(next(self._seq), pattern, fn, kind, self._sender_ref(sender))
            self._subs.append(sub)
            if is_pattern(pattern):
                # Signals that exist now get the handler; later ones get it in _slot.
                for name in list(self._namespace):
                    if isinstance(name, str) and sub.matches(name):
                        with contextlib.suppress(ValueError):
                            self._slot(name)
            else:
                self._slot(pattern)
            for slot in self._slots.values():
                if sub.matches(slot.name):
                    slot.entries = self._entries_for(slot.name)
            return sub

    def _sender_ref(self, sender: Any) -> Callable[[], Any] | None:
        if sender is ANY:
            return None
        try:
            return weakref.ref(sender, self._sender_gone)
        except TypeError:
            return lambda: sender

    def _sender_gone(self, ref: weakref.ref[Any]) -> None:
        # The sender a handler listened to is gone: drop those subscriptions, as blinker does.
        with self._lock:
            self._remove([s for s in self._subs if s.only is ref])

    def _remove(self, gone: list[_Subscription]) -> None:
        if not gone:
            return
        self._subs = [s for s in self._subs if s not in gone]
        for slot in self._slots.values():
            if any(s.matches(slot.name) for s in gone):
                slot.entries = self._entries_for(slot.name)

    def _prepare(
        self, target: str | object, payload: Mapping[str, Any]
    ) -> tuple[_Slot, Mapping[str, Any], Any]:
        if type(target) is str:
            slot = self._slots.get(target) or self._slot(target)
            if slot.schema is not None:
                payload = slot.schema.validate(payload)
            return slot, payload, None
        if not is_typed_event(target):
            raise TypeError(
                f"emit() takes a signal name or an @event instance, not {type(target).__name__}"
            )
        if payload:
            raise TypeError("emit(instance) takes no keyword payload; it is in the instance")
        schema = schema_of(type(target))
        slot = self._slot(schema.name)
        if slot.schema is None or slot.schema.cls is not schema.cls:
            self.register(type(target))
        return slot, schema.payload_of(target), target

    def _run(
        self, slot: _Slot, sender: Any, payload: Mapping[str, Any], instance: Any
    ) -> list[HandlerFailure] | None:
        failures: list[HandlerFailure] | None = None
        cache: list[Any] | None = None
        for fn, plain, only, sub in slot.entries:
            if only is not None and only() is not sender:
                continue
            try:
                if plain:
                    fn(sender, **payload)
                    continue
                if cache is None:
                    cache = [instance]
                result = self._call(sub, slot.name, sender, payload, cache)
                if sub.is_async:
                    _run_coroutine(result)
            except Exception as exc:
                if failures is None:
                    failures = []
                if cache is None:
                    cache = [instance]
                failures.append(self._failure(slot, sub, exc, sender, payload, cache))
        return failures

    def _run_only(
        self, slot: _Slot, sender: Any, payload: Mapping[str, Any], handlers: Collection[str]
    ) -> list[HandlerFailure]:
        # Not the hot path: a fresh slot-like view holding the chosen entries only.
        view = _Slot(self, slot.name, slot.signal)
        view.entries = tuple(e for e in slot.entries if handler_name(e[0]) in handlers)
        failures = self._run(view, sender, payload, None) or []
        for receiver in self._foreign(slot, sender):
            if handler_name(receiver) not in handlers:
                continue
            try:
                result = receiver(sender, **payload)
                if inspect.iscoroutine(result):
                    _run_coroutine(result)
            except Exception as exc:
                failures.append(self._foreign_failure(slot.name, receiver, exc, sender, payload))
        return failures

    def _call(
        self,
        sub: _Subscription,
        name: str,
        sender: Any,
        payload: Mapping[str, Any],
        cache: list[Any],
    ) -> Any:
        if sub.kind == _PLAIN:
            return sub.fn(sender, **payload)
        if sub.kind == _EVENT:
            return sub.fn(Event(name, sender, payload))
        if cache[0] is None:
            schema = self._schemas[name]
            cache[0] = schema.build(payload)
        return sub.fn(cache[0])

    def _failure(
        self,
        slot: _Slot,
        sub: _Subscription,
        exc: Exception,
        sender: Any,
        payload: Mapping[str, Any],
        cache: list[Any],
    ) -> HandlerFailure:
        def retry() -> Any:
            result = self._call(sub, slot.name, sender, payload, cache)
            return _run_coroutine(result) if sub.is_async else result

        exc.add_note(f"in handler {handler_name(sub.fn)} for event {slot.name!r}")
        return HandlerFailure(slot.name, sub.fn, exc, retry)

    def _foreign(self, slot: _Slot, sender: Any) -> list[Callable[..., Any]]:
        if len(slot.signal.receivers) <= 1:
            return []
        return [r for r in slot.signal.receivers_for(sender) if r is not slot]

    def _run_foreign(
        self,
        slot: _Slot,
        sender: Any,
        payload: Mapping[str, Any],
        failures: list[HandlerFailure] | None,
    ) -> list[HandlerFailure] | None:
        for receiver in self._foreign(slot, sender):
            try:
                result = receiver(sender, **payload)
                if inspect.iscoroutine(result):
                    _run_coroutine(result)
            except Exception as exc:
                failures = failures or []
                failures.append(self._foreign_failure(slot.name, receiver, exc, sender, payload))
        return failures

    def _foreign_failure(
        self,
        name: str,
        receiver: Callable[..., Any],
        exc: Exception,
        sender: Any,
        payload: Mapping[str, Any],
    ) -> HandlerFailure:
        def retry() -> Any:
            result = receiver(sender, **payload)
            return _run_coroutine(result) if inspect.iscoroutine(result) else result

        exc.add_note(f"in receiver {handler_name(receiver)} for event {name!r}")
        return HandlerFailure(name, receiver, exc, retry)

    def _report(self, name: str, failures: list[HandlerFailure]) -> None:
        policy = self._on_error
        if policy == "raise":
            raise EmitError(name, failures)
        for failure in failures:
            if policy == "log":
                log.error(
                    "handler %s failed for event %r",
                    handler_name(failure.handler),
                    name,
                    exc_info=failure.exception,
                )
            else:
                policy(failure)

    def __repr__(self) -> str:
        return f"<EventBus signals={len(self._slots)} handlers={len(self._subs)}>"


class _Namespace(blinker.Namespace):
    """A namespace that tells its bus about new signals, so patterns cover them."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__()
        self._bus = weakref.ref(bus)

    def signal(self, name: str, doc: str | None = None) -> blinker.NamedSignal:
        bus = self._bus()
        if bus is not None and name not in self:
            with contextlib.suppress(ValueError, TypeError):
                return bus._slot(name).signal
        return super().signal(name, doc)


def _check_target(target: object) -> str:
    """Return ``target`` if it is a valid name or pattern; raise a clear error if not."""
    if isinstance(target, str) and is_pattern(target):
        compile_pattern(target)
        return target
    return check_name(target)


def _call_receiver(receiver: Callable[..., Any], sender: Any, payload: Mapping[str, Any]) -> Any:
    return receiver(sender, **payload)


def _async_runner(
    loop: asyncio.AbstractEventLoop,
    executor: Executor | None,
    call: Callable[..., Any],
    args: tuple[Any, ...],
    is_async: bool,
) -> Callable[[], Awaitable[Any]]:
    """A no-argument coroutine function that calls a handler once, the way
    ``dispatch_async`` runs it: awaited on the loop, on ``executor``, or inline."""

    async def run() -> Any:
        if is_async:
            return await call(*args)
        if executor is None:
            result = call(*args)
        else:
            context = contextvars.copy_context()
            result = await loop.run_in_executor(executor, context.run, call, *args)
        if inspect.isawaitable(result):  # a sync function that returned an awaitable
            result = await result
        return result

    return run


def _run_coroutine(result: Awaitable[Any]) -> Any:
    """Run an async handler's coroutine from sync code, if no loop runs in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(result))
    if inspect.iscoroutine(result):
        result.close()
    raise RuntimeError(
        "async handler called by a sync emit() inside a running event loop: "
        "use 'await bus.emit_async(...)'"
    )


async def _await(result: Awaitable[Any]) -> Any:
    return await result
