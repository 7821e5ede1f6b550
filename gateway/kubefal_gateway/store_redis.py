"""Redis queue store: one queue shared by several gateway replicas.

Why it looks like this (docs/design-decisions.md): redis-py issuing one command per round trip costs
~220 µs of gateway CPU per request; the same commands auto-pipelined over one connection cost
~10-16 µs. So every store call queues its command on `_AutoPipeline`, which sends everything issued
in one event-loop turn as one write on one dedicated connection (hiredis packs and parses) and hands
each caller its reply from the protocol callback; batches pipeline behind each other.

Each state change is one Lua script, so it is atomic across gateways: ``lease`` pops the head of
the app's NORMAL queue (else LOW) and records the lease in one step, so no job is leased twice at
once; ``complete`` checks the lease holder and stores the result in one step (exactly-once
completion); ``expire`` returns expired leases (a crashed gateway's jobs) to the queue.

Keys (``P`` is ``{prefix}`` in braces, a hash tag keeping one queue in one slot; Redis Cluster is
not supported; use a standalone server, or one with replicas behind Redis Sentinel with a
``redis+sentinel://`` URL, see `RedisQueueStore.open`):

* ``P:seq`` sequence counter; ``P:j:<id>`` job hash (state 0/1/2, app, prio, seq, attempts, holder,
  lease, cancel, sub, dl, wh, meta, body, rmeta, rbody); ``P:logs:<id>`` list of log lines;
* ``P:q:<app>:0`` / ``P:q:<app>:1`` queued ids by sequence (NORMAL / LOW); ``P:qt:<app>`` queued ids
  by submit time (for the scaling delay); ``P:ip:<app>`` in-progress ids; ``P:apps`` app ids;
* ``P:leases`` leased ids by lease expiry; ``P:deadlines`` queued ids by start deadline;
* ``P:wh`` webhook delivery ids by due time; ``P:wh:<id>`` delivery hash;
* channel ``P:events``: ``origin NUL kind NUL app NUL request_id`` messages (SUBMITTED and
  CANCEL_REQUESTED across gateways; COMPLETED stays local unless ``share_completions``).

Completed jobs and their logs get a Redis TTL of ``result_ttl``, so Redis deletes them by itself.
Durability is redis-server's (configure AOF with ``appendfsync everysec`` or ``always``).

Faults (`_AutoPipeline`): every connect and every wait for a reply is bounded by the command
timeout (the gateway's ``--redis-timeout``); a stalled or vanished server fails the calls with
QueueError (submits answer 503, nothing is acknowledged before Redis confirmed the write),
`RedisQueueStore.ping` fails so /readyz reports not ready, and reconnects back off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import time
import typing
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.exceptions

from kubefal_gateway import queueing, store_codec

LOG = logging.getLogger(__name__)

_STATES = {
    b"0": queueing.JobState.IN_QUEUE,
    b"1": queueing.JobState.IN_PROGRESS,
    b"2": queueing.JobState.COMPLETED,
}

# Shared Lua: mark job `rid` (hash `jk`) COMPLETED with a result; enqueue its webhook.
_FINISH = """
local function finish(p, rid, jk, app, wh, rmeta, rbody, now, ttl_ms)
  redis.call('HSET', jk, 'state', 2, 'rmeta', rmeta, 'rbody', rbody, 'done', now)
  redis.call('HDEL', jk, 'holder', 'lease', 'body')
  redis.call('ZREM', p .. ':leases', rid)
  redis.call('SREM', p .. ':ip:' .. app, rid)
  redis.call('PEXPIRE', jk, ttl_ms)
  redis.call('PEXPIRE', p .. ':logs:' .. rid, ttl_ms)
  if wh and wh ~= '' then
    local whk = p .. ':wh:' .. rid
    if redis.call('EXISTS', whk) == 0 then
      redis.call('HSET', whk, 'rid', rid, 'app', app, 'url', wh, 'rmeta', rmeta,
                 'rbody', rbody, 'attempts', 0, 'created', now)
      redis.call('ZADD', p .. ':wh', now, rid)
    end
  end
end
local function enqueue(p, rid, jk, app, prio, seq, sub, dl)
  redis.call('ZADD', p .. ':q:' .. app .. ':' .. prio, seq, rid)
  redis.call('ZADD', p .. ':qt:' .. app, sub, rid)
  if dl and dl ~= '' then redis.call('ZADD', p .. ':deadlines', dl, rid) end
  redis.call('SADD', p .. ':apps', app)
end
"""

_SCRIPTS = {
    # ARGV: p rid app prio sub dl wh attempts meta body max_queued
    # -> queue position, -1 if duplicate, -2 if the app has max_queued (> 0) queued jobs
    "submit": """
local p, rid, app, prio = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. ':j:' .. rid
if redis.call('EXISTS', jk) == 1 then return -1 end
local max_queued = tonumber(ARGV[11])
if max_queued > 0 and redis.call('ZCARD', p .. ':q:' .. app .. ':0')
    + redis.call('ZCARD', p .. ':q:' .. app .. ':1') >= max_queued then
  return -2
end
local seq = redis.call('INCR', p .. ':seq')
redis.call('HSET', jk, 'state', 0, 'app', app, 'prio', prio, 'seq', seq, 'sub', ARGV[5],
           'dl', ARGV[6], 'wh', ARGV[7], 'attempts', ARGV[8], 'meta', ARGV[9], 'body', ARGV[10])
enqueue(p, rid, jk, app, prio, seq, ARGV[5], ARGV[6])
local position = redis.call('ZCARD', p .. ':q:' .. app .. ':' .. prio) - 1
if prio == '1' then position = position + redis.call('ZCARD', p .. ':q:' .. app .. ':0') end
return position
""",
    # ARGV: p app holder lease_until -> {rid, meta, body, attempts} or nil
    "lease": """
