"""Local HTTP API (CONTRACT sections 6 and 8): health, lane states, journaled events, orders.

Who may do what. Every POST needs ``Authorization: Bearer <token>``: 401 without, 403
for a token nobody has or a role the route does not take; with no ``local_api.token`` and
no ``local_api.users`` every POST is refused (403). The legacy ``token`` is a full-access
key (records then name the actor the body gives, as before users existed). A user's token
(``local_api.users``: name, role, SHA-256 of the token) may do what its role may, and the
user's ``name`` is the actor of every record it makes: a body naming another is refused
(403 ``actor_mismatch``). GETs need no token (the guard's screen, Prometheus). Each
route's roles are declared with :func:`allow` beside its handler.

The edge (every figure in :class:`HttpLimits`, written down in ``docs/reliability.md``):

- **connections**: at most ``max_connections_per_client`` (64) from one client address
  and ``max_connections`` (512) in all, well below the unit's ``LimitNOFILE=4096``. A
  newcomer over its address's cap is answered 503 and closed. Over the total cap, the
  oldest connection with no request in progress, open at least ``evict_min_age_s`` (1 s,
  the time a real client takes to send its request), of the address holding the most
  connections is closed to make room: held-open idle or half-sent connections cost a
  flood its own slots, not other clients'; only when none qualifies is the newcomer
  answered 503 and closed. A connection must send a complete request header within
  ``header_timeout_s`` of opening or of its first byte after a response, and one that
  idles between requests is closed after ``idle_timeout_s`` (aiohttp's keep-alive timer,
  which also runs from the start of a connection that never sends a request).
- **headers**: request line and each header line at most 8 190 bytes, 64 headers
  (aiohttp answers 400 beyond).
- **bodies**: a cap per route (16 KB; approvals 64 KB), checked against
  ``Content-Length`` and while reading, read within ``body_timeout_s`` (after a refusal
  the rest of a body is drained for at most ``lingering_s``, then the connection goes); parsed by
  :func:`gatectl.limits.load_json` (depth, duplicate keys, numbers) and validated by the
  route's pydantic model (every field bounded, unknown fields refused).
- **queries**: every parameter validated by the route's model (unknown or repeated
  parameters refused); ``since_seq`` within 0..2^63-1; ``limit`` clamped to its range.
- **rate**: POSTs (they reach the lanes and the journal) at most ``post_rate_per_s`` per
  client address and user (each plate camera has its own), with bursts of
  ``post_burst``, and requests with a wrong or missing token as many per address: 429
  with ``Retry-After`` beyond.
- **errors**: every refusal is 4xx JSON ``{"error", "reason", ...}``, counted in
  ``gatectl_input_refused_total{surface="api", reason}`` and logged at a bounded rate; an
  unexpected handler error is contained: logged (with its traceback once a minute per
  route), counted as ``internal_error`` and answered 500 ``{"error": "internal error"}``
  without a traceback. Nothing a client sends reaches a lane unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from gatectl.approvals import MAX_APPROVAL_BYTES
from gatectl.commands import MAX_COMMAND_BYTES, CommandRefused, is_signed_command
from gatectl.limits import MAX_SEQ, JsonRefused, LaneId, load_json, validation_message
from gatectl.orders import OrderRefused
from gatectl.refusals import Refusals
from gatectl.service import Site
from gatectl.users import Users

log = structlog.get_logger("gatectl.api")

SITE_KEY = web.AppKey("site", Site)

#: The full-access role of the legacy ``local_api.token``.
FULL = "full"
LANE_ROLES = ("guard", "customs", "park", "maintenance", "camera")
ANY_ROLE = frozenset(LANE_ROLES)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The local API's edge. See the module docstring."""

    max_connections: int = 512
    max_connections_per_client: int = 64
    evict_min_age_s: float = 1.0
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    body_timeout_s: float = 10.0
    lingering_s: float = 2.0
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    body_max: int = 16 * 1024
    post_rate_per_s: float = 10.0
    post_burst: int = 30
    rate_clients: int = 4096
    error_log_interval_s: float = 60.0


