-- Extmark ghost text for Neovim without vim.lsp.inline_completion (before 0.12), or with ghost = "extmark":
-- ask the server for textDocument/inlineCompletion after an idle pause in insert mode and draw the first
-- item as virtual text at the cursor.
local lsp = require("kvblend.lsp")

local M = {}

local ns = vim.api.nvim_create_namespace("kvblend.ghost")
local state = {} ---@type table<integer, {timer: uv.uv_timer_t?, item: table?, request: integer?}>

local function buf_state(bufnr)
  state[bufnr] = state[bufnr] or {}
  return state[bufnr]
end

function M.clear(bufnr)
  local s = buf_state(bufnr)
  s.item = nil
  if s.request and s.client then
    pcall(lsp.cancel, s.client, s.request)
  end
  s.request = nil
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
end

local function render(bufnr, item, hl)
  vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  local lines = vim.split(item.text, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], hl } }
  end
  vim.api.nvim_buf_set_extmark(bufnr, ns, item.row, item.col, {
    virt_text = { { lines[1], hl } },
    virt_text_pos = vim.fn.has("nvim-0.10") == 1 and "inline" or "overlay",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
end

--- Ask for a suggestion at the cursor now.
---@param client vim.lsp.Client
---@param bufnr integer
---@param opts {hl_group: string, invoked: boolean?, on_result: fun(item: table?)?}
function M.request(client, bufnr, opts)
  M.clear(bufnr)
  local s = buf_state(bufnr)
  local win = vim.fn.bufwinid(bufnr)
  if win == -1 then
    return
  end
  local cursor = vim.api.nvim_win_get_cursor(win)
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = opts.invoked and 1 or 2 }
  local t0 = vim.uv.hrtime()
  local ok, id = lsp.request(client, "textDocument/inlineCompletion", params, function(err, result)
    s.request = nil
    if err or not result or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return
    end
    if not vim.deep_equal(vim.api.nvim_win_get_cursor(win), cursor) or not vim.api.nvim_get_mode().mode:match("^i") then
      return
    end
    local items = result.items or result
    local first = items[1]
    local text = first and (type(first.insertText) == "string" and first.insertText or first.insertText.value)
    if not text or text == "" then
      return
    end
    s.item = { text = text, row = cursor[1] - 1, col = cursor[2], client_id = client.id, tick = tick }
    render(bufnr, s.item, opts.hl_group)
    if opts.on_result then
      opts.on_result(s.item, (vim.uv.hrtime() - t0) / 1e6)
    end
  end, bufnr)
  if ok then
    s.request, s.client = id, client
  end
end

--- Ask after `debounce_ms` of quiet (restarted by every keystroke).
function M.schedule(client, bufnr, opts, debounce_ms)
  local s = buf_state(bufnr)
  if s.timer then
    s.timer:stop()
    s.timer:close()
  end
  M.clear(bufnr)
  s.timer = vim.defer_fn(function()
    s.timer = nil
    if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_get_current_buf() == bufnr then
      M.request(client, bufnr, opts)
    end
  end, debounce_ms)
end

--- The suggestion shown in `bufnr`, if it is still valid for the buffer's text and cursor.
---@return {text: string, row: integer, col: integer, client_id: integer}?
function M.current(bufnr)
  local item = buf_state(bufnr).item
  if not item or vim.api.nvim_buf_get_changedtick(bufnr) ~= item.tick then
    return nil
  end
  return item
end

--- Attach the engine to a buffer: request while typing, clear on leaving insert mode.
function M.attach(client, bufnr, opts, debounce_ms)
  local group = vim.api.nvim_create_augroup("kvblend.ghost." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "InsertEnter", "TextChangedI", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.schedule(client, bufnr, opts, debounce_ms)
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.clear(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("BufWipeout", {
    group = group,
    buffer = bufnr,
    callback = function()
      M.clear(bufnr)
      state[bufnr] = nil
    end,
  })
end

return M