local p, app = ARGV[1], ARGV[2]
for prio = 0, 1 do
  local popped = redis.call('ZPOPMIN', p .. ':q:' .. app .. ':' .. prio)
  if popped[1] then
    local rid = popped[1]
    local jk = p .. ':j:' .. rid
    redis.call('HSET', jk, 'state', 1, 'holder', ARGV[3], 'lease', ARGV[4])
    redis.call('ZREM', p .. ':qt:' .. app, rid)
    redis.call('ZREM', p .. ':deadlines', rid)
    redis.call('ZADD', p .. ':leases', ARGV[4], rid)
    redis.call('SADD', p .. ':ip:' .. app, rid)
    local f = redis.call('HMGET', jk, 'meta', 'body', 'attempts')
    return {rid, f[1], f[2], f[3]}
  end
end
return false
""",
    # ARGV: p rid holder lease_until -> 0 lost, 1 held, 2 held + cancel requested
    "renew": """
local p, rid = ARGV[1], ARGV[2]
local jk = p .. ':j:' .. rid
local f = redis.call('HMGET', jk, 'state', 'holder', 'cancel')
if f[1] ~= '1' or f[2] ~= ARGV[3] then return 0 end
redis.call('HSET', jk, 'lease', ARGV[4])
redis.call('ZADD', p .. ':leases', ARGV[4], rid)
if f[3] == '1' then return 2 end
return 1
""",
    # ARGV: p rid holder attempts -> 1 if recorded (raises the count only, for the holder only)
    "note_attempts": """
local jk = ARGV[1] .. ':j:' .. ARGV[2]
local f = redis.call('HMGET', jk, 'state', 'holder', 'attempts')
if f[1] ~= '1' or f[2] ~= ARGV[3] then return 0 end
if tonumber(f[3] or '0') < tonumber(ARGV[4]) then redis.call('HSET', jk, 'attempts', ARGV[4]) end
return 1
""",
    # ARGV: p rid holder rmeta rbody now ttl_ms -> app id, or nil if the lease is not held
    "complete": """