LIMITS_KEY = web.AppKey("limits", HttpLimits)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: a user (``name``, ``role``) or the full-access token."""

    name: str | None
    role: str

    @property
    def actor(self) -> str | None:
        """The actor every record of this request is made in the name of (None: the body's)."""
        return self.name


CALLER_KEY = web.RequestKey("caller", Caller)


class ApiRefused(Exception):
    """Raised by a handler or helper: answered ``status`` with ``{"error", "reason"}``
    and counted as refused input of the API."""

    def __init__(self, status: int, reason: str, message: str, *, count: bool = True, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.count = count
        self.extra = extra


def error(status: int, reason: str, **extra: Any) -> web.Response:
    """A JSON error answer: ``{"error": reason, ...}`` (``reason`` is the text for people)."""
    return web.json_response({"error": reason, **extra}, status=status)


# ---------------------------------------------------------------------- roles


def allow(*roles: str) -> Callable[[Callable[..., Awaitable[web.StreamResponse]]], Any]:
    """Declare the user roles a POST handler takes (the full-access token takes every one)."""
    allowed = frozenset(roles)
    unknown = allowed - ANY_ROLE
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")

    def mark(handler):
        handler.gatectl_roles = allowed
        return handler

    return mark


def caller(request: web.Request) -> Caller:
    """The authenticated caller of a POST (set by the middleware)."""
    return request[CALLER_KEY]


def require_role(request: web.Request, *roles: str) -> Caller:
    """Refuse (403) unless the caller is the full-access token or has one of ``roles``;
    for handlers whose roles depend on the body (a signed command or a plain order)."""
    who = caller(request)
    if who.role != FULL and who.role not in roles:
        raise ApiRefused(403, "forbidden", f"role {who.role} may not do this (allowed: {', '.join(sorted(roles))})")
    return who


class Auth:
    """Bearer tokens of the local API: the legacy full-access token and the users."""

    def __init__(self, token: str | None, users: Iterable[Any]) -> None:
        self.token = token.encode() if token else None
        self.users = Users((u.name, u.role, u.token_sha256) for u in users)

    @property
    def configured(self) -> bool:
        return self.token is not None or len(self.users) > 0

    def identify(self, header: str | None) -> Caller:
        """The caller of ``Authorization: Bearer <token>``; raises ApiRefused 401/403."""
        if not self.configured:
            raise ApiRefused(403, "forbidden", "no local_api.token or users are configured: this API accepts no changes")
        if not header or not header.startswith("Bearer "):
            raise ApiRefused(401, "unauthorized", "missing bearer token",
                             hint="Authorization: Bearer <your token>")
        given = header[len("Bearer "):].strip().encode("utf-8", errors="replace")
        full = self.token is not None and hmac.compare_digest(given, self.token)
        found = self.users.authenticate(header) if len(self.users) else None
        if full:
            return Caller(None, FULL)
        if found is not None and found.user is not None:
            return Caller(found.user.name, found.user.role)
        raise ApiRefused(403, "forbidden", "wrong bearer token")


AUTH_KEY = web.AppKey("auth", Auth)


# ---------------------------------------------------------------------- rate


class RateLimiter:
    """A token bucket per client address, for the routes that reach the lanes. At most
    ``max_clients`` buckets are kept (the least recently seen forgotten first)."""

    def __init__(self, rate: float, burst: int, max_clients: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> float:
        """0 if the request may go, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


RATE_KEY = web.AppKey("rate", RateLimiter)


# ---------------------------------------------------------------------- connections


class _Conn:
    __slots__ = ("transport", "busy", "timer", "proto", "client", "opened_at")

    def __init__(self, transport: asyncio.Transport, proto: Any, client: str, opened_at: float) -> None:
        self.transport = transport
        self.proto = proto
        self.client = client
        self.opened_at = opened_at
        self.busy = 0
        self.timer: asyncio.TimerHandle | None = None


_BUSY_BODY = b'{"error": "too many connections", "reason": "too_many_connections"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


def _client_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class ConnectionGuard:
    """Counts and caps the API's connections, per client address and in all, and closes
    those that never finish a request header. See the module docstring."""

    def __init__(self, limits: HttpLimits, refusals: Refusals) -> None:
        self.limits = limits
        self.refusals = refusals
        self.conns: dict[asyncio.BaseTransport, _Conn] = {}  # oldest first
        self.by_client: dict[str, dict[asyncio.BaseTransport, _Conn]] = {}
        self.peak = 0
        self.evicted = 0
        self.turned_away = 0
        self.header_timeouts = 0

    def factory(self, server: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, server)

    def opened(self, transport: asyncio.Transport, proto: Any) -> _Conn | None:
        client = _client_of(transport)
        mine = self.by_client.get(client, {})
        if len(mine) >= self.limits.max_connections_per_client:
            return self._turn_away(transport, f"{client} holds {len(mine)} connections already")
        if len(self.conns) >= self.limits.max_connections and not self._evict_one():
            return self._turn_away(transport, f"{len(self.conns)} connections open, none idle long enough to close")
        conn = _Conn(transport, proto, client, time.monotonic())
        self.conns[transport] = conn
        self.by_client.setdefault(client, {})[transport] = conn
        self.peak = max(self.peak, len(self.conns))
        self._arm(conn)
        return conn

    def _turn_away(self, transport: asyncio.Transport, why: str) -> None:
        self.turned_away += 1
        self.refusals.count("api", "too_many_connections", f"{why}: the newcomer answered 503 and closed")
        with contextlib.suppress(Exception):
            transport.write(_BUSY)
            transport.close()
        return None

    def _evict_one(self) -> bool:
        """Close the oldest idle connection, old enough to have had its chance to send a
        request, of the client holding the most connections (the likely flood)."""
        if not self.by_client:
            return False
        oldest = time.monotonic() - self.limits.evict_min_age_s
        for client in sorted(self.by_client, key=lambda c: len(self.by_client[c]), reverse=True)[:3]:
            for conn in self.by_client[client].values():
                if conn.opened_at > oldest:
                    break  # the rest of this client's are younger still
                if not conn.busy:
                    self.evicted += 1
                    self.refusals.count("api", "too_many_connections",
                                        f"{len(self.conns)} connections open: an idle one of {client} closed "
                                        "to make room")
                    self._close(conn)
                    return True
        return False

    def _forget(self, conn: _Conn) -> None:
        if self.conns.get(conn.transport) is conn:
            del self.conns[conn.transport]
        mine = self.by_client.get(conn.client)
        if mine is not None and mine.get(conn.transport) is conn:
            del mine[conn.transport]
            if not mine:
                del self.by_client[conn.client]

    def _close(self, conn: _Conn) -> None:
        self._forget(conn)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.transport.abort()

    def _arm(self, conn: _Conn) -> None:
        if conn.timer is None:
            loop = asyncio.get_running_loop()
            conn.timer = loop.call_later(self.limits.header_timeout_s, self._header_timeout, conn)

    def _header_timeout(self, conn: _Conn) -> None:
        conn.timer = None
        if conn.busy or conn.transport not in self.conns:
            return
        self.header_timeouts += 1
        self.refusals.count("api", "header_timeout",
                            f"no complete request header within {self.limits.header_timeout_s:g} s: closed")
        self._close(conn)

    def data(self, conn: _Conn) -> None:
        if not conn.busy:
            self._arm(conn)

    def closed(self, conn: _Conn) -> None:
        self._forget(conn)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def request_started(self, transport: Any) -> _Conn | None:
        conn = self.conns.get(transport)
        if conn is not None:
            conn.busy += 1
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
        return conn

    @staticmethod
    def request_finished(conn: _Conn | None) -> None:
        if conn is not None:
            conn.busy -= 1


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard: the guard sees it open,
    receive and close; everything else is aiohttp's."""

    __slots__ = ("guard", "server", "inner", "conn")

    def __init__(self, guard: ConnectionGuard, server: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.server = server
        self.inner: Any = None
        self.conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn = self.guard.opened(transport, self)  # type: ignore[arg-type]
        if self.conn is None:
            return
        self.inner = self.server()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        self.guard.data(self.conn)  # type: ignore[arg-type]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.guard.closed(self.conn)
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


GUARD_KEY = web.AppKey("guard", ConnectionGuard)


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` with every connection behind a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, host, port)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog, reuse_address=True)


# ---------------------------------------------------------------------- the edge


class _ErrorLog:
    """Unexpected handler errors: every one counted, its traceback logged once per
    route and interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._at: dict[str, tuple[float, int]] = {}

    def report(self, route: str, exc: BaseException, ident: str) -> None:
        now = time.monotonic()
        at, since = self._at.get(route, (float("-inf"), 0))
        if now - at < self.interval:
            self._at[route] = (at, since + 1)
            return
        self._at[route] = (now, 0)
        log.error("api handler failed", route=route, error_id=ident, error=repr(exc)[:300],
                  failed_since_last_line=since, exc_info=(type(exc), exc, exc.__traceback__))


ERRORS_KEY = web.AppKey("errors", _ErrorLog)


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "(no route)"


def _refused(request: web.Request, exc: ApiRefused) -> web.Response:
    site = request.app[SITE_KEY]
    if exc.count:
        site.orders.refusals.count("api", exc.reason, exc.message, route=_route(request), method=request.method,
                                   client=request.remote or "")
    resp = web.json_response({"error": exc.message, "reason": exc.reason, **exc.extra}, status=exc.status)
    if exc.status == 429:
        resp.headers["Retry-After"] = str(exc.extra.get("retry_after_s", 1))
    if not request.content.is_eof():
        resp.force_close()  # the rest of a refused body is not read: the connection goes
    return resp


def _rate(app: web.Application, key: str) -> None:
    wait = app[RATE_KEY].take(key)
    if wait > 0:
        raise ApiRefused(429, "rate_limited", "too many requests; slow down", retry_after_s=max(1, round(wait + 0.5)))


@web.middleware
async def edge(request: web.Request, handler):
    """Every request: the connection marked busy, POSTs rate-limited and authenticated,
    refusals answered and counted, unexpected errors contained."""
    app = request.app
    conn = app[GUARD_KEY].request_started(request.transport)
    try:
        changes = request.method not in ("GET", "HEAD", "OPTIONS")
        if changes and request.match_info.http_exception is not None:
            raise request.match_info.http_exception  # 404/405 before any token is looked at
        if changes or request.path == "/api/v1/whoami":
            # Rated per address and user (each plate camera its own), and a failed token per
            # address: nobody guesses tokens at speed.
            address = request.remote or "?"
            try:
                who = app[AUTH_KEY].identify(request.headers.get("Authorization"))
            except ApiRefused:
                _rate(app, address)
                raise
            _rate(app, f"{address}/{who.name or who.role}")
            request[CALLER_KEY] = who
        if changes:
            allowed = getattr(request.match_info.handler, "gatectl_roles", frozenset())
            who = request[CALLER_KEY]
            if who.role != FULL and who.role not in allowed:
                raise ApiRefused(403, "forbidden", f"role {who.role} may not do this" + (
                    f" (allowed: {', '.join(sorted(allowed))})" if allowed else " (only the full-access token)"))
        return await handler(request)
    except ApiRefused as exc:
        return _refused(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        if exc.status == 413:
            return _refused(request, ApiRefused(413, "too_large", exc.text or "request body too large"))
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow",)}
        return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - contained: the daemon and the lanes go on
        ident = uuid.uuid4().hex[:12]
        app[SITE_KEY].orders.refusals.count("api", "internal_error", repr(exc)[:200], route=_route(request))
        app[ERRORS_KEY].report(_route(request), exc, ident)
        return web.json_response({"error": "internal error", "error_id": ident}, status=500)
    finally:
        ConnectionGuard.request_finished(conn)


async def read_body(request: web.Request, max_bytes: int | None = None) -> bytes:
    """The request body, at most ``max_bytes`` (the route's cap), read within the body
    timeout; raises ApiRefused 413/408."""
    limits = request.app[LIMITS_KEY]
    cap = limits.body_max if max_bytes is None else max_bytes
    if request.content_length is not None and request.content_length > cap:
        raise ApiRefused(413, "too_large", f"the body is at most {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    raise ApiRefused(413, "too_large", f"the body is at most {cap} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiRefused(408, "body_timeout", f"the body did not arrive within {limits.body_timeout_s:g} s") from None
    return b"".join(chunks)


async def json_body(request: web.Request, max_bytes: int | None = None) -> dict[str, Any]:
    """The body as a JSON object, bounded (size, depth, numbers, duplicate keys)."""
    raw = await read_body(request, max_bytes)
    cap = request.app[LIMITS_KEY].body_max if max_bytes is None else max_bytes
    try:
        body = load_json(raw, max_bytes=cap)
    except JsonRefused as exc:
        raise ApiRefused(413 if exc.reason == "too_large" else 400, exc.reason, f"body: {exc.message}") from None
    if not isinstance(body, dict):
        raise ApiRefused(400, "invalid", "the body must be a JSON object")
    return body


def model_body(body: dict[str, Any], model: type[M]) -> M:
    """``body`` validated by ``model``; ApiRefused 422 with every problem named."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiRefused(422, "invalid", validation_message(exc)) from None


# ---------------------------------------------------------------------- queries


def _query_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value or len(value) > 20 or not value.lstrip("-").isdigit() \
            or value.count("-") > (1 if value.startswith("-") else 0):
        raise ValueError("must be a whole number (at most 20 digits)")
    return int(value)


def _query_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false (1/0, yes/no)")


def clamped(low: int, high: int) -> Any:
    """A whole number clamped into ``low..high`` (a ``limit``: asking for more is no error)."""
    return Annotated[int, BeforeValidator(lambda v: min(high, max(low, _query_int(v))))]


QueryInt = Annotated[int, BeforeValidator(_query_int)]
QueryBool = Annotated[bool, BeforeValidator(_query_bool)]


class Query(BaseModel):
    """Base of every route's query model: unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def query(request: web.Request, model: type[M]) -> M:
    """The request's query validated by ``model``; ApiRefused 400 ``bad_query``."""
    params: dict[str, str] = {}
    for key, value in request.query.items():
        if key in params:
            raise ApiRefused(400, "bad_query", f"query parameter {key[:40]!r} is given twice")
        params[key] = value
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise ApiRefused(400, "bad_query", "query: " + validation_message(exc)) from None


def lane_of(request: web.Request) -> str:
    """The ``{lane}`` of the path, a configured lane; ApiRefused 404 otherwise."""
    site = request.app[SITE_KEY]
    lane_id = request.match_info["lane"]
    if lane_id not in site.lanes:
        raise ApiRefused(404, "unknown_lane", f"unknown lane {lane_id[:64]!r}")
    return lane_id


# ---------------------------------------------------------------------- routes


def make_app(site: Site, *setups, limits: HttpLimits | None = None) -> web.Application:
    """The local API; each of ``setups`` is a ``setup_routes(app)`` adding a module's routes."""
    limits = limits or HttpLimits()
    # The body caps are the routes' own (read_body); this only stops aiohttp's own readers.
    app = web.Application(middlewares=[edge], client_max_size=max(MAX_APPROVAL_BYTES, limits.body_max) + 1024)
    app[SITE_KEY] = site
    app[LIMITS_KEY] = limits
    app[AUTH_KEY] = Auth(site.config.local_api.token, site.config.local_api.users)
    app[RATE_KEY] = RateLimiter(limits.post_rate_per_s, limits.post_burst, limits.rate_clients)
    app[ERRORS_KEY] = _ErrorLog(limits.error_log_interval_s)
    app[GUARD_KEY] = ConnectionGuard(limits, site.orders.refusals)
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/lanes", lanes)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/whoami", whoami)
    app.router.add_post("/api/v1/lanes/{lane}/spot-checks", spot_checks)
    app.router.add_post("/api/v1/approvals", approvals)
    app.router.add_post("/api/v1/lanes/{lane}/emergency-accounts", emergency_accounts)
    app.router.add_post("/api/v1/lanes/{lane}/plates", plates)
    app.router.add_post("/api/v1/lanes/{lane}/hours", hours)
    app.router.add_post("/api/v1/lanes/{lane}/drills", drills)
    for setup in setups:
        setup(app)
    return app


class NoQuery(Query):
    pass


async def health(request: web.Request) -> web.Response:
    query(request, NoQuery)
    site = request.app[SITE_KEY]
    lanes = {lane.id: lane.view["state"] for lane in site.lanes.values()}
    body = {"status": "ok" if site.running else "starting", "site_id": site.config.site.id, "lanes": lanes}
    return web.json_response(body, status=200 if site.running else 503)


async def lanes(request: web.Request) -> web.Response:
    query(request, NoQuery)
    site = request.app[SITE_KEY]
    return web.json_response({"lanes": [lane.snapshot() for lane in site.lanes.values()]})


async def whoami(request: web.Request) -> web.Response:
    """Who a bearer token is (the screen's login): ``{"name", "role"}``; 401/403 as a POST."""
    query(request, NoQuery)
    who = caller(request)  # identified (or refused) by the edge
    return web.json_response({"name": who.name, "role": who.role})


#: The most events one ``GET /api/v1/events`` answers (the rest: ask again from the last seq).
EVENTS_MAX = 10_000
EVENTS_DEFAULT = 1_000


def _seq(value: Any) -> int:
    number = _query_int(value)
    if not 0 <= number <= MAX_SEQ:
        raise ValueError(f"must be within 0..{MAX_SEQ}")
    return number


class EventsQuery(Query):
    lane: LaneId | None = None
    since_seq: Annotated[int, BeforeValidator(_seq)] | None = None
    limit: clamped(1, EVENTS_MAX) = EVENTS_DEFAULT


async def events(request: web.Request) -> web.Response:
    """GET /api/v1/events?lane=&since_seq=&limit=: journaled events as stored, ``seq``
    order per lane, at most ``limit`` (clamped to 1..10 000, default 1 000). Read on a
    reader thread and answered as the stored JSON, never parsed again."""
    site = request.app[SITE_KEY]
    q = query(request, EventsQuery)
    if q.lane is not None and q.lane not in site.lanes and q.lane != "_site":
        raise ApiRefused(404, "unknown_lane", f"unknown lane {q.lane!r}")
    journal = site.journal

    def page(db) -> bytes:
        # The stored bytes joined with the interpreter's lock released: joining and
        # encoding 10 000 bodies as text held it for tens of milliseconds, the lanes' too.
        return journal.events_page(q.lane, q.since_seq, q.limit, db=db)

    return web.Response(body=await journal.read(page), content_type="application/json")


def _command_status(exc: CommandRefused) -> int:
    return {"replayed": 409, "unknown_lane": 404}.get(exc.code, 422)


async def signed_or_plain(request: web.Request, lane_id: str, kind: str, plain_roles: tuple[str, ...],
                          plain: Callable[[dict[str, Any], Caller], Awaitable[dict[str, Any]]]) -> web.Response:
    """A route that takes either a customs-signed command of ``kind`` (any role may relay
    it: the signature is the authority) or a plain order (``plain_roles`` only)."""
    site = request.app[SITE_KEY]
    body = await json_body(request, MAX_COMMAND_BYTES)
    if is_signed_command(body):
        try:
            result = await site.orders.signed_command(body, source="local_api", expect=kind, lane_id=lane_id)
        except CommandRefused as exc:  # counted as a command refusal by the orders
            raise ApiRefused(_command_status(exc), exc.code, exc.message, count=False) from None
        return web.json_response(result)
    who = require_role(request, *plain_roles)
    try:
        result = await plain(body, who)
    except OrderRefused as exc:
        raise ApiRefused(exc.status, exc.reason, exc.message) from None
    return web.json_response(result)


@allow(*LANE_ROLES)  # a signed command from anyone; a plain order from customs (checked inside)
async def spot_checks(request: web.Request) -> web.Response:
    """R7: customs spot checks: {"hold_next": N} | {"fraction": 0.1} | {"clear": true}, or
    the same as a signed command."""
    site = request.app[SITE_KEY]
    lane_id = lane_of(request)
    return await signed_or_plain(request, lane_id, "spot-check", ("customs",),
                                 lambda body, who: site.orders.spot_check(lane_id, body, source="local_api"))


@allow(*LANE_ROLES)
async def approvals(request: web.Request) -> web.Response:
    """R10, R17: accept (200) or refuse (422, with the reason) a signed approval."""
    site = request.app[SITE_KEY]
    raw = await read_body(request, MAX_APPROVAL_BYTES)
    result = await site.orders.approval(raw, source="local_api")
    return web.json_response(result, status=200 if result["status"] == "accepted" else 422)


@allow("camera")
async def plates(request: web.Request) -> web.Response:
    """CONTRACT 8: the plate camera's read of the vehicle on the arrival loop:
    ``{"plate", "confidence", "captured_at"}``. 409 ``no_plate_camera`` on a lane without
    ``plate_camera``. A read no passage takes is not journaled (only a passage's plate is),
    and refused reads are counted, never journaled: cameras post several a second."""
    site = request.app[SITE_KEY]
    lane_id = lane_of(request)
    if site.lanes[lane_id].config.plate_camera is None:  # before the body: a misrouted camera costs no parse
        raise ApiRefused(409, "no_plate_camera", f"lane {lane_id} has no plate_camera configured: its plates are "
                                                 "not taken")
    body = await json_body(request)
    try:
        result = await site.orders.plate(lane_id, body)
    except OrderRefused as exc:
        raise ApiRefused(exc.status, exc.reason, exc.message) from None
    return web.json_response(result)


@allow(*LANE_ROLES)  # a signed command from anyone; a plain order from customs (checked inside)
async def hours(request: web.Request) -> web.Response:
    """R2, CONTRACT 8: customs close or open the lane now over its open hours:
    ``{"open", "until", "reason"}`` or ``{"clear": true}``, or the same as a signed
    command. The order's ``by`` is the token's user."""
    site = request.app[SITE_KEY]
    lane_id = lane_of(request)
    return await signed_or_plain(request, lane_id, "lane-hours", ("customs",),
                                 lambda body, who: site.orders.lane_hours(lane_id, body, source="local_api",
                                                                          actor=who.actor))


@allow("park")
async def drills(request: web.Request) -> web.Response:
    """Park management start or end an emergency drill (应急处置演练) on the lane:
    ``{"start": true | false, "note": "…"}``; what the lane journals meanwhile is marked
    ``"drill": true``. 409 ``drill_state`` for a start during a drill or an end without one."""
    site = request.app[SITE_KEY]
    lane_id = lane_of(request)
    body = await json_body(request)
    try:
        result = await site.orders.drill(lane_id, body, actor=caller(request).actor)
    except OrderRefused as exc:
        raise ApiRefused(exc.status, exc.reason, exc.message) from None
    return web.json_response(result)


@allow("guard")
async def emergency_accounts(request: web.Request) -> web.Response:
    """R11: the guard's account of an emergency release: passage_id, vehicle_type, plate, note."""
    site = request.app[SITE_KEY]
    lane_id = lane_of(request)
    body = await json_body(request)
    result = await site.orders.emergency_account(body, lane_id=lane_id, actor=caller(request).actor)
    if result["status"] == "accepted":
        return web.json_response(result)
    status = result.pop("http_status", 422)
    if result["reason"] in ("malformed", "actor_mismatch"):
        raise ApiRefused(status, "invalid" if result["reason"] == "malformed" else "actor_mismatch",
                         result["message"])
    return web.json_response(result, status=status)


async def start_api(site: Site, *setups, limits: HttpLimits | None = None) -> web.AppRunner:
    """Serve the local API on ``local_api.listen`` behind the edge of ``limits``."""
    limits = limits or HttpLimits()
    app = make_app(site, *setups, limits=limits)
    guard = app[GUARD_KEY]
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=limits.idle_timeout_s,
        lingering_time=limits.lingering_s,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
    )
    await runner.setup()
    api = site.config.local_api
    await GuardedSite(runner, api.host, api.port, guard).start()
    return runner


__all__ = [
    "ANY_ROLE", "ApiRefused", "Auth", "Caller", "ConnectionGuard", "FULL", "HttpLimits", "LANE_ROLES", "Query",
    "QueryBool", "QueryInt", "RateLimiter", "SITE_KEY", "allow", "caller", "clamped", "error", "json_body",
    "lane_of", "make_app", "model_body", "query", "read_body", "require_role", "signed_or_plain", "start_api",
]
