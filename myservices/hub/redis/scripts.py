"""The Lua scripts of the Redis engine: each one atomic, so no two processes ever see half an operation.

Keys (P is ``[hub] redis_prefix``; one Redis, not a cluster: scripts name
keys from their arguments):

- ``P room:R:meta``, a hash: ``top`` (the last id given), ``reserved``
  (the highest id the database has reserved: ``top`` never passes it),
  ``base`` (the stream holds every message of R after this id), ``joins``
  (a counter giving members their joining order);
- ``P room:R:stream``: the last ``history_size`` messages (entry id = message
  id), each the JSON that was published;
- ``P room:R:nicks`` (member id -> nick), ``P room:R:accts`` (member id ->
  "1" for a member logged in to an account), ``P room:R:order`` (member id by
  joining order) and ``P room:R:mexp`` (member id by expiry time, ms):
  presence; ``P room:R:sexp``: subscribers by expiry time;
- ``P rooms``: every room with a stream (swept to the database at start);
  ``P active``: rooms with members or subscribers; ``P nick:LOWER``: who
  holds a nick (a member id, or ``@NAME`` for an account); ``P nickh:LOWER``: the
  processes that hold it (process id by expiry time); ``P guests``: guest numbers; ``P epoch``: changes when
  Redis lost its data;
- channels ``P ch:R`` (a room's events, in id order), ``P ch:*nick``
  (nick changes, and the kicks, logouts and disconnects every process gets) and ``P ch:*dm`` (direct messages); ``*`` is never in a room name.

Expiry uses Redis's clock (TIME), so the hosts' clocks never matter.
"""

from __future__ import annotations

# ARGV[1] is always the prefix
_PRELUDE = r"""
local P = ARGV[1]
local function key(room, what) return P .. 'room:' .. room .. ':' .. what end
local function channel(room) return P .. 'ch:' .. room end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function entry_id(id) return tonumber(string.match(id, '^(%d+)')) end
local function payloads(entries)
  local out = {}
  for i, e in ipairs(entries) do out[i] = e[2][2] end
  return out
end
-- a JOIN or PART's JSON; a = true when the member is logged in to an account; m: the marker (or nil)
local function presence(kind, room, nick, account, marker)
  local event = {t = kind, room = room, nick = nick, m = marker}
  if account then event.a = true end
  return cjson.encode(event)
end
-- removes a member's presence; its nick (nil if it was not a member) and whether it was an account's
local function remove_member(room, member)
  local nick = redis.call('HGET', key(room, 'nicks'), member)
  local account = redis.call('HDEL', key(room, 'accts'), member) == 1
  redis.call('HDEL', key(room, 'nicks'), member)
  redis.call('ZREM', key(room, 'order'), member)
  redis.call('ZREM', key(room, 'mexp'), member)
  return nick, account
end
-- members and subscribers whose presence expired are removed; a member's PART is published
local function reap(room, now)
  local gone = redis.call('ZRANGEBYSCORE', key(room, 'mexp'), '-inf', '(' .. now)
  for _, m in ipairs(gone) do
    local nick, account = remove_member(room, m)
    if nick then
      redis.call('PUBLISH', channel(room), presence('part', room, nick, account))
    end
  end
  redis.call('ZREMRANGEBYSCORE', key(room, 'sexp'), '-inf', '(' .. now)
  if redis.call('ZCARD', key(room, 'mexp')) + redis.call('ZCARD', key(room, 'sexp')) == 0 then
    redis.call('SREM', P .. 'active', room)
  end
end
local function members(room)
  local out = {}
  for _, m in ipairs(redis.call('ZRANGE', key(room, 'order'), 0, -1)) do
    local nick = redis.call('HGET', key(room, 'nicks'), m)
    if nick then out[#out + 1] = nick end
  end
  return out
end
-- account: '1' for a member logged in to an account
local function add_member(room, member, nick, account, expiry)
  local added = 0
  if redis.call('HEXISTS', key(room, 'nicks'), member) == 0 then
    local seq = redis.call('HINCRBY', key(room, 'meta'), 'joins', 1)
    redis.call('ZADD', key(room, 'order'), seq, member)
    added = 1
  end
  redis.call('HSET', key(room, 'nicks'), member, nick)
  if account == '1' then
    redis.call('HSET', key(room, 'accts'), member, '1')
  else
    redis.call('HDEL', key(room, 'accts'), member)
  end
  redis.call('ZADD', key(room, 'mexp'), expiry, member)
  redis.call('SADD', P .. 'active', room)
  return added
end
"""

