-- Reading and writing IM-USER records; prepended to every route script.
--
-- Records are written field by field rather than with cjson.encode: cjson writes an empty
-- `drivers` table as `[]`, and its field order follows Lua's hash order. Here the order is
-- the one serde writes (userId, token, brokerId, drivers by group name), so a record
-- re-created by the gateway's refresher and one written here read the same.

local function decode(raw)
  if not raw then
    return nil
  end
  local ok, record = pcall(cjson.decode, raw)
  if not ok or type(record) ~= 'table' then
    return nil
  end
  if type(record.drivers) ~= 'table' then
    record.drivers = {}
  end
  return record
end

local function json(value)
  if value == nil then
    return 'null'
  end
  return cjson.encode(value)
end

local function encode_driver(driver)
  return '{"deviceId":' .. json(driver.deviceId)
    .. ',"deviceType":' .. json(driver.deviceType)
    .. ',"brokerId":' .. json(driver.brokerId) .. '}'
end

-- Group names of the drivers that are well formed, sorted.
local function groups(drivers)
  local out = {}
  for group, driver in pairs(drivers) do
    if type(group) == 'string' and type(driver) == 'table' then
      out[#out + 1] = group
    end
  end
  table.sort(out)
  return out
end

local function encode(record)
  local parts = {}
  for i, group in ipairs(groups(record.drivers)) do
    parts[i] = json(group) .. ':' .. encode_driver(record.drivers[group])
  end
  return '{"userId":' .. json(record.userId)
    .. ',"token":' .. json(record.token)
    .. ',"brokerId":' .. json(record.brokerId)
    .. ',"drivers":{' .. table.concat(parts, ',') .. '}}'
end
