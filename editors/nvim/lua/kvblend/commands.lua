-- User commands: :KvblendStats and the capsule commands (snapshot, list, restore, undo, fork, drop).
local lsp = require("kvblend.lsp")

local M = {}

local METHOD_NOT_FOUND = -32601

-- The capsule id each document was last snapshotted, restored or undone to (the default for fork).
M.current = {} ---@type table<string, string>

local function client()
  local c = require("kvblend").client(vim.api.nvim_get_current_buf()) or vim.lsp.get_clients({ name = "kvblend" })[1]
  if not c then
    vim.notify("kvblend: the server is not running for this buffer", vim.log.levels.WARN)
  end
  return c
end

--- Send a kvblend/* request; `on_result` gets the result. Errors are reported, MethodNotFound as "not
--- supported by this server" (an older server without capsules).
function M.request(method, params, on_result)
  local c = client()
  if not c then
    return
  end
  lsp.request(c, method, params, function(err, result)
    if err then
      if err.code == METHOD_NOT_FOUND then
        vim.notify(("kvblend: this server does not support %s (upgrade kvblend)"):format(method), vim.log.levels.WARN)
      else
        vim.notify(("kvblend: %s failed: %s"):format(method, err.message or vim.inspect(err)), vim.log.levels.ERROR)
      end
      return
    end
    on_result(result)
  end, vim.api.nvim_get_current_buf())
end

local function show_lines(title, lines)
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].bufhidden = "wipe"
  vim.bo[buf].filetype = "lua"
  vim.cmd("botright split")
  vim.api.nvim_win_set_buf(0, buf)
  pcall(vim.api.nvim_buf_set_name, buf, title)
end

local function describe(info)
  if type(info) ~= "table" then
    return tostring(info)
  end
  return ("%s  %s  %s tokens  parent %s"):format(
    info.id or "?", vim.fn.fnamemodify(vim.uri_to_fname(info.uri or "file:///?"), ":~:."), info.n_tokens or info.tokens or "?",
    info.parent ~= vim.NIL and info.parent or "-"
  )
end

function M.stats()
  M.request("kvblend/stats", {}, function(result)
    show_lines("kvblend://stats", vim.split(vim.inspect(result), "\n"))
  end)
end

function M.snapshot()
  local uri = vim.uri_from_bufnr(0)
  M.request("kvblend/capsule.snapshot", { uri = uri }, function(info)
    M.current[uri] = info and info.id
    vim.notify("kvblend: capsule " .. describe(info))
  end)
end

function M.list(all)
  local params = all and {} or { uri = vim.uri_from_bufnr(0) }
  M.request("kvblend/capsule.list", params, function(infos)
    if type(infos) ~= "table" or #infos == 0 then
      vim.notify("kvblend: no capsules")
      return
    end
    local lines = {}
    for _, info in ipairs(infos) do
      lines[#lines + 1] = describe(info)
    end
    vim.notify("kvblend capsules:\n" .. table.concat(lines, "\n"))
  end)
end

function M.restore(id)
  M.request("kvblend/capsule.restore", { id = id }, function(info)
    local uri = type(info) == "table" and info.uri or vim.uri_from_bufnr(0)
    M.current[uri] = id
    vim.notify(("kvblend: restored %s; the next completion resumes from it"):format(id))
  end)
end

function M.undo()
  local uri = vim.uri_from_bufnr(0)
  M.request("kvblend/capsule.undo", { uri = uri }, function(info)
    if type(info) ~= "table" then
      vim.notify("kvblend: nothing to undo")
      return
    end
    M.current[uri] = info.id
    vim.notify("kvblend: back to capsule " .. describe(info))
  end)
end

function M.fork(n, id)
  id = id or M.current[vim.uri_from_bufnr(0)]
  if not id then
    vim.notify("kvblend: no capsule to fork: :KvblendCapsuleSnapshot first, or give an id", vim.log.levels.WARN)
    return
  end
  M.request("kvblend/capsule.fork", { id = id, n = n }, function(result)
    local ids = type(result) == "table" and (result.branches or result.ids) or result
    vim.notify(("kvblend: forked %s into %s"):format(id, vim.inspect(ids)))
  end)
end

function M.drop(id)
  M.request("kvblend/capsule.drop", { id = id }, function(result)
    local dropped = type(result) == "table" and result.dropped
    vim.notify(("kvblend: %s %s"):format(id, dropped and "dropped" or "not found"))
  end)
end

function M.create()
  local cmd = vim.api.nvim_create_user_command
  cmd("KvblendStats", M.stats, { desc = "kvblend: server statistics" })
  cmd("KvblendRestart", function()
    require("kvblend").restart()
  end, { desc = "kvblend: restart the server (also after it failed to start)" })
  cmd("KvblendCapsuleSnapshot", M.snapshot, { desc = "kvblend: snapshot this document's session" })
  cmd("KvblendCapsuleList", function(a)
    M.list(a.bang)
  end, { bang = true, desc = "kvblend: list this document's capsules (! for all)" })
  cmd("KvblendCapsuleRestore", function(a)
    M.restore(a.args)
  end, { nargs = 1, desc = "kvblend: resume from a capsule" })
  cmd("KvblendCapsuleUndo", M.undo, { desc = "kvblend: back to the previous capsule" })
  cmd("KvblendCapsuleFork", function(a)
    local n = tonumber(a.fargs[1] or "2")
    if not n or n < 1 or n ~= math.floor(n) or n == math.huge or #a.fargs > 2 then
      vim.notify("kvblend: usage :KvblendCapsuleFork {n} [id]", vim.log.levels.ERROR)
      return
    end
    M.fork(n, a.fargs[2])
  end, { nargs = "*", desc = "kvblend: fork n branches from a capsule" })
  cmd("KvblendCapsuleDrop", function(a)
    M.drop(a.args)
  end, { nargs = 1, desc = "kvblend: delete a capsule" })
end

return M
