-- kvblend.nvim options: defaults, and the merge with what the user passes to setup().
local M = {}

M.defaults = {
  -- How to start the server (stdio). A virtualenv's python works too: { "/path/python", "-m", "kvblend", "serve" }.
  cmd = { "kvblend", "serve" },
  -- Filetypes to attach to; nil attaches to every normal file buffer (the server completes any text).
  filetypes = nil,
  -- The workspace the server indexes: the nearest directory holding one of these, else the cwd.
  root_markers = { ".git", ".kvblend", "pyproject.toml", "package.json", "Cargo.toml", "go.mod" },
  -- A Hugging Face model directory for the server (nil: its bundled model).
  model = nil,
  -- Completion settings, forwarded as initializationOptions and workspace/didChangeConfiguration; camelCase
  -- keys as in kvblend/settings.py, e.g. { maxTokens = 64, mode = "blend", temperature = 0 }.
  settings = {},
  -- Ghost text: "auto" (Neovim 0.12's vim.lsp.inline_completion when present, else extmarks), "builtin", "extmark".
  ghost = "auto",
  -- Idle time before the extmark engine asks for a suggestion (the builtin engine has its own debounce).
  debounce_ms = 150,
  -- Insert-mode keys; false disables one. <Tab> falls through to a normal <Tab> when nothing is shown.
  keymaps = {
    accept = "<Tab>",
    accept_word = "<C-Right>",
    accept_line = "<C-Down>",
    trigger = "<M-\\>",
    next = "<M-]>",
    prev = "<M-[>",
    dismiss = "<C-]>",
  },
  -- Highlight group of the extmark engine's ghost text (the builtin engine uses ComplHint).
  hl_group = "Comment",
}

M.options = vim.deepcopy(M.defaults)

local function is_string_list(v, nonempty)
  if type(v) ~= "table" or (nonempty and #v == 0) then
    return false
  end
  for k, x in pairs(v) do
    if type(k) ~= "number" or type(x) ~= "string" or x == "" then
      return false
    end
  end
  return true
end

-- Wrong types are refused here, with the offending value, instead of failing later at every keystroke
-- (debounce_ms), in every buffer's on_attach (keymaps) or at every server start (cmd).
local function check(opts)
  local function bad(key, want)
    error(("kvblend: %s must be %s, got %s"):format(key, want, vim.inspect(opts[key])), 0)
  end
  if opts.cmd ~= nil and type(opts.cmd) ~= "function" and not is_string_list(opts.cmd, true) then
    bad("cmd", "a non-empty list of strings")
  end
  if opts.settings ~= nil and type(opts.settings) ~= "table" then
    bad("settings", "a table")
  end
  if opts.filetypes ~= nil and not is_string_list(opts.filetypes) then
    bad("filetypes", "nil or a list of strings")
  end
  if opts.root_markers ~= nil and not is_string_list(opts.root_markers) then
    bad("root_markers", "a list of strings")
  end
  if opts.model ~= nil and type(opts.model) ~= "string" then
    bad("model", "nil or a string")
  end
  if opts.ghost ~= nil and not vim.tbl_contains({ "auto", "builtin", "extmark" }, opts.ghost) then
    bad("ghost", "auto, builtin or extmark")
  end
  local d = opts.debounce_ms
  if d ~= nil and not (type(d) == "number" and d >= 0 and d == math.floor(d)) then
    bad("debounce_ms", "a non-negative integer")
  end
  if opts.hl_group ~= nil and type(opts.hl_group) ~= "string" then
    bad("hl_group", "a highlight group name")
  end
  if opts.keymaps ~= nil and opts.keymaps ~= false then
    if type(opts.keymaps) ~= "table" then
      bad("keymaps", "a table or false")
    end
    for name, lhs in pairs(opts.keymaps) do
      if M.defaults.keymaps[name] == nil then
        error(("kvblend: unknown key in keymaps: %s"):format(vim.inspect(name)), 0)
      elseif lhs ~= false and (type(lhs) ~= "string" or lhs == "") then
        error(("kvblend: keymaps.%s must be a key (string) or false, got %s"):format(name, vim.inspect(lhs)), 0)
      end
    end
  end
end

---@param opts table|nil
---@return table
function M.set(opts)
  opts = opts or {}
  vim.validate("opts", opts, "table")
  check(opts)
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts)
  if opts.keymaps == false then
    M.options.keymaps = {}
  end
  -- A list given by the user replaces the default list instead of merging index by index.
  for _, key in ipairs({ "cmd", "filetypes", "root_markers" }) do
    if opts[key] ~= nil then
      M.options[key] = opts[key]
    end
  end
  return M.options
end

--- `t`, or an empty dict when it is empty: vim.json encodes an empty Lua table as [], and the server refuses a
--- list where it expects an object (a warning at every start).
---@param t table
---@return table
function M.object(t)
  return next(t) == nil and vim.empty_dict() or t
end

--- The settings sent as workspace/didChangeConfiguration (the server reads them under "kvblend").
---@return table
function M.client_settings()
  return { kvblend = M.object(vim.deepcopy(M.options.settings or {})) }
end

--- The initializationOptions sent to the server: the completion settings plus the client-level keys it reads.
---@return table
function M.init_options()
  local out = vim.deepcopy(M.options.settings or {})
  if M.options.model then
    out.model = M.options.model
  end
  return M.object(out)
end

--- Whether the builtin inline completion engine (Neovim 0.12+) is used.
---@return boolean
function M.use_builtin()
  local has = vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.get ~= nil
  if M.options.ghost == "builtin" then
    return has
  end
  return M.options.ghost == "auto" and has
end

return M
