"""The Lua scripts of the Redis queue store: every state change of a job is one script.

Why a module of its own: the scripts are the store's data model (the key layout is in
`kubefal_gateway.stores.redis_store`'s docstring) and its atomicity argument, and they are read
and reviewed apart from the Python that calls them. Each script runs atomically on the server, so
``lease`` pops the head of an app's queue and records the lease in one step (no job is leased
twice), ``complete`` checks the lease holder and stores the result in one step (exactly-once
completion), ``expire`` returns a dead gateway's expired leases to the queue. `bodies` is what the
store loads with ``SCRIPT LOAD``. This module is over 500 lines because it is Lua text: one script
per store operation, each next to the comment that documents its arguments and reply.
"""

from __future__ import annotations

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
    # ARGV: p rid app prio sub dl wh attempts meta body max_queued owner ('' without a key)
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
           'dl', ARGV[6], 'wh', ARGV[7], 'attempts', ARGV[8], 'meta', ARGV[9], 'body', ARGV[10],
           'owner', ARGV[12])
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
    # ARGV: p rid with_body -> {state, app, attempts, cancel, position, rmeta, rbody, owner} or
    # nil; owner '' for a job submitted without a key. A job stored before jobs had an owner
    # field has its submitter in the caller header of its meta.
    "view": """
local p, rid = ARGV[1], ARGV[2]
local jk = p .. ':j:' .. rid
local f
if ARGV[3] == '1' then
  f = redis.call('HMGET', jk, 'state', 'app', 'prio', 'attempts', 'cancel', 'owner', 'rmeta',
                 'rbody')
else
  f = redis.call('HMGET', jk, 'state', 'app', 'prio', 'attempts', 'cancel', 'owner', 'rmeta')
end
if not f[1] then return false end
local owner = f[6]
if not owner then
  owner = ''
  local meta = redis.call('HGET', jk, 'meta')
  if meta then
    for _, h in ipairs(cjson.decode(meta)['h']) do
      if h[1] == 'x-kubefal-caller' then owner = h[2] end
    end
  end
end
local position = -1
if f[1] == '0' then
  position = redis.call('ZRANK', p .. ':q:' .. f[2] .. ':' .. f[3], rid) or -1
  if f[3] == '1' and position >= 0 then
    position = position + redis.call('ZCARD', p .. ':q:' .. f[2] .. ':0')
  end
end
return {f[1], f[2], f[4] or '0', f[5] or '0', position, f[7] or '', f[8] or '', owner}
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


def bodies() -> dict[str, str]:
    """Script name -> the full Lua source to ``SCRIPT LOAD`` (each with its shared helpers)."""
    loaded = {name: _FINISH + body for name, body in _SCRIPTS.items()}
    loaded.update({name: _SLOT_LUA + body for name, body in _SLOT_SCRIPTS.items()})
    return loaded
