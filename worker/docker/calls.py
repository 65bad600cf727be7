"""The one call path to Docker, and the scope every resource module works in.

:meth:`DockerCalls.call` is the one place an HTTP failure becomes a :class:`DockhandError`: it
retries transient failures (bounded, jittered), maps the rest to contract codes, keeps Docker's
availability current and records a span per call. The scope helpers say which objects this host
manages and, with tenancy on, which of them the running command's sender may touch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import aiodocker
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode

from .. import tenancy
from ..errors import DockhandError, from_exception, is_transient
from ..labels import Labels
from ..policy import Policy
from ..retry import once_then_retry
from ..settings import Settings
from ..telemetry import Telemetry
from .census import Census

log = logging.getLogger("dockhand.docker")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
JSON = dict[str, Any]


class DockerCalls:
    """Docker calls with retries, error mapping and availability; naming and ownership scope."""

    def __init__(
        self,
        docker: aiodocker.Docker,
        settings: Settings,
        labels: Labels,
        policy: Policy,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.docker = docker
        self.telemetry = telemetry or Telemetry(settings.host_id)
        self.settings = settings
        self.labels = labels
        self.policy = policy
        self.host_id = settings.host_id
        self.census = Census(settings.max_workspaces, settings.host_id)
        # Whether Docker answers: the health probe, the event stream and every call keep it
        # current (see mark_available / mark_unavailable); while off, calls fail fast.
        self.available = True
        self._answered_at = 0.0  # monotonic time of the latest proof that Docker answers
        self._availability_listeners: list[Callable[[bool], None]] = []
        self._recheck: asyncio.Future[bool] | None = None
        # Whether the event stream is connected now (see watch / saw): caches that its events keep
        # current are used only while it is.
        self.watching = False
        self._event_listeners: list[Callable[[JSON | None], None]] = []

    # --- the one call path ---------------------------------------------------------------

    async def call(
        self,
        operation: str,
        fn: Callable[[], Awaitable[T]],
        *,
        subject: str,
        not_found: ErrorCode = ErrorCode.NOT_FOUND,
        pulling: bool = False,
        refused: str | None = None,
    ) -> T:
        """Run one Docker API call: retry transient failures, map the rest to a contract code.

        ``operation`` is a low-cardinality name (``container.create``) for logs and spans.
        While the daemon is marked down, calls fail fast (``docker_unavailable``) unless one shared
        quick check (:meth:`recheck`) finds it answering again: then the call goes ahead. With
        ``refused`` (``"create"``), Docker refusing the request is ``invalid_command``.
        """
        if not self.available and not await self.recheck():
            raise DockhandError(
                ErrorCode.DOCKER_UNAVAILABLE, f"{subject}: Docker daemon unreachable on {self.host_id}", retryable=True
            )
        try:
            with self.telemetry.docker_call(operation, subject):
                result = await once_then_retry(
                    fn,
                    on=is_transient,
                    attempts=self.settings.docker_retry_attempts,
                    budget_s=self.settings.docker_retry_timeout_s,
                )
        except Exception as exc:
            if isinstance(exc, DockerError) and 400 <= exc.status < 500:
                self.mark_available()  # the daemon answered (a 404, a 409): it is up (900: no connection)
            error = from_exception(exc, subject=subject, not_found=not_found, pulling=pulling)
            raise (_refusal(error, exc, refused) if refused else error) from exc
        self.mark_available()
        return result

    async def maybe(self, operation: str, fn: Callable[[], Awaitable[T]], *, subject: str) -> T | None:
        """Like :meth:`call`, but a 404 means "absent" and returns ``None``."""
        try:
            return await self.call(operation, fn, subject=subject)
        except DockhandError as exc:
            if exc.code is ErrorCode.NOT_FOUND and isinstance(exc.__cause__, DockerError):
                return None
            raise

    # --- availability ----------------------------------------------------------------------

    def on_availability(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(available)`` whenever availability flips (health wakes, the event
        reader skips its backoff)."""
        self._availability_listeners.append(listener)

    def mark_available(self) -> None:
        """Docker just answered: available at once, whatever the last probe said."""
        self._answered_at = time.monotonic()
        if not self.available:
            log.info("docker available again")
            self._set_available(True)

    def mark_unavailable(self, began: float) -> bool:
        """A request begun at ``began`` (monotonic) found Docker unreachable. Ignored (``False``)
        when Docker answered after that request began: a stale failure must not override a
        fresher success (a probe sent just before the daemon came back, failing just after)."""
        if self._answered_at >= began:
            return False
        if self.available:
            self._set_available(False)
        return True

    def _set_available(self, value: bool) -> None:
        self.available = value
        for listener in self._availability_listeners:
            listener(value)

    async def recheck(self) -> bool:
        """Whether Docker answers now (``/version``, at most 1 s), asked once for all callers that
        wait at the same time; marks availability either way."""
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.ensure_future(self._ping())
        # shield: one caller giving up (cancelled) does not cancel the others' check.
        return await asyncio.shield(self._recheck)

    async def _ping(self) -> bool:
        began = time.monotonic()
        try:
            async with asyncio.timeout(1.0):
                await self.docker.version()
        except Exception:
            self.mark_unavailable(began)
            return False
        self.mark_available()
        return True

    # --- what the event stream reports (for caches) ------------------------------------------

    def on_event(self, listener: Callable[[JSON | None], None]) -> None:
        """Call ``listener(event)`` for every Docker event the stream reads, and
        ``listener(None)`` whenever the stream connects or is lost (forget everything)."""
        self._event_listeners.append(listener)

    def watch(self, connected: bool) -> None:
        """The event stream just connected (or was lost). Across a gap the worker cannot know
        what changed: every event-fed cache starts empty either way."""
        self.watching = connected
        for listener in self._event_listeners:
            listener(None)

    def saw(self, event: JSON) -> None:
        """One event, as the stream reads it (before it is queued, so a cache hears of a change
        within the time Docker takes to report it, not after the events queued before it)."""
        for listener in self._event_listeners:
            listener(event)

    # --- naming and scope ----------------------------------------------------------------

    def container_name(self, workspace_id: str) -> str:
        """The container name of a workspace (DOCKHAND_CONTAINER_NAME_PREFIX + its id)."""
        return f"{self.settings.container_name_prefix}{workspace_id}"

    def subject(self, workspace_id: str) -> str:
        """How messages name a workspace: ``workspace ws1 on host-a``."""
        return f"workspace {workspace_id} on {self.host_id}"

    def host_label_filter(self) -> list[str]:
        """Docker label filters for the objects this host manages."""
        return [f"{self.labels.managed}=true", f"{self.labels.host}={self.host_id}"]

    def managed_labels(self, **extra: str | None) -> dict[str, str]:
        """The labels of an object this host makes (its owner's too, under tenancy), plus
        ``extra`` (``None`` values left out)."""
        labels = {self.labels.managed: "true", self.labels.host: self.host_id}
        sender = tenancy.current()
        if sender is not None:
            # Tenancy: whatever a command creates belongs to its sender.
            labels[self.labels.owner] = sender.user
        labels.update({k: v for k, v in extra.items() if v is not None})
        return labels

    def owns(self, labels: dict[str, str] | None) -> bool:
        """Whether the running command may touch (or see) an object with these labels.

        Always with tenancy off, for the worker itself and for admins; otherwise only an object
        this host manages whose owner label is the sender (unowned objects are nobody's).
        """
        sender = tenancy.restricted()
        if sender is None:
            return True
        labels = labels or {}
        return self.labels.is_managed_by(labels, self.host_id) and labels.get(self.labels.owner) == sender.user

    def default_network(self, *, egress: bool = True) -> str:
        """The network a workspace joins when it names none.

        With tenancy on, each owner gets its own (``<default>-<owner slug>``): one shared default
        network would let every tenant's workspaces reach each other. Egress-free workspaces
        (``egress: false``) get one of their own kind, ``<that>-noegress`` (internal, see
        networks.egress_free).
        """
        sender = tenancy.current()
        name = self.settings.default_network
        if sender is not None:
            name = f"{name}-{tenancy.owner_slug(sender.user)}"
        return name if egress else f"{name}-noegress"


