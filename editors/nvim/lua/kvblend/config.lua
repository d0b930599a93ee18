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

---@param opts table|nil
---@return table
function M.set(opts)
  opts = opts or {}
  vim.validate("opts.cmd", opts.cmd, "table", true)
  vim.validate("opts.settings", opts.settings, "table", true)
  vim.validate("opts.filetypes", opts.filetypes, "table", true)
  if opts.ghost ~= nil and not vim.tbl_contains({ "auto", "builtin", "extmark" }, opts.ghost) then
    error(("kvblend: ghost must be auto, builtin or extmark, got %s"):format(vim.inspect(opts.ghost)))
  end
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts)
  -- A list given by the user replaces the default list instead of merging index by index.
  for _, key in ipairs({ "cmd", "filetypes", "root_markers" }) do
    if opts[key] ~= nil then
      M.options[key] = opts[key]
    end
  end
  return M.options
end

--- The initializationOptions sent to the server: the completion settings plus the client-level keys it reads.
---@return table
function M.init_options()
  local out = vim.deepcopy(M.options.settings or {})
  if M.options.model then
    out.model = M.options.model
  end
  return out
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