local p, rid = ARGV[1], ARGV[2]
local jk = p .. ':j:' .. rid
local f = redis.call('HMGET', jk, 'state', 'holder', 'app', 'wh')
if f[1] ~= '1' or f[2] ~= ARGV[3] then return false end
finish(p, rid, jk, f[3], f[4], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return f[3]
""",
    # ARGV: p rid holder increment -> app id, or nil if the lease is not held
    "requeue": """
local p, rid = ARGV[1], ARGV[2]
local jk = p .. ':j:' .. rid
local f = redis.call('HMGET', jk, 'state', 'holder', 'app', 'prio', 'seq', 'sub', 'dl')
if f[1] ~= '1' or f[2] ~= ARGV[3] then return false end
redis.call('HSET', jk, 'state', 0)
redis.call('HDEL', jk, 'holder', 'lease')
redis.call('HINCRBY', jk, 'attempts', ARGV[4])
redis.call('ZREM', p .. ':leases', rid)
redis.call('SREM', p .. ':ip:' .. f[3], rid)
enqueue(p, rid, jk, f[3], f[4], f[5], f[6], f[7])
return f[3]
""",
    # ARGV: p rid rmeta rbody now ttl_ms -> {outcome, app}
    "cancel": """
local p, rid = ARGV[1], ARGV[2]
local jk = p .. ':j:' .. rid
local f = redis.call('HMGET', jk, 'state', 'app', 'prio', 'wh')
if not f[1] then return {'NOT_FOUND', ''} end
if f[1] == '2' then return {'ALREADY_COMPLETED', f[2]} end
if f[1] == '0' then
  redis.call('ZREM', p .. ':q:' .. f[2] .. ':' .. f[3], rid)
  redis.call('ZREM', p .. ':qt:' .. f[2], rid)
  redis.call('ZREM', p .. ':deadlines', rid)
  finish(p, rid, jk, f[2], f[4], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  return {'OK', f[2]}
end
redis.call('HSET', jk, 'cancel', 1)
return {'CANCELLATION_REQUESTED', f[2]}
""",
    # ARGV: p rid request_id-exists-check max line... -> 1 if stored
    "logs": """
local p, rid, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local jk = p .. ':j:' .. rid
if redis.call('EXISTS', jk) == 0 then return 0 end
local lk = p .. ':logs:' .. rid
local room = max - redis.call('LLEN', lk)
if room <= 0 then return 0 end
for i = 4, math.min(#ARGV, 3 + room) do redis.call('RPUSH', lk, ARGV[i]) end
local ttl = redis.call('PTTL', jk)
if ttl > 0 then redis.call('PEXPIRE', lk, ttl) end
return 1
""",
    # ARGV: p now limit max_attempts rmeta rbody ttl_ms -> flat list of {requeued 0|1, rid, app}:
    # expired leases go back to the queue, or complete as exhausted at max_attempts
    "expire_leases": """
local p = ARGV[1]
local out = {}
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', p .. ':leases', '-inf', '(' .. ARGV[2],
                                'LIMIT', 0, tonumber(ARGV[3]))) do
  redis.call('ZREM', p .. ':leases', rid)
  local jk = p .. ':j:' .. rid
  local f = redis.call('HMGET', jk, 'state', 'app', 'prio', 'seq', 'sub', 'dl', 'wh')
  if f[1] == '1' then
    local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
    if attempts >= tonumber(ARGV[4]) then
      finish(p, rid, jk, f[2], f[7], ARGV[5], ARGV[6], ARGV[2], ARGV[7])
      table.insert(out, 0)
    else
      redis.call('HSET', jk, 'state', 0)
      redis.call('HDEL', jk, 'holder', 'lease')
      redis.call('SREM', p .. ':ip:' .. f[2], rid)
      enqueue(p, rid, jk, f[2], f[3], f[4], f[5], f[6])
      table.insert(out, 1)
    end
    table.insert(out, rid)
    table.insert(out, f[2])
  end
end
return out
""",
    # ARGV: p now limit rmeta rbody ttl_ms -> list of {rid, app} timed out
    "expire_deadlines": """
local p = ARGV[1]
local done = {}
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', p .. ':deadlines', '-inf', '(' .. ARGV[2],
                                'LIMIT', 0, tonumber(ARGV[3]))) do
  redis.call('ZREM', p .. ':deadlines', rid)
  local jk = p .. ':j:' .. rid
  local f = redis.call('HMGET', jk, 'state', 'app', 'prio', 'wh')
  if f[1] == '0' then
    redis.call('ZREM', p .. ':q:' .. f[2] .. ':' .. f[3], rid)
    redis.call('ZREM', p .. ':qt:' .. f[2], rid)
    finish(p, rid, jk, f[2], f[4], ARGV[4], ARGV[5], ARGV[2], ARGV[6])
    table.insert(done, rid)
    table.insert(done, f[2])
  end
end
return done
""",
    # ARGV: p app limit rmeta rbody now ttl_ms -> request ids of the queued jobs completed
    "fail_queued": """
local p, app = ARGV[1], ARGV[2]
local done = {}
for prio = 0, 1 do
  local q = p .. ':q:' .. app .. ':' .. prio
  local room = tonumber(ARGV[3]) - #done
  local rids = {}
  if room > 0 then rids = redis.call('ZRANGE', q, 0, room - 1) end
  for _, rid in ipairs(rids) do
    local jk = p .. ':j:' .. rid
    redis.call('ZREM', q, rid)
    redis.call('ZREM', p .. ':qt:' .. app, rid)
    redis.call('ZREM', p .. ':deadlines', rid)
    finish(p, rid, jk, app, redis.call('HGET', jk, 'wh'), ARGV[4], ARGV[5], ARGV[6], ARGV[7])
    table.insert(done, rid)
  end
end
return done
""",
    # ARGV: p rid with_body -> {state, app, attempts, cancel, position, rmeta, rbody} or nil
    "view": """
local p, rid = ARGV[1], ARGV[2]
local jk = p .. ':j:' .. rid
local f
if ARGV[3] == '1' then
  f = redis.call('HMGET', jk, 'state', 'app', 'prio', 'attempts', 'cancel', 'rmeta', 'rbody')
else
  f = redis.call('HMGET', jk, 'state', 'app', 'prio', 'attempts', 'cancel', 'rmeta')
end
if not f[1] then return false end
local position = -1
if f[1] == '0' then
  position = redis.call('ZRANK', p .. ':q:' .. f[2] .. ':' .. f[3], rid) or -1
  if f[3] == '1' and position >= 0 then
    position = position + redis.call('ZCARD', p .. ':q:' .. f[2] .. ':0')
  end
end
return {f[1], f[2], f[4] or '0', f[5] or '0', position, f[6] or '', f[7] or ''}
""",
    # ARGV: p app waiting_since -> {queued, waiting, in_progress, oldest or ''}
    "stats": """
local p, app = ARGV[1], ARGV[2]
local queued = redis.call('ZCARD', p .. ':q:' .. app .. ':0')
  + redis.call('ZCARD', p .. ':q:' .. app .. ':1')
local waiting = redis.call('ZCOUNT', p .. ':qt:' .. app, '-inf', ARGV[3])
local in_progress = redis.call('SCARD', p .. ':ip:' .. app)
local oldest = redis.call('ZRANGE', p .. ':qt:' .. app, 0, 0, 'WITHSCORES')
return {queued, waiting, in_progress, oldest[2] or ''}
""",
    # ARGV: p -> app ids with queued or in-progress jobs (forgets the others)
    "apps": """
local p = ARGV[1]
local active = {}
for _, app in ipairs(redis.call('SMEMBERS', p .. ':apps')) do
  if redis.call('ZCARD', p .. ':q:' .. app .. ':0') + redis.call('ZCARD', p .. ':q:' .. app .. ':1')
     + redis.call('SCARD', p .. ':ip:' .. app) > 0 then
    table.insert(active, app)
  else
    redis.call('SREM', p .. ':apps', app)
  end
end
return active
""",
    # ARGV: p id rid app url rmeta rbody attempts due created -> 1
    "enqueue_webhook": """
local p, id = ARGV[1], ARGV[2]
redis.call('HSET', p .. ':wh:' .. id, 'rid', ARGV[3], 'app', ARGV[4], 'url', ARGV[5],
           'rmeta', ARGV[6], 'rbody', ARGV[7], 'attempts', ARGV[8], 'created', ARGV[10])
redis.call('ZADD', p .. ':wh', ARGV[9], id)
return 1
""",
    # ARGV: p now limit hidden_until -> flat list of id rid app url rmeta rbody attempts created;
    # the claim counts as an attempt (the list carries the count before it), so a delivery whose
    # gateway died while posting is the next attempt when it is claimed again
    "lease_webhooks": """
local p = ARGV[1]
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':wh', '-inf', ARGV[2],
                               'LIMIT', 0, tonumber(ARGV[3]))) do
  local f = redis.call('HMGET', p .. ':wh:' .. id, 'rid', 'app', 'url', 'rmeta', 'rbody',
                       'attempts', 'created')
  if f[1] then
    redis.call('ZADD', p .. ':wh', ARGV[4], id)
    redis.call('HINCRBY', p .. ':wh:' .. id, 'attempts', 1)
    table.insert(out, id)
    for i = 1, 7 do table.insert(out, f[i]) end
  else
    redis.call('ZREM', p .. ':wh', id)
  end
end
return out
""",
    # ARGV: p id -> 1
    "ack_webhook": """
redis.call('DEL', ARGV[1] .. ':wh:' .. ARGV[2])
redis.call('ZREM', ARGV[1] .. ':wh', ARGV[2])
return 1
""",
    # ARGV: p id attempts due -> 1 if the delivery still exists
    "reschedule_webhook": """
local whk = ARGV[1] .. ':wh:' .. ARGV[2]
if redis.call('EXISTS', whk) == 0 then return 0 end
redis.call('HSET', whk, 'attempts', ARGV[3])
redis.call('ZADD', ARGV[1] .. ':wh', ARGV[4], ARGV[2])
return 1
""",
}

# Runner slots shared by the gateways (slot_ledger.py). Per runner a hash holder -> slots it holds;
# a holder's counts are only counted while its heartbeat key P:gw:<holder> lives.
_SLOT_LUA = """
local function others(p, key, holder)
  local total = 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    if fields[i] ~= holder then
      if redis.call('EXISTS', p .. ':gw:' .. fields[i]) == 1 then
        total = total + tonumber(fields[i + 1])
      else
        redis.call('HDEL', key, fields[i])
      end
    end
  end
  return total
