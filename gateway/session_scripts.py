"""Lua scripts that read and change a session atomically in Redis.

Each script gets a session's keys in the order of `SessionKeys.all()`:
KEYS[1] meta, KEYS[2] messages, KEYS[3] replies, KEYS[4] lock. They share one hash tag, so a
script runs on one Redis Cluster slot. A script is atomic: no other command runs while it
does. NOTE: Redis does not roll back a script that fails half-way, so every check comes before
the first write and nothing after the first write can fail.
"""

from __future__ import annotations

# Refreshes the session's time to live (not the lock's, which has its own).
_TOUCH = """
local function touch()
  local ttl = redis.call('HGET', KEYS[1], 'ttl_ms')
  if ttl then
    for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
"""

# ARGV: owner. Returns false, or {meta (flat), pttl, messages}; refreshes the TTL.
GET = (
    _TOUCH
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return false end
touch()
return {redis.call('HGETALL', KEYS[1]), redis.call('PTTL', KEYS[1]),
        redis.call('LRANGE', KEYS[2], 0, -1)}
"""
)

# ARGV: owner. Returns 1 if deleted, 0 if missing or another owner's.
DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
"""

# Starts a turn. ARGV: owner, request id ('' for none), lock token, lock TTL (ms), most
# messages a session holds. Returns {'missing'}, {'replay', reply json}, {'busy'}, {'full'},
# or {'ok', meta (flat), pttl, messages} with the lock taken.
BEGIN_TURN = (
    _TOUCH
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {'missing'} end
if ARGV[2] ~= '' then
  local reply = redis.call('HGET', KEYS[3], ARGV[2])
  if reply then
    touch()
    return {'replay', reply}
  end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'busy'} end
if redis.call('LLEN', KEYS[2]) + 2 > tonumber(ARGV[5]) then return {'full'} end
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
touch()
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('PTTL', KEYS[1]),
        redis.call('LRANGE', KEYS[2], 0, -1)}
"""
)

# Stores a finished turn. ARGV: lock token, version seen at the start, now (ms), user message
# json, assistant message json, request id ('' for none), reply json, runtime address.
# Returns {'ok', new version} (also when this turn was already stored: a retried commit),
# {'missing'} (deleted or expired meanwhile), {'lost'} (another turn holds the lock) or
# {'conflict', version} (another turn was stored meanwhile).
COMMIT_TURN = (
    _TOUCH
    + """
if redis.call('HGET', KEYS[1], 'last_turn') == ARGV[1] then
  return {'ok', tonumber(redis.call('HGET', KEYS[1], 'version'))}
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[1] then return {'lost'} end
local version = redis.call('HGET', KEYS[1], 'version')
if version ~= ARGV[2] then return {'conflict', tonumber(version)} end
redis.call('RPUSH', KEYS[2], ARGV[4], ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], ARGV[6], ARGV[7]) end
local new_version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'updated_ms', ARGV[3], 'runtime', ARGV[8], 'last_turn', ARGV[1])
redis.call('DEL', KEYS[4])
touch()
return {'ok', new_version}
"""
)

# KEYS[1]: lock. ARGV: token. Deletes the lock if this token holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1]: lock. ARGV: token, TTL (ms). Extends the lock if this token holds it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1]: an owner's index. ARGV: score (update time, ms), session id, TTL (ms). Adds or
# moves the session and makes the index live at least as long as the session.
INDEX_TOUCH = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
