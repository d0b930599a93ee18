-- kvblend.nvim: start `kvblend serve`, show its inline completions as ghost text, map the accept keys.
-- The server does the work; this plugin only starts it, forwards settings, renders and accepts.
local config = require("kvblend.config")
local status = require("kvblend.status")
local accept = require("kvblend.accept")
local ghost = require("kvblend.ghost")

local M = {}

local NAME = "kvblend"
local INLINE = "textDocument/inlineCompletion"

-- The last suggestion the server sent per buffer (builtin engine): what the ghost text shows.
local last = {} ---@type table<integer, {text: string, client_id: integer, tick: integer}?>

---@return vim.lsp.Client?
function M.client(bufnr)
  return vim.lsp.get_clients({ name = NAME, bufnr = bufnr })[1]
end

-- The server gives each item an empty range at the requested position. The builtin engine draws an item with a
-- range as an overlay, which hides the text after the cursor in the middle of a line; without a range it draws
-- it inline at the cursor and inserts it there, which is the same edit.
local function strip_empty_ranges(result)
  for _, item in ipairs(type(result) == "table" and (result.items or result) or {}) do
    local r = type(item) == "table" and item.range
    if r and r.start and r["end"] and r.start.line == r["end"].line and r.start.character == r["end"].character then
      item.range = nil
    end
  end
end

-- Builtin engine: watch the inline completion responses the builtin requests on our client, to know what
-- is shown (vim.lsp.inline_completion keeps its current item private) and to tell the server about it.
local function observe(client)
  local request = client.request
  client.request = function(self, method, params, handler, bufnr)
    if method == INLINE and type(handler) == "function" then
      local inner, t0 = handler, vim.uv.hrtime()
      handler = function(err, result, ctx, ...)
        local b = ctx and ctx.bufnr
        if b and not err then
          strip_empty_ranges(result)
          local item = result and (result.items or result)[1]
          local text = item and (type(item.insertText) == "string" and item.insertText or item.insertText.value)
          if text and text ~= "" then
            last[b] = { text = text, client_id = self.id, tick = vim.api.nvim_buf_get_changedtick(b) }
            status.set_latency((vim.uv.hrtime() - t0) / 1e6)
            accept.shown(self, vim.uri_from_bufnr(b), text)
          else
            last[b] = nil
          end
        end
        return inner(err, result, ctx, ...)
      end
    end
    return request(self, method, params, handler, bufnr)
  end
end

local function builtin_visible(bufnr)
  local ns = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
  return ns ~= nil and #vim.api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { limit = 1 }) > 0
end