# ARGV: P, room, history_size, the message's JSON up to its id.
# "SEED" (the room's ids are not in Redis), "RESERVE" (ask the database for more ids), or the new id.
PUBLISH = _PRELUDE + r"""
local room = ARGV[2]
local meta = key(room, 'meta')
local top = redis.call('HGET', meta, 'top')
local reserved = redis.call('HGET', meta, 'reserved')
if not top or not reserved then return 'SEED' end
top = tonumber(top) + 1
if top > tonumber(reserved) then return 'RESERVE' end
redis.call('HSET', meta, 'top', top)
local payload = ARGV[4] .. string.format('%d', top) .. '}'
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', key(room, 'stream'), 'MAXLEN', size, string.format('%d', top) .. '-0', 'm', payload)
  redis.call('SADD', P .. 'rooms', room)
end
redis.call('PUBLISH', channel(room), payload)
return top
"""

# ARGV: P, room, the epoch seen before the database was read, its last id, history_size,
# then the JSON of its last messages (oldest first). Fills the stream with them when it is empty.
# 1 seeded, 0 seeded already (by another process), -1 Redis lost its data meanwhile (read again).
SEED = _PRELUDE + r"""
local room = ARGV[2]
local meta = key(room, 'meta')
if redis.call('GET', P .. 'epoch') ~= ARGV[3] then return -1 end
if redis.call('HEXISTS', meta, 'top') == 1 then return 0 end
local top = tonumber(ARGV[4])
local size = tonumber(ARGV[5])
local stream = key(room, 'stream')
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local base = top
if #last > 0 then
  top = math.max(top, entry_id(last[1][1]))
  base = top
elseif size > 0 then
  local n = #ARGV - 5
  for i = 6, #ARGV do
    local id = string.match(ARGV[i], '"id": (%d+)}$')
    redis.call('XADD', stream, 'MAXLEN', size, id .. '-0', 'm', ARGV[i])
    top = math.max(top, tonumber(id))
  end
  if n > 0 then redis.call('SADD', P .. 'rooms', room) end
  if n < size then base = 0 else base = entry_id(redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][1]) - 1 end
end
redis.call('HSET', meta, 'top', top, 'reserved', top, 'base', base)
return 1
"""

# ARGV: P, room, reserved. Raises the room's reserved id (never lowers it); 0 if the room is not in Redis.
RAISE_RESERVED = _PRELUDE + r"""
local meta = key(ARGV[2], 'meta')
if redis.call('HEXISTS', meta, 'top') == 0 then return 0 end
if tonumber(ARGV[3]) > tonumber(redis.call('HGET', meta, 'reserved')) then
  redis.call('HSET', meta, 'reserved', ARGV[3])
end
return 1
"""