end
"""

_SLOT_SCRIPTS = {
    # ARGV: p runner holder limit ttl_ms -> {1 claimed | 0 full, slots the other gateways hold}
    "claim_slot": """
local p, holder = ARGV[1], ARGV[3]
local key = p .. ':slots:' .. ARGV[2]
redis.call('SET', p .. ':gw:' .. holder, 1, 'PX', ARGV[5])
local elsewhere = others(p, key, holder)
local own = tonumber(redis.call('HGET', key, holder) or '0')
if own + elsewhere >= tonumber(ARGV[4]) then return {0, elsewhere} end
redis.call('HINCRBY', key, holder, 1)
return {1, elsewhere}
""",
    # ARGV: p runner holder limit channel message -> 1; publishes `message` when the runner was
    # full before this release (someone may be waiting for the slot)
    "release_slot": """
local p, holder = ARGV[1], ARGV[3]
local key = p .. ':slots:' .. ARGV[2]
local own = redis.call('HINCRBY', key, holder, -1)
if own <= 0 then redis.call('HDEL', key, holder); own = 0 end
if own + 1 + others(p, key, holder) >= tonumber(ARGV[4]) then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return 1
""",
    # ARGV: p holder ttl_ms n (runner count)*n m (app sync)*m
    # -> {others per runner..., others per app...}; sets this holder's own counts
    "slot_heartbeat": """
local p, holder = ARGV[1], ARGV[2]
redis.call('SET', p .. ':gw:' .. holder, 1, 'PX', ARGV[3])
local out = {}
local i = 4
for _, kind in ipairs({':slots:', ':sync:'}) do
  local n = tonumber(ARGV[i])
  for j = 1, n do
    local key = p .. kind .. ARGV[i + 2 * j - 1]
    local count = tonumber(ARGV[i + 2 * j])
    if count > 0 then
      redis.call('HSET', key, holder, count)
    else
      redis.call('HDEL', key, holder)
    end
    table.insert(out, others(p, key, holder))
  end
  i = i + 2 * n + 1
