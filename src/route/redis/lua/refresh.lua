-- One refresher batch: extend the TTL of each user's record, re-creating the ones that
-- vanished while the user still has devices on this node.
--
-- KEYS the users' route records.
-- ARGV[1] the TTL; ARGV[i + 1] the record to write back for KEYS[i], or '' for none.
-- Returns how many records were re-created.

local ttl = ARGV[1]
local restored = 0
for i, key in ipairs(KEYS) do
  if redis.call('EXPIRE', key, ttl) == 0 and ARGV[i + 1] ~= '' then
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
    restored = restored + 1
  end
end
return restored
