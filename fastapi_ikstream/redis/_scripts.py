"""The store's Lua scripts, registered with redis-py (which loads them again if Redis lost them).

Every write to a run (the events, the trim, the expiry and the meta hash) is one script, so
readers never see an event without its meta data or the other way round.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["Scripts"]

# KEYS: stream, meta, lease, active. Appends (seq, type, data, status) quadruples found in
# ``argv`` from index ``start``; skips seqs already stored, trims before a jump, ends the run
# on ``done``. Returns the last stored seq, -1 if the run had ended, -2 if it is unknown.
_APPEND_FUNCTION = """
local function append_events(keys, run_id, maxlen, ret_ms, live_ms, argv, start)
  local m = redis.call('HMGET', keys[2], 'finished', 'last_seq', 'first_seq', 'maxbytes', 'bytes')
  if not m[1] then return -2 end
  if m[1] == '1' then return -1 end
  local last = tonumber(m[2])
  local first = tonumber(m[3])
  local maxbytes = tonumber(m[4] or '0')
  local total = tonumber(m[5] or '0')
  local trim_to = false
  local latest = false
  local status = false
  local done = false
  for i = start, #argv, 4 do
    local seq = tonumber(argv[i])
    if seq > last then
      if seq > last + 1 then
        trim_to = argv[i]
        first = seq
        total = 0
      end
      if maxbytes > 0 then
        if redis.call('XLEN', keys[1]) >= tonumber(maxlen) then
          local old = redis.call('XRANGE', keys[1], '-', '+', 'COUNT', 1)
          if old[1] then total = total - string.len(old[1][2][4]) end
        end
        total = total + string.len(argv[i + 2])
      end
      redis.call('XADD', keys[1], 'MAXLEN', maxlen, argv[i] .. '-0',
        'type', argv[i + 1], 'data', argv[i + 2])
      last = seq
      if argv[i + 3] ~= '' then status = argv[i + 3] end
      if argv[i + 1] == 'done' then
        done = true
        break
      end
      latest = argv[i + 2]
    end
  end
  if trim_to then redis.call('XTRIM', keys[1], 'MINID', trim_to .. '-0') end
  if maxbytes > 0 then
    if total > maxbytes then
      local target = maxbytes - math.floor(maxbytes / 4)
      local n = redis.call('XLEN', keys[1])
      while total > target and n > 2 do
        local batch = redis.call('XRANGE', keys[1], '-', '+', 'COUNT', math.min(64, n - 2))
        for _, e in ipairs(batch) do
          total = total - string.len(e[2][4])
          redis.call('XDEL', keys[1], e[1])
          n = n - 1
          first = tonumber(string.match(e[1], '^(%d+)')) + 1
          if total <= target or n <= 2 then break end
        end
      end
    end
    redis.call('HSET', keys[2], 'bytes', string.format('%d', total))
  end
  local floor = last - tonumber(maxlen) + 1
  if floor > first then first = floor end
  redis.call('HSET', keys[2], 'last_seq', string.format('%d', last),
    'first_seq', string.format('%d', first))
  if status then redis.call('HSET', keys[2], 'status', status) end
  if latest then redis.call('HSET', keys[2], 'latest', latest) end
  if done then
    redis.call('HSET', keys[2], 'finished', '1')
    local holder = redis.call('HGET', keys[2], 'holder')
    if holder then redis.call('ZREM', holder, run_id) end
    redis.call('PEXPIRE', keys[1], ret_ms)
    redis.call('PEXPIRE', keys[2], ret_ms)
    redis.call('DEL', keys[3])
    redis.call('ZREM', keys[4], run_id)
  else
    redis.call('PEXPIRE', keys[1], live_ms)
    redis.call('PEXPIRE', keys[2], live_ms)
  end
  return last
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# ARGV: run_id, maxlen, retention ms, live ttl ms, events...
_APPEND = (
    _APPEND_FUNCTION + "return append_events(KEYS, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV, 5)"
)