end
return out
""",
}

_EXPIRE_BATCH = 1000

DEFAULT_COMMAND_TIMEOUT = 2.0
"""Seconds Redis may stay silent with replies outstanding (or take to connect) before the
connection is dropped and the calls fail (the gateway's ``--redis-timeout``)."""
RECONNECT_BACKOFF_MIN = 0.05
RECONNECT_BACKOFF_MAX = 1.0


class _AutoPipeline(asyncio.Protocol):
    """One Redis connection on which every command issued in a loop turn goes out in one write.

    Commands are packed by hiredis at once; the turn's packed commands are written together on
    the next loop iteration (``call_soon``); replies are parsed by hiredis in ``data_received`` and
    resolve the callers' futures in order, with no coroutine per reply. Several batches may be in
    flight at once (true pipelining). redis-py is used only for the rare paths (script loading,
    pub/sub); this is the hot path (docs/design-decisions.md: redis-py costs ~220 µs per
    request, this design ~10-16 µs).

    Faults are bounded: connecting (TCP, AUTH/SELECT and a PING) must finish within
    ``command_timeout``; while replies are outstanding, a server that sends nothing for
    ``command_timeout`` (stalled, or a dead peer) gets its connection aborted, which fails every
    outstanding call with QueueError; the socket has TCP keepalive. After a failed or aborted
    connection, reconnecting waits a backoff that doubles from `RECONNECT_BACKOFF_MIN` to
    `RECONNECT_BACKOFF_MAX`; calls made meanwhile fail at once (the HTTP layer answers 503).
    """

    def __init__(
        self,
        url: str,
        *,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        address: Callable[[], Awaitable[tuple[str, int]]] | None = None,
    ) -> None:
        self._options: dict[str, Any] = dict(redis.asyncio.connection.parse_url(url))
        self._command_timeout = command_timeout
        self._address = address
        """Where to connect, asked at each (re)connect (Sentinel); None: the URL's host/port."""
        self._progress_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._backoff = RECONNECT_BACKOFF_MIN
        self._retry_at = 0.0
        self._last_error = ""
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._ready = False
        self._parser = hiredis.Reader()
        self._sent: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._outbox: list[bytes] = []
        self._outbox_replies: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, or raises ResponseError/QueueError."""
        reply = self._loop.create_future()
        if self._closed:
            reply.set_exception(queueing.QueueError("the queue store is closed"))
            return reply
        self._outbox.append(hiredis.pack_command(args))
        self._outbox_replies.append(reply)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return reply

    @property
    def connected(self) -> bool:
        return self._ready and self._transport is not None

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox:
            return
        if self._transport is None or not self._ready:
            if self._connecting is None:
                if time.monotonic() < self._retry_at:
                    self._fail_outbox(
                        queueing.QueueError(f"redis unavailable (reconnecting): {self._last_error}")
                    )
                    return
                self._connecting = self._loop.create_task(self._connect())
            return
        self._transport.write(b"".join(self._outbox))
        if not self._sent:
            self._progress_at = time.monotonic()
        self._sent.extend(self._outbox_replies)
        self._outbox, self._outbox_replies = [], []
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._command_timeout, self._check_progress)

    def _check_progress(self) -> None:
        """Abort a connection on which outstanding replies made no progress for too long."""
        self._watchdog = None
        if not self._sent or self._transport is None:
            return
        silent = time.monotonic() - self._progress_at
        if silent < self._command_timeout:
            self._watchdog = self._loop.call_later(
                self._command_timeout - silent, self._check_progress
            )
            return
        self._last_error = f"no reply within {self._command_timeout:g} s"
        LOG.warning("redis sent no reply for %.1f s: dropping the connection", silent)
        self._transport.abort()

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_BACKOFF_MAX)

    async def _connect(self) -> None:
        options = self._options
        try:
            async with asyncio.timeout(self._command_timeout):
                if "path" in options:
                    await self._loop.create_unix_connection(lambda: self, options["path"])
                else:
                    tls = None
                    if options.get("connection_class") is redis.asyncio.connection.SSLConnection:
                        tls = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
                    if self._address is not None:
                        host, port = await self._address()
                    else:
                        host, port = options.get("host", "localhost"), options.get("port", 6379)
                    await self._loop.create_connection(lambda: self, host, port, ssl=tls)
                    _keepalive(self._transport)
                if self._transport is None:
                    raise queueing.QueueError("the connection closed while it was being set up")
                handshake = []
                if options.get("password"):
                    credentials = [options["username"]] if options.get("username") else []
                    handshake.append(self._send_now("AUTH", *credentials, options["password"]))
                if options.get("db"):
                    handshake.append(self._send_now("SELECT", options["db"]))
                handshake.append(self._send_now("PING"))  # a stalled server accepts TCP
                if self._address is not None:
                    handshake.append(self._send_now("ROLE"))
                replies = await asyncio.gather(*handshake)
                if self._address is not None and replies[-1][0] != b"master":
                    raise queueing.QueueError("the Sentinel-named server is not a master")
        except Exception as error:  # any failure fails the waiting calls; the next call retries
            self._last_error = str(error) or type(error).__name__
            self._schedule_retry()
            if self._transport is not None:
                self._transport.abort()
            self._fail_outbox(queueing.QueueError(f"redis unavailable: {self._last_error}"))
            return
        finally:
            self._connecting = None
        self._ready = True
        self._backoff = RECONNECT_BACKOFF_MIN
        self._retry_at = 0.0
        self._flush()

    def _send_now(self, *args: Any) -> asyncio.Future[Any]:
        assert self._transport is not None
        reply = self._loop.create_future()
        self._transport.write(hiredis.pack_command(args))
        self._sent.append(reply)
        return reply

    def _fail_outbox(self, error: Exception) -> None:
        replies, self._outbox_replies, self._outbox = self._outbox_replies, [], []
        for reply in replies:
            if not reply.done():
                reply.set_exception(error)

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self._transport = typing.cast(asyncio.Transport, transport)
        self._parser = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self._progress_at = time.monotonic()
        self._parser.feed(data)
        while (response := self._parser.gets()) is not False:
            reply = self._sent.popleft()
            if reply.done():
                continue
            if isinstance(response, hiredis.ReplyError):
                message = str(response)
                if message.startswith("READONLY") and self._transport is not None:
                    # The master was demoted (failover): find the new one.
                    self._last_error = message
                    self._loop.call_soon(self._drop)
                error_class = (
                    redis.exceptions.NoScriptError
                    if message.startswith("NOSCRIPT")
                    else redis.exceptions.ResponseError
                )
                reply.set_exception(error_class(message))
            else:
                reply.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._ready and not self._closed:
            self._schedule_retry()
            self._last_error = str(exc or self._last_error or "connection closed")
        self._ready = False
        failure = queueing.QueueError(f"redis connection lost: {exc or self._last_error}")
        sent, self._sent = self._sent, collections.deque()
        for reply in sent:
            if not reply.done():
                reply.set_exception(failure)
        if self._outbox and not self._closed and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def close(self) -> None:
        """Send what is queued, wait for the replies, close the connection."""
        if self._outbox and not self._flush_scheduled:
            self._flush()
        pending = [*self._sent, *self._outbox_replies]
        self._closed = True
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        if self._connecting is not None:
            self._connecting.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.close()


def _keepalive(transport: asyncio.BaseTransport | None) -> None:
    """TCP keepalive on the connection, so a vanished server (host down, network cut) is noticed
    even while nothing is outstanding: probes after 10 s idle, every 5 s, 3 unanswered = dead."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class RedisQueueStore:
    """`queueing.QueueStore` on a Redis server shared by several gateways (module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        url: str,
        prefix: str,
        result_ttl: float,
        max_logs_per_job: int,
        share_completions: bool,
        max_attempts: int = queueing.DEFAULT_MAX_ATTEMPTS,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        address: Callable[[], Awaitable[tuple[str, int]]] | None = None,
    ) -> None:
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.result_ttl = result_ttl
        self._client = client
        self._prefix = "{" + prefix + "}"
        self._ttl_ms = max(1, int(result_ttl * 1000))
        self._max_logs_per_job = max_logs_per_job
        self._share_completions = share_completions
        self._command_timeout = command_timeout
        self._pipeline = _AutoPipeline(url, command_timeout=command_timeout, address=address)
        self._shas: dict[str, str] = {}
        self._events = queueing.EventHub()
        self._origin = uuid.uuid4().hex.encode()
        self._channel = (self._prefix + ":events").encode()
        self._outgoing: dict[queueing.QueueEvent, None] = {}
        self._publisher: asyncio.Handle | None = None
        self._listener: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._closed = False
        self.slot_listeners: list[Callable[[str, str], None]] = []
        """Called with (app id, runner id) when another gateway frees a slot of a full runner."""

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = "kubefal",
        result_ttl: float = 3600.0,
        max_logs_per_job: int = 1000,
        housekeeping_interval: float | None = 1.0,
        share_completions: bool = False,
        max_attempts: int = queueing.DEFAULT_MAX_ATTEMPTS,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> RedisQueueStore:
        """Connect to ``url``, load the scripts, start listening.

        ``url`` is ``redis://[user:pass@]host:port/db`` (or ``rediss://``, ``unix://``), or
        ``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]`` to find the master
        of ``service`` through those Sentinels (asked again at every reconnect, so a failover is
        followed; the credentials are the master's, ``?sentinel_password=`` the Sentinels').
        ``command_timeout`` bounds connecting and each wait for a reply (see `_AutoPipeline`).
        """
        address: Callable[[], Awaitable[tuple[str, int]]] | None = None
        client: redis.asyncio.Redis
        # redis-py serves the event subscription only (a blocking read, so no read timeout).
        if url.startswith(SENTINEL_SCHEME + "://"):
            sentinel, service, url = _sentinel(url, command_timeout)
            client = sentinel.master_for(
                service,
                decode_responses=False,
                socket_connect_timeout=command_timeout,
                socket_keepalive=True,
            )

            async def address() -> tuple[str, int]:
                host, port = await sentinel.discover_master(service)
                return str(host), int(port)

        else:
            client = redis.asyncio.Redis.from_url(
                url,
                decode_responses=False,
                socket_connect_timeout=command_timeout,
                socket_keepalive=True,
            )
        store = cls(
            client,
            address=address,
            url=url,
            prefix=prefix,
            result_ttl=result_ttl,
            max_logs_per_job=max_logs_per_job,
            share_completions=share_completions,
            max_attempts=max_attempts,
            command_timeout=command_timeout,
        )
        try:
            await store._load_scripts()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(store._channel)
        except (redis.exceptions.RedisError, OSError, queueing.QueueError) as error:
            await store._pipeline.close()
            await client.aclose()
            raise queueing.QueueError(f"cannot open the Redis queue store: {error}") from error
        store._listener = asyncio.create_task(store._listen(pubsub), name="kubefal-queue-events")
        if housekeeping_interval is not None:
            store._housekeeping = asyncio.create_task(
                store._housekeep(housekeeping_interval), name="kubefal-queue-housekeeping"
            )
        return store

    async def _load_scripts(self) -> None:
        bodies = {name: _FINISH + body for name, body in _SCRIPTS.items()}
        bodies.update({name: _SLOT_LUA + body for name, body in _SLOT_SCRIPTS.items()})
        replies = [self._pipeline.call("SCRIPT", "LOAD", body) for body in bodies.values()]
        for name, reply in zip(bodies, replies, strict=True):
            sha = await reply
            self._shas[name] = sha if isinstance(sha, str) else sha.decode()

    async def ping(self) -> None:
        """Raise QueueError unless Redis answers a PING within the command timeout."""
        if self._closed:
            raise queueing.QueueError("the queue store is closed")
        try:
            async with asyncio.timeout(self._command_timeout):
                await self._pipeline.call("PING")
        except TimeoutError:
            raise queueing.QueueError("redis did not answer PING in time") from None
        except redis.exceptions.ResponseError as error:
            raise queueing.QueueError(f"redis PING failed: {error}") from error

    async def _script(self, name: str, *args: Any) -> Any:
        """Run a script through the auto-pipeline (reloading the scripts after a Redis restart)."""
        if self._closed:
            raise queueing.QueueError("the queue store is closed")
        try:
            return await self._pipeline.call("EVALSHA", self._shas[name], 0, self._prefix, *args)
        except redis.exceptions.NoScriptError:
            try:
                await self._load_scripts()
            except redis.exceptions.RedisError as error:
                raise queueing.QueueError(f"redis unavailable: {error}") from error
            return await self._pipeline.call("EVALSHA", self._shas[name], 0, self._prefix, *args)
        except redis.exceptions.ResponseError as error:
            raise queueing.QueueError(f"redis script {name} failed: {error}") from error

    # ------------------------------------------------------------------ events

    def _emit(self, event: queueing.QueueEvent, *, share: bool = True) -> None:
        """Deliver ``event`` to local subscribers now and to other gateways this loop turn."""
        self._events.publish(event)
        if not share:
            return
        self._outgoing[event] = None
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().call_soon(self._publish_outgoing)

    def _publish_outgoing(self) -> None:
        self._publisher = None
        events, self._outgoing = self._outgoing, {}
        if self._closed:
            return
        for event in events:
            message = b"\0".join(
                (
                    self._origin,
                    event.kind.value.encode(),
                    event.app_id.encode(),
                    event.request_id.encode(),
                )
            )
            self._pipeline.call("PUBLISH", self._channel, message).add_done_callback(_ignore)

    async def _listen(self, pubsub: redis.asyncio.client.PubSub) -> None:
        """Relay other gateways' events; on a lost connection resubscribe and send RESYNC."""
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                close_pubsub: Callable[[], Awaitable[None]] = pubsub.aclose
                with contextlib.suppress(Exception):
                    await close_pubsub()
                raise
            except (redis.exceptions.RedisError, OSError) as error:
                LOG.warning("queue event subscription lost (%s); resubscribing", error)
                self._events.publish(queueing.QueueEvent(kind=queueing.EventKind.RESYNC))
                await asyncio.sleep(0.5)
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await pubsub.subscribe(self._channel)
                continue
            if message is None or message.get("type") != "message":
                continue
            parts = message["data"].split(b"\0")
            if len(parts) != 4 or parts[0] == self._origin:
                continue
            if parts[1] == _SLOT_FREED:
                for listener in self.slot_listeners:
                    listener(parts[2].decode(), parts[3].decode())
                continue
            try:
                kind = queueing.EventKind(parts[1].decode())
            except ValueError:
                continue
            self._events.publish(
                queueing.QueueEvent(
                    kind=kind, app_id=parts[2].decode(), request_id=parts[3].decode()
                )
            )

    def subscribe(
        self,
        *,
        max_pending: int = 10_000,
        accept: Callable[[queueing.QueueEvent], bool] | None = None,
    ) -> queueing.EventSubscription:
        return self._events.subscribe(max_pending=max_pending, accept=accept)

    # ------------------------------------------------------------------ jobs

    async def submit(self, job: queueing.Job, *, max_queued: int = 0) -> int:
        position: int = await self._script(
            "submit",
            job.request_id,
            job.app_id,
            int(job.priority),
            repr(job.submitted_at),
            "" if job.start_deadline is None else repr(job.start_deadline),
            job.webhook_url or "",
            job.attempts,
            store_codec.encode_job_meta(job),
            job.body,
            max_queued,
        )
        if position == -2:
            raise queueing.QueueFullError(job.app_id, max_queued)
        if position < 0:
            raise queueing.DuplicateRequestError(job.request_id)
        self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=job.app_id))
        return position

    async def view(
        self, request_id: str, *, with_logs: bool = False, with_body: bool = False
    ) -> queueing.JobView | None:
        reply = self._script("view", request_id, 1 if with_body else 0)
        logs = (
            self._pipeline.call("LRANGE", self._logs_key(request_id), 0, -1) if with_logs else None
        )
        try:
            fields = await reply
            lines = None if logs is None else await logs
        except redis.exceptions.ResponseError as error:
            raise queueing.QueueError(f"redis LRANGE failed: {error}") from error
        if fields is None:
            return None
        state_raw, app_raw, attempts, cancel, position, result_meta, result_body = fields
        state = _STATES[state_raw]
        result = None
        if state is queueing.JobState.COMPLETED:
            result = store_codec.decode_result(result_meta, result_body)
        return queueing.JobView(
            request_id=request_id,
            app_id=app_raw.decode(),
            state=state,
            queue_position=position if position >= 0 else None,
            logs=None
            if lines is None
            else tuple(store_codec.decode_log_line(line) for line in lines),
            result=result,
            cancel_requested=cancel == b"1",
            attempts=int(attempts),
        )

    def _logs_key(self, request_id: str) -> str:
        return f"{self._prefix}:logs:{request_id}"

    async def queue_position(self, request_id: str) -> int | None:
        view = await self.view(request_id)
        return None if view is None else view.queue_position

    async def lease(
        self,
        app_id: str,
        *,
        holder: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> queueing.Job | None:
        now = time.time() if now is None else now
        while True:
            reply = await self._script("lease", app_id, holder, repr(now + lease_seconds))
            if reply is None:
                return None
            request_id_raw, meta, body, attempts = reply
            request_id = request_id_raw.decode()
            job = store_codec.decode_job(request_id, meta, body or b"", int(attempts))
            if job.start_deadline is not None and job.start_deadline < now:
                await self.complete(
                    request_id,
                    holder=holder,
                    result=queueing.start_timeout_result(now=now),
                    now=now,
                )
                continue
            return job

    async def renew(
        self,
        request_id: str,
        *,
        holder: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> queueing.LeaseStatus:
        now = time.time() if now is None else now
        status = await self._script("renew", request_id, holder, repr(now + lease_seconds))
        if status == 2:
            return queueing.LeaseStatus.CANCEL_REQUESTED
        return queueing.LeaseStatus.HELD if status == 1 else queueing.LeaseStatus.LOST

    async def note_attempts(self, request_id: str, *, holder: str, attempts: int) -> None:
        await self._script("note_attempts", request_id, holder, attempts)

    async def complete(
        self,
        request_id: str,
        *,
        holder: str,
        result: queueing.Result,
        now: float | None = None,
    ) -> bool:
        now = time.time() if now is None else now
        app_id = await self._script(
            "complete",
            request_id,
            holder,
            store_codec.encode_result_meta(result),
            result.body,
            repr(now),
            self._ttl_ms,
        )
        if app_id is None:
            return False
        self._emit_completed(app_id.decode(), request_id)
        return True

    def _emit_completed(self, app_id: str, request_id: str) -> None:
        self._emit(
            queueing.QueueEvent(
                kind=queueing.EventKind.COMPLETED, app_id=app_id, request_id=request_id
            ),
            share=self._share_completions,
        )

    async def requeue(
        self,
        request_id: str,
        *,
        holder: str,
        reason: str,
        count_attempt: bool = True,
    ) -> bool:
        app_id = await self._script("requeue", request_id, holder, 1 if count_attempt else 0)
        if app_id is None:
            return False
        LOG.debug("requeued %s (%s)", request_id, reason)
        self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=app_id.decode()))
        return True

    async def cancel(self, request_id: str, *, now: float | None = None) -> queueing.CancelOutcome:
        now = time.time() if now is None else now
        result = queueing.cancelled_result(now=now)
        outcome_raw, app_raw = await self._script(
            "cancel",
            request_id,
            store_codec.encode_result_meta(result),
            result.body,
            repr(now),
            self._ttl_ms,
        )
        outcome = queueing.CancelOutcome(outcome_raw.decode())
        if outcome is queueing.CancelOutcome.OK:
            self._emit_completed(app_raw.decode(), request_id)
        elif outcome is queueing.CancelOutcome.CANCELLATION_REQUESTED:
            self._emit(
                queueing.QueueEvent(
                    kind=queueing.EventKind.CANCEL_REQUESTED,
                    app_id=app_raw.decode(),
                    request_id=request_id,
                )
            )
        return outcome

    async def append_logs(self, request_id: str, lines: Sequence[queueing.LogLine]) -> None:
        if not lines:
            return
        await self._script(
            "logs",
            request_id,
            self._max_logs_per_job,
            *(store_codec.encode_log_line(line) for line in lines),
        )

    async def expire(self, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        timeout = queueing.start_timeout_result(now=now)
        exhausted = queueing.attempts_exhausted_result(max_attempts=self.max_attempts, now=now)
        leases = self._script(
            "expire_leases",
            repr(now),
            _EXPIRE_BATCH,
            self.max_attempts,
            store_codec.encode_result_meta(exhausted),
            exhausted.body,
            self._ttl_ms,
        )
        deadlines = self._script(
            "expire_deadlines",
            repr(now),
            _EXPIRE_BATCH,
            store_codec.encode_result_meta(timeout),
            timeout.body,
            self._ttl_ms,
        )
        expired: list[Any] = await leases
        timed_out: list[bytes] = await deadlines
        requeued_apps: dict[str, None] = {}
        for index in range(0, len(expired), 3):
            requeued, request_id, app_id = expired[index : index + 3]
            if requeued:
                requeued_apps[app_id.decode()] = None
            else:
                LOG.warning("job %s used up its attempts", request_id.decode())
                self._emit_completed(app_id.decode(), request_id.decode())
        for app_id in requeued_apps:
            self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=app_id))
        for index in range(0, len(timed_out), 2):
            self._emit_completed(timed_out[index + 1].decode(), timed_out[index].decode())
        return len(expired) // 3 + len(timed_out) // 2

    async def fail_queued(
        self, app_id: str, result: queueing.Result, *, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        meta = store_codec.encode_result_meta(result)
        total = 0
        while True:
            done: list[bytes] = await self._script(
                "fail_queued", app_id, _EXPIRE_BATCH, meta, result.body, repr(now), self._ttl_ms
            )
            for request_id in done:
                self._emit_completed(app_id, request_id.decode())
            total += len(done)
            if len(done) < _EXPIRE_BATCH:
                return total

    async def stats(self, app_id: str, *, waiting_since: float) -> queueing.AppQueueStats:
        queued, waiting, in_progress, oldest = await self._script(
            "stats", app_id, repr(waiting_since)
        )
        return queueing.AppQueueStats(
            app_id=app_id,
            queued=queued,
            queued_waiting=waiting,
            in_progress=in_progress,
            oldest_queued_at=float(oldest) if oldest else None,
        )

    async def apps(self) -> list[str]:
        active: list[bytes] = await self._script("apps")
        return sorted(app_id.decode() for app_id in active)

    # ------------------------------------------------------------------ webhook outbox

    async def enqueue_webhook(
        self, delivery: queueing.WebhookDelivery, *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        await self._script(
            "enqueue_webhook",
            delivery.delivery_id,
            delivery.request_id,
            delivery.app_id,
            delivery.url,
            store_codec.encode_result_meta(delivery.result),
            delivery.result.body,
            delivery.attempts,
            repr(now),
            repr(delivery.created_at or now),
        )

    async def lease_webhooks(
        self, *, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[queueing.WebhookDelivery]:
        now = time.time() if now is None else now
        flat = await self._script("lease_webhooks", repr(now), limit, repr(now + lease_seconds))
        deliveries = []
        for index in range(0, len(flat), 8):
            delivery_id, request_id, app_id, url, rmeta, rbody, attempts, created = flat[
                index : index + 8
            ]
            deliveries.append(
                queueing.WebhookDelivery(
                    delivery_id=delivery_id.decode(),
                    request_id=request_id.decode(),
                    app_id=app_id.decode(),
                    url=url.decode(),
                    result=store_codec.decode_result(rmeta, rbody),
                    attempts=int(attempts),
                    created_at=float(created),
                )
            )
        return deliveries

    async def ack_webhook(self, delivery_id: str) -> None:
        await self._script("ack_webhook", delivery_id)

    async def reschedule_webhook(self, delivery_id: str, *, attempts: int, due_at: float) -> None:
        await self._script("reschedule_webhook", delivery_id, attempts, repr(due_at))

    # ------------------------------------------------------------------ shared runner slots

    async def claim_slot(
        self, runner_id: str, *, holder: str, limit: int, ttl: float
    ) -> tuple[bool, int]:
        """Take one of ``limit`` slots of a runner for ``holder`` unless all gateways together
        hold them already (atomic). Returns (claimed, slots the other live gateways hold)."""
        claimed, elsewhere = await self._script(
            "claim_slot", runner_id, holder, limit, max(1, int(ttl * 1000))
        )
        return bool(claimed), int(elsewhere)

    def release_slot(self, runner_id: str, app_id: str, *, holder: str, limit: int) -> None:
        """Give a slot back (fire and forget: a lost release is repaired by the heartbeat)."""
        if self._closed:
            return
        message = b"\0".join((self._origin, _SLOT_FREED, app_id.encode(), runner_id.encode()))
        self._pipeline.call(
            "EVALSHA",
            self._shas["release_slot"],
            0,
            self._prefix,
            runner_id,
            holder,
            limit,
            self._channel,
            message,
        ).add_done_callback(_ignore)

    async def slot_heartbeat(
        self,
        *,
        holder: str,
        ttl: float,
        runner_slots: Sequence[tuple[str, int]],
        app_sync: Sequence[tuple[str, int]],
    ) -> tuple[list[int], list[int]]:
        """Keep ``holder`` alive for ``ttl`` s and set its own counts (slots per runner, sync
        requests per app); returns what the other live gateways hold, in the same order."""
        arguments: list[Any] = [len(runner_slots)]
        for runner_id, count in runner_slots:
            arguments += [runner_id, count]
        arguments.append(len(app_sync))
        for app_id, count in app_sync:
            arguments += [app_id, count]
        totals: list[int] = await self._script(
            "slot_heartbeat", holder, max(1, int(ttl * 1000)), *arguments
        )
        return totals[: len(runner_slots)], totals[len(runner_slots) :]

    # ------------------------------------------------------------------ lifecycle

    async def _housekeep(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.expire()
            except queueing.QueueError as error:
                LOG.warning("queue housekeeping failed: %s", error)

    async def flush_key_space(self) -> None:
        """Delete every key of this store's prefix (tests and `kubefal` dev tooling only)."""
        keys = [key async for key in self._client.scan_iter(match=f"{self._prefix}:*")]
        if keys:
            await self._client.delete(*keys)

    async def close(self) -> None:
        if self._closed:
            return
        if self._publisher is not None:
            self._publisher.cancel()
            self._publish_outgoing()
        self._closed = True
        for task in (self._housekeeping, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._pipeline.close()
        self._events.close()
        await self._client.aclose()


_SLOT_FREED = b"SLOT_FREED"
SENTINEL_SCHEME = "redis+sentinel"


def _sentinel(url: str, timeout: float) -> tuple[redis.asyncio.sentinel.Sentinel, str, str]:
    """(Sentinel client, service name, the master's plain URL without host) of a
    ``redis+sentinel://`` URL."""
    parsed = urllib.parse.urlsplit(url)
    credentials, _, hosts = parsed.netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for entry in hosts.split(","):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise queueing.QueueError(f"Sentinel address {entry!r} must be host:port")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [part for part in parsed.path.split("/") if part]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise queueing.QueueError("a redis+sentinel URL's path is /service or /service/db")
    query = urllib.parse.parse_qs(parsed.query)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][-1]
    sentinel = redis.asyncio.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    if credentials:
        user, _, password = credentials.partition(":")
        sentinel.connection_kwargs["username"] = urllib.parse.unquote(user) or None
        sentinel.connection_kwargs["password"] = urllib.parse.unquote(password) or None
    db = parts[1] if len(parts) == 2 else "0"
    sentinel.connection_kwargs["db"] = int(db)
    master_url = f"redis://{credentials + '@' if credentials else ''}sentinel-master/{db}"
    return sentinel, parts[0], master_url


def _ignore(reply: asyncio.Future[Any]) -> None:
    """Consume a fire-and-forget reply (event publication is best effort)."""
    if not reply.cancelled():
        reply.exception()
