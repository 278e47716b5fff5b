-- A disconnect: remove the login's driver if it is still the one recorded.
--
-- KEYS[1] the user's route record.
-- ARGV group, deviceId, brokerId (this node).
-- Returns 2 when the record was deleted, 1 when it was rewritten, 0 when nothing changed.

local record = decode(redis.call('GET', KEYS[1]))
if not record then
  return 0
end

local node = ARGV[3]
local drivers = record.drivers
local mine = drivers[ARGV[1]]
local changed = false

-- A newer login of the same group (here or elsewhere) owns the slot: leave it alone.
if type(mine) == 'table' and mine.deviceId == ARGV[2] and mine.brokerId == node then
  drivers[ARGV[1]] = nil
  changed = true
end

local left = groups(drivers)
if #left == 0 then
  if record.brokerId == node then
    redis.call('DEL', KEYS[1])
    return 2
  end
elseif record.brokerId == node then
  -- Backends that read only the top-level brokerId must reach a node that still holds one of
  -- the user's devices, so the record moves to one when this node holds none any more.
  local here = false
  for _, g in ipairs(left) do
    if drivers[g].brokerId == node then
      here = true
    end
  end
  local elsewhere = drivers[left[1]].brokerId
  if not here and type(elsewhere) == 'string' then
    record.brokerId = elsewhere
    changed = true
  end
end

if changed then
  redis.call('SET', KEYS[1], encode(record), 'KEEPTTL')
  return 1
end
return 0