# ARGV: run_id, expected last seq, maxlen, retention ms, live ttl ms, events...
_ORPHAN = (
    _APPEND_FUNCTION
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local m = redis.call('HMGET', KEYS[2], 'finished', 'last_seq')
if (not m[1]) or m[1] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 0
end
if tonumber(m[2]) ~= tonumber(ARGV[2]) then return 0 end
if append_events(KEYS, ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV, 6) > 0 then return 1 end
return 0
"""
)

# KEYS: stream, meta, lease, active. ARGV: run_id, owner, principal, has principal, lease ms,
# live ttl ms, attached ('1'/'0'), holder key ('' for none), max active (0 for no bound),
# meta key prefix, max bytes per run (0 for no bound). Returns 1 created, 0 exists, -1 the
# holder has max active unfinished runs.
# The holder's sorted set lists its unfinished runs: the append script removes a run from it
# with ``done``, whatever wrote it (the run's end, a cancel, shutdown, an orphan sweep), and
# members whose meta hash is gone or finished are dropped here.
_CREATE = (
    _APPEND_FUNCTION
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local holder = ARGV[8]
if holder ~= '' then
  local bound = tonumber(ARGV[9])
  if bound > 0 then
    local live = 0
    for _, rid in ipairs(redis.call('ZRANGE', holder, 0, -1)) do
      local f = redis.call('HGET', ARGV[10] .. rid, 'finished')
      if (not f) or f == '1' then redis.call('ZREM', holder, rid) else live = live + 1 end
    end
    if live >= bound then return -1 end
  end
  redis.call('ZADD', holder, now_ms(), ARGV[1])
  redis.call('PEXPIRE', holder, ARGV[6])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'status', 'received', 'last_seq', '0', 'first_seq', '1',
  'finished', '0', 'cancel', '0', 'watchers', '0', 'owner', ARGV[2], 'attached', ARGV[7],
  'created', now_ms())
if holder ~= '' then redis.call('HSET', KEYS[2], 'holder', holder) end
if tonumber(ARGV[11]) > 0 then redis.call('HSET', KEYS[2], 'maxbytes', ARGV[11], 'bytes', '0') end
if ARGV[4] == '1' then redis.call('HSET', KEYS[2], 'principal', ARGV[3]) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[5]), ARGV[1])
return 1
"""
)

# KEYS: stream, meta, lease, active. ARGV: run_id, owner, lease ms, live ttl ms.
# Returns {0} unknown, {1} finished, {2} owned elsewhere, {3, cancel flag, reason}.
_REFRESH = (
    _APPEND_FUNCTION
    + """
local f = redis.call('HMGET', KEYS[2], 'finished', 'owner', 'cancel', 'cancel_reason')
if not f[1] then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {0}
end
if f[1] == '1' then return {1} end
if f[2] ~= ARGV[2] then return {2} end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[3]), ARGV[1])
return {3, f[3] or '0', f[4] or ''}
"""
)

# KEYS: active. ARGV: limit. The unfinished runs whose lease should have lapsed.
_DUE = (
    _APPEND_FUNCTION
    + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, ARGV[1])"
)

# KEYS: meta. ARGV: reason, channel, notice.
_CANCEL = """
local f = redis.call('HGET', KEYS[1], 'finished')
if (not f) or f == '1' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1', 'cancel_reason', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# KEYS: meta. ARGV: this worker's readers of the run, its field (``w:{worker id}``), worker
# key prefix. Each worker sets its own count (a value, not an increment: sending it again
# after a lost reply changes nothing), and the sum is over the workers alive (their
# heartbeat key exists), so the readers of a worker that died stop counting once its
# heartbeat lapses.
_WATCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(ARGV[1]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
end
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 2) == 'w:' then
    if name == ARGV[2] or redis.call('EXISTS', ARGV[3] .. string.sub(name, 3)) == 1 then
      total = total + tonumber(fields[i + 1])
    end
  end
end
redis.call('HSET', KEYS[1], 'watchers', total)
return total
"""

# KEYS: meta. ARGV: field, value pairs. Sets them on a run that exists (keeps its expiry).
_KEEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


class Scripts:
    """The scripts of one client; call one as ``await scripts.append(keys=..., args=...)``.

    Inside a pipeline, pass ``client=pipe``: the pipeline loads any script Redis lacks
    before it runs.
    """

    def __init__(self, client: Redis) -> None:
        self.append: AsyncScript = client.register_script(_APPEND)
        self.orphan: AsyncScript = client.register_script(_ORPHAN)
        self.create: AsyncScript = client.register_script(_CREATE)
        self.refresh: AsyncScript = client.register_script(_REFRESH)
        self.due: AsyncScript = client.register_script(_DUE)
        self.cancel: AsyncScript = client.register_script(_CANCEL)
        self.watch: AsyncScript = client.register_script(_WATCH)
        self.keep: AsyncScript = client.register_script(_KEEP)