# ARGV: P, room, member, nick ('' to subscribe), since (-1: none), force (1: no NEED_DB), history_size,
# ttl (ms), marker, account ('1': logged in to an account). Adds the presence (a member's JOIN, or a bare
# marker, is published), then returns {top, messages in the stream, members}; or "NEED_DB" when the stream
# may not hold what the joiner needs.
ENTER = _PRELUDE + r"""
local room, member, nick = ARGV[2], ARGV[3], ARGV[4]
local since, force, size = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local meta = key(room, 'meta')
local now = now_ms()
reap(room, now)
local top = redis.call('HGET', meta, 'top')
local stream = key(room, 'stream')
if force ~= '1' then
  if not top then return 'NEED_DB' end
  local base = tonumber(redis.call('HGET', meta, 'base') or '0')
  if base > 0 and redis.call('XLEN', stream) < size and (since < 0 or since < base) then return 'NEED_DB' end
end
local expiry = now + tonumber(ARGV[8])
if nick ~= '' then
  if add_member(room, member, nick, ARGV[10], expiry) == 1 then
    redis.call('PUBLISH', channel(room), presence('join', room, nick, ARGV[10] == '1', ARGV[9]))
  else
    redis.call('PUBLISH', channel(room), cjson.encode({t = 'mark', m = ARGV[9]}))
  end
else
  redis.call('ZADD', key(room, 'sexp'), expiry, member)
  redis.call('SADD', P .. 'active', room)
  redis.call('PUBLISH', channel(room), cjson.encode({t = 'mark', m = ARGV[9]}))
end
local listed = {}
if nick ~= '' then listed = members(room) end
return {tonumber(top or '0'), payloads(redis.call('XRANGE', stream, '-', '+')), listed}
"""

# ARGV: P, room, member, marker. 1 if it was a member (its PART, with the marker, is published), else 0.
PART = _PRELUDE + r"""
local room, member = ARGV[2], ARGV[3]
local nick, account = remove_member(room, member)
if not nick then return 0 end
redis.call('PUBLISH', channel(room), presence('part', room, nick, account, ARGV[4]))
reap(room, now_ms())
return 1
"""

# ARGV: P, room, member.
UNSUBSCRIBE = _PRELUDE + r"""
redis.call('ZREM', key(ARGV[2], 'sexp'), ARGV[3])
reap(ARGV[2], now_ms())
return 1
"""

# ARGV: P, room. The members' nicks in joining order.
WHO = _PRELUDE + r"""
reap(ARGV[2], now_ms())
return members(ARGV[2])
"""

# ARGV: P. {room, members, subscribers, ...} for every room in use.
ROOMS = _PRELUDE + r"""
local now = now_ms()
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', P .. 'active')) do
  reap(room, now)
  local m, s = redis.call('ZCARD', key(room, 'mexp')), redis.call('ZCARD', key(room, 'sexp'))
  if m + s > 0 then
    out[#out + 1] = room
    out[#out + 1] = m
    out[#out + 1] = s
    out[#out + 1] = tonumber(redis.call('HGET', key(room, 'meta'), 'top') or '0')
  end
end
return out
"""

# ARGV: P, room, after (an id). {base (-1: the room is not in Redis), stream length, its oldest id (0: empty),
# the messages after C{after}}.
READ = _PRELUDE + r"""
local meta = key(ARGV[2], 'meta')
local stream = key(ARGV[2], 'stream')
if redis.call('HEXISTS', meta, 'top') == 0 then return {-1, 0, 0, {}} end
local base = tonumber(redis.call('HGET', meta, 'base') or '0')
local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
oldest = #oldest > 0 and entry_id(oldest[1][1]) or 0
local after = string.format('%d', tonumber(ARGV[3]) + 1) .. '-0'
return {base, redis.call('XLEN', stream), oldest, payloads(redis.call('XRANGE', stream, after, '+'))}
"""

# A nick's holder ('nick:N', a member id, or "@NAME" for an account, whose connections in several processes
# share it) and the processes that hold it ('nickh:N', process id -> expiry): an account's nick stays held
# until the last process lets it go, not only until the first one does.
_NICK = r"""
local function hold(nick, process, ttl)
  local h = P .. 'nickh:' .. nick
  redis.call('ZADD', h, now_ms() + tonumber(ttl), process)
  redis.call('PEXPIRE', h, ttl)
end
"""