--- The suggestion shown in the buffer now, or nil: { text = ..., engine = "builtin"|"extmark" }.
---@param bufnr integer?
---@return {text: string, engine: string}?
function M.current_suggestion(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  if config.use_builtin() then
    local s = last[bufnr]
    if s and builtin_visible(bufnr) then
      return { text = s.text, engine = "builtin" }
    end
    return nil
  end
  local item = ghost.current(bufnr)
  return item and { text = item.text, engine = "extmark" } or nil
end

--- Accept the shown suggestion: "all" (default), "word" or "line". Returns false when nothing is shown (so a
--- mapping can fall back to its key). The edit itself is scheduled: this may run inside an <expr> mapping.
---@param kind ("all"|"word"|"line")?
---@return boolean
function M.accept(kind)
  kind = kind or "all"
  local bufnr = vim.api.nvim_get_current_buf()
  local uri = vim.uri_from_bufnr(bufnr)
  local function take(text, client_id, srow, scol, erow, ecol)
    local piece = accept.piece(text, kind)
    accept.apply(bufnr, piece, srow, scol, erow, ecol)
    accept.accepted(vim.lsp.get_client_by_id(client_id), uri, text, vim.fn.strchars(piece))
  end
  if config.use_builtin() then
    return vim.lsp.inline_completion.get({
      bufnr = bufnr,
      on_accept = function(item)
        local text = type(item.insert_text) == "string" and item.insert_text or item.insert_text.value
        local r = item.range
        if r then
          take(text, item.client_id, r.start.row, r.start.col, r.end_.row, r.end_.col)
        else
          local row, col = unpack(vim.api.nvim_win_get_cursor(0))
          take(text, item.client_id, row - 1, col, row - 1, col)
        end
      end,
    })
  end
  local item = ghost.current(bufnr)
  if not item then
    return false
  end
  vim.schedule(function()
    if ghost.current(bufnr) == item then
      ghost.clear(bufnr)
      take(item.text, item.client_id, item.row, item.col, item.row, item.col)
    end
  end)
  return true
end

local function ghost_opts()
  return {
    hl_group = config.options.hl_group,
    on_result = function(item, ms)
      status.set_latency(ms)
      local client = vim.lsp.get_client_by_id(item.client_id)
      accept.shown(client, vim.uri_from_bufnr(vim.api.nvim_get_current_buf()), item.text)
    end,
  }
end

--- Ask for a suggestion now (manual trigger).
function M.trigger()
  local bufnr = vim.api.nvim_get_current_buf()
  local client = M.client(bufnr)
  if not client then
    return
  end
  if config.use_builtin() then
    -- The builtin engine asks on cursor movement in insert mode; re-entering the position asks again.
    vim.api.nvim_exec_autocmds("CursorMovedI", { buffer = bufnr, modeline = false })
  else
    ghost.request(client, bufnr, vim.tbl_extend("force", ghost_opts(), { invoked = true }))
  end
end

--- Hide the shown suggestion.
function M.dismiss()
  local bufnr = vim.api.nvim_get_current_buf()
  if config.use_builtin() then
    local ns = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
    if ns then
      vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
    end
    last[bufnr] = nil
  else
    ghost.clear(bufnr)
  end
end

--- Cycle through the server's items (builtin engine).
function M.select(count)
  if config.use_builtin() then
    vim.lsp.inline_completion.select({ count = count })
  end
end

--- The statusline component: "kvblend ⟳ 12/40", "kvblend ✓ 45ms", ...
function M.statusline()
  return status.statusline()
end

--- The last kvblend/status the server sent: {state, message, done?, total?, lastLatencyMs?}.
function M.status()
  return status.state
end

local function send_settings()
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
    client.settings = config.client_settings()
    require("kvblend.lsp").notify(client, "workspace/didChangeConfiguration", { settings = client.settings })
  end
end

--- Change completion settings at runtime (sent as workspace/didChangeConfiguration).
function M.set_settings(settings)
  vim.validate("settings", settings, "table")
  config.options.settings = vim.tbl_deep_extend("force", config.options.settings or {}, settings)
  send_settings()
end

local function map_keys(bufnr)
  local keys = config.options.keymaps or {}
  local function map(lhs, rhs, desc, expr)
    if lhs then
      vim.keymap.set("i", lhs, rhs, { buffer = bufnr, expr = expr, silent = true, desc = "kvblend: " .. desc })
    end
  end
  -- Fall through to the key itself when no suggestion is shown (expr mappings replace its keycodes).
  local function accept_or(kind, lhs)
    return function()
      if M.accept(kind) then
        return ""
      end
      return lhs
    end
  end
  map(keys.accept, accept_or("all", keys.accept or ""), "accept suggestion", true)
  map(keys.accept_word, accept_or("word", keys.accept_word or ""), "accept next word", true)
  map(keys.accept_line, accept_or("line", keys.accept_line or ""), "accept next line", true)
  map(keys.trigger, M.trigger, "ask for a suggestion")
  map(keys.dismiss, M.dismiss, "dismiss suggestion")
  map(keys.next, function()
    M.select(1)
  end, "next suggestion")
  map(keys.prev, function()
    M.select(-1)
  end, "previous suggestion")
end

local function on_attach(client, bufnr)
  if config.use_builtin() then
    vim.lsp.inline_completion.enable(true, { client_id = client.id })
  else
    ghost.attach(client, bufnr, ghost_opts(), config.options.debounce_ms)
  end
  map_keys(bufnr)
end

-- Why the server is not started again (a missing command, or a server that died during start-up), else nil.
-- Set once, with one message; cleared by setup() and :KvblendRestart.
local failed = nil ---@type string?

local function fail(reason)
  if failed then
    return
  end
  failed = reason
  status.set({ state = "error", message = reason })
  vim.schedule(function()
    vim.notify(("kvblend: %s; not starting it again until :KvblendRestart or setup()"):format(reason), vim.log.levels.ERROR)
  end)
end

--- Start (or reuse) the server for a buffer and attach to it.
function M.attach(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local opts = config.options
  if failed or not vim.api.nvim_buf_is_valid(bufnr) then
    return
  end
  if vim.bo[bufnr].buftype ~= "" or vim.api.nvim_buf_get_name(bufnr) == "" then
    return
  end
  if opts.filetypes and not vim.tbl_contains(opts.filetypes, vim.bo[bufnr].filetype) then
    return
  end
  if type(opts.cmd) == "table" and vim.fn.executable(opts.cmd[1]) ~= 1 then
    return fail(("server command not found: %s"):format(opts.cmd[1]))
  end
  local root = vim.fs.root(bufnr, opts.root_markers) or vim.fn.getcwd()
  local initialized = false
  local id = vim.lsp.start({
    name = NAME,
    cmd = opts.cmd,
    root_dir = root,
    workspace_folders = { { uri = vim.uri_from_fname(root), name = vim.fs.basename(root) } },
    init_options = config.init_options(),
    settings = config.client_settings(),
    handlers = { ["kvblend/status"] = status.handler },
    on_init = function(client)
      initialized = true
      observe(client)
      status.set({ state = "loading", message = "starting" })
    end,
    on_exit = function(code, signal)
      -- Neovim stops a client with exit (code 0) or, forced, SIGTERM (15); anything else is a crash.
      if code == 0 and (signal == 0 or signal == 15) then
        status.set({ state = "off", message = "server stopped" })
      elseif not initialized then
        fail(("the server exited during start-up (code %d, signal %d; see the LSP log)"):format(code, signal))
      else
        -- A crash mid-session: the next buffer opened (or :KvblendRestart) starts a new server.
        status.set({ state = "error", message = ("server exited (code %d, signal %d)"):format(code, signal) })
      end
    end,
    on_attach = on_attach,
  }, { bufnr = bufnr, silent = true })
  if not id and #vim.lsp.get_clients({ name = NAME, _uninitialized = true }) == 0 then
    fail(("cannot start the server: %s"):format(vim.inspect(opts.cmd)))
  end
  return id
end

-- Every loaded buffer, as at start-up (attach skips the ones the server does not serve).
local function attach_loaded()
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) then
      M.attach(bufnr)
    end
  end
end

--- Stop the server and start a new one for every loaded file buffer (also after a failed start).
function M.restart()
  failed = nil
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME, _uninitialized = true })) do
    require("kvblend.lsp").stop(client, true)
  end
  local function again(tries)
    if tries > 0 and #vim.lsp.get_clients({ name = NAME, _uninitialized = true }) > 0 then
      return vim.defer_fn(function()
        again(tries - 1)
      end, 50)
    end
    attach_loaded()
  end
  again(100)
end

--- setup({ cmd = {...}, settings = {...}, keymaps = {...}, ghost = "auto", ... }); see lua/kvblend/config.lua.
function M.setup(opts)
  config.set(opts)
  failed = nil
  send_settings() -- a second setup() changes the running server's settings too
  require("kvblend.commands").create()
  local group = vim.api.nvim_create_augroup("kvblend", { clear = true })
  vim.api.nvim_create_autocmd({ "BufReadPost", "BufNewFile", "FileType" }, {
    group = group,
    callback = function(args)
      M.attach(args.buf)
    end,
  })
  attach_loaded()
end

return M