class Remembered(Generic[K, V]):
    """A bounded (LRU) cache of Docker facts that the event stream keeps current.

    Used only while the stream is connected (:attr:`DockerCalls.watching`) and emptied whenever
    it connects or is lost. A value is stored only if its key was not invalidated since the
    caller took its :meth:`token` (before the Docker call that produced the value): an event
    read while that call was in flight may describe a change its answer does not show.
    """

    def __init__(self, ops: DockerCalls, size: int, on_event: Callable[[Remembered[K, V], JSON], None]) -> None:
        self.ops = ops
        self.size = size
        self._values: OrderedDict[K, V] = OrderedDict()
        self._clock = 0  # advanced by every drop and clear
        self._floor = 0  # nothing taken before this is stored (a clear, or a forgotten drop)
        self._dropped: OrderedDict[K, int] = OrderedDict()  # key -> when it was last dropped
        self._on_event = on_event
        ops.on_event(self._heard)

    def _heard(self, event: JSON | None) -> None:
        if event is None:
            self.clear()
        else:
            self._on_event(self, event)

    def token(self) -> int:
        """Take before the Docker call whose answer :meth:`put` stores."""
        return self._clock if self.ops.watching else -1

    def get(self, key: K) -> V | None:
        """The remembered value (``None``: ask Docker)."""
        if not self.ops.watching:
            return None
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: K, value: V, token: int) -> None:
        """Remember ``value`` unless ``key`` was invalidated since ``token`` was taken."""
        if token < self._floor or self._dropped.get(key, -1) > token or not self.ops.watching:
            return
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.size:
            self._values.popitem(last=False)

    def drop(self, key: K) -> None:
        """Forget one value (and refuse it from calls in flight)."""
        self._clock += 1
        self._values.pop(key, None)
        self._dropped[key] = self._clock
        self._dropped.move_to_end(key)
        while len(self._dropped) > self.size:
            _, when = self._dropped.popitem(last=False)
            self._floor = max(self._floor, when)  # no longer known which key: refuse all older

    def clear(self) -> None:
        """Forget everything (and refuse values from calls in flight)."""
        self._clock += 1
        self._floor = self._clock
        self._values.clear()
        self._dropped.clear()

    def items(self) -> list[tuple[K, V]]:
        """What is remembered now (for invalidation by value)."""
        return list(self._values.items())


def _refusal(error: DockhandError, cause: Exception, what: str) -> DockhandError:
    """Docker's create/start refusals are answers about the request (a port protocol it cannot
    publish, a mount it cannot make), not worker faults: ``invalid_command``."""
    if error.code is not ErrorCode.INTERNAL or not isinstance(cause, DockerError):
        return error
    return DockhandError(
        ErrorCode.INVALID_COMMAND, error.message.replace("Docker error:", f"Docker refused to {what} it:")
    )
