-- The server's kvblend/status notifications -> a statusline component.
local M = {}

M.state = { state = "off", message = "not started" }

local icons = { loading = "…", indexing = "⟳", ready = "✓", error = "✗", off = "-" }

local function changed()
  vim.schedule(function()
    pcall(vim.api.nvim_exec_autocmds, "User", { pattern = "KvblendStatus", modeline = false })
    pcall(vim.cmd.redrawstatus)
  end)
end

--- Set the state (the client's own: starting, stopped, crashed) and tell the statusline.
---@param state {state: string, message: string?}
function M.set(state)
  M.state = state
  changed()
end

--- Handler for the kvblend/status notification {state, message, done?, total?, lastLatencyMs?}.
function M.handler(_, params)
  if type(params) ~= "table" or type(params.state) ~= "string" then
    return
  end
  -- An error is shown once, not again while the server repeats it.
  local repeated = M.state.state == "error" and M.state.message == params.message
  M.state = params
  if params.state == "error" and not repeated then
    vim.schedule(function()
      vim.notify("kvblend: " .. (params.message or "error"), vim.log.levels.ERROR)
    end)
  end
  changed()
end

--- Record the latency of the last completion the client measured itself (when the server did not send one).
function M.set_latency(ms)
  M.state = vim.tbl_extend("force", M.state, { lastLatencyMs = ms })
end

--- A short text for the statusline, e.g. "kvblend ⟳ 12/40", "kvblend ✓ 45ms", "kvblend ✗".
---@return string
function M.statusline()
  local s = M.state
  local out = "kvblend " .. (icons[s.state] or "?")
  if s.state == "indexing" and s.total and s.total > 0 then
    out = out .. (" %d/%d"):format(s.done or 0, s.total)
  elseif s.state == "ready" and s.lastLatencyMs then
    out = out .. (" %dms"):format(math.floor(s.lastLatencyMs + 0.5))
  end
  return out
end

return M
