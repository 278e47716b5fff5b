-- A login: merge its driver, point the record at its node, count the user as active today.
--
-- KEYS[1] the user's route record, KEYS[2] today's active-user HyperLogLog.
-- ARGV userId, token, brokerId, group, deviceId, deviceType, record TTL, active-users TTL.
-- Returns the driver the login replaced in its group (JSON), or nil.

local record = decode(redis.call('GET', KEYS[1])) or { drivers = {} }
local group = ARGV[4]
local previous = record.drivers[group]

record.userId = ARGV[1]
record.token = ARGV[2]
record.brokerId = ARGV[3]
record.drivers[group] = { deviceId = ARGV[5], deviceType = ARGV[6], brokerId = ARGV[3] }
redis.call('SET', KEYS[1], encode(record), 'EX', ARGV[7])

-- The day key's TTL is set by its first login only, so it lives 30 days from that day
-- rather than sliding with every login (`EXPIRE NX` would need Redis 7).
redis.call('PFADD', KEYS[2], ARGV[1])
if redis.call('TTL', KEYS[2]) == -1 then
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end

if type(previous) == 'table' then
  return encode_driver(previous)
end
return nil