# ARGV: P, ttl (ms), announce, member count, this process's id, then member count x (room, member, nick: '' for a subscriber,
# account: '1' for a member logged in to an account),
# then (lower-case nick, member) pairs. Refreshes (or re-adds) this process's presence and nicks, and
# reaps each room; with announce = 1 a member re-added (reaped while its process stalled) gets a JOIN,
# as the others were told its PART (after a data loss nobody was). The number of nicks another member holds now.
REFRESH = _PRELUDE + _NICK + r"""
local now = now_ms()
local expiry = now + tonumber(ARGV[2])
local count = tonumber(ARGV[4])
local process = ARGV[5]
local rooms = {}
local i = 6
for _ = 1, count do
  local room, member, nick, account = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if nick ~= '' then
    if add_member(room, member, nick, account, expiry) == 1 and ARGV[3] == '1' then
      redis.call('PUBLISH', channel(room), presence('join', room, nick, account == '1'))
    end
  else
    redis.call('ZADD', key(room, 'sexp'), expiry, member)
    redis.call('SADD', P .. 'active', room)
  end
  rooms[room] = true
  i = i + 4
end
local conflicts = 0
while i < #ARGV do
  local k, member = P .. 'nick:' .. ARGV[i], ARGV[i + 1]
  local holder = redis.call('GET', k)
  if holder == member then
    redis.call('PEXPIRE', k, ARGV[2])
    hold(ARGV[i], process, ARGV[2])
  elseif not holder then
    redis.call('SET', k, member, 'PX', ARGV[2])
    redis.call('DEL', P .. 'nickh:' .. ARGV[i])
    hold(ARGV[i], process, ARGV[2])
  else
    conflicts = conflicts + 1
  end
  i = i + 2
end
for room in pairs(rooms) do reap(room, now) end
return conflicts
"""

# ARGV: P, member, new nick, account ('1': logged in to an account), the NickChange JSON ('': nothing is
# published, only the account changed), then the member's rooms.
RENAME = _PRELUDE + r"""
for i = 6, #ARGV do
  if redis.call('HEXISTS', key(ARGV[i], 'nicks'), ARGV[2]) == 1 then
    redis.call('HSET', key(ARGV[i], 'nicks'), ARGV[2], ARGV[3])
    if ARGV[4] == '1' then
      redis.call('HSET', key(ARGV[i], 'accts'), ARGV[2], '1')
    else
      redis.call('HDEL', key(ARGV[i], 'accts'), ARGV[2])
    end
  end
end
if ARGV[5] ~= '' then redis.call('PUBLISH', P .. 'ch:*nick', ARGV[5]) end
return 1
"""

# ARGV: P, lower-case nick, member, ttl (ms), process. 1 if the member holds it now.
CLAIM_NICK = _PRELUDE + _NICK + r"""
local k = P .. 'nick:' .. ARGV[2]
if redis.call('SET', k, ARGV[3], 'NX', 'PX', ARGV[4]) then
  redis.call('DEL', P .. 'nickh:' .. ARGV[2])  -- the processes of an earlier holder, expired
  hold(ARGV[2], ARGV[5], ARGV[4])
  return 1
end
if redis.call('GET', k) == ARGV[3] then
  redis.call('PEXPIRE', k, ARGV[4])
  hold(ARGV[2], ARGV[5], ARGV[4])
  return 1
end
return 0
"""

# ARGV: P, lower-case nick, member, process. The process no longer holds it; the nick is free once no process
# does (only if the member holds it).
RELEASE_NICK = _PRELUDE + r"""
local k, h = P .. 'nick:' .. ARGV[2], P .. 'nickh:' .. ARGV[2]
if redis.call('GET', k) ~= ARGV[3] then return 1 end
redis.call('ZREM', h, ARGV[4])
redis.call('ZREMRANGEBYSCORE', h, '-inf', now_ms())
if redis.call('ZCARD', h) == 0 then redis.call('DEL', k, h) end
return 1
"""

# ARGV: P, lower-case nick, the channel every process listens to, the order. 1 if sent, 0 if nobody holds the nick.
DISCONNECT = _PRELUDE + r"""
if redis.call('EXISTS', P .. 'nick:' .. ARGV[2]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# ARGV: P, lower-case nick, the Direct JSON. 0 if nobody holds the nick (nothing is sent), else 1: published
# to every process, each delivering to its own connections of that nick.
DIRECT = _PRELUDE + r"""
if redis.call('EXISTS', P .. 'nick:' .. ARGV[2]) == 0 then return 0 end
redis.call('PUBLISH', P .. 'ch:*dm', ARGV[3])
return 1
"""
