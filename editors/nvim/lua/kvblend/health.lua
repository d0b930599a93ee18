-- :checkhealth kvblend
local M = {}

function M.check()
  local health = vim.health
  local config = require("kvblend.config")
  local opts = config.options
  health.start("kvblend")

  local v = vim.version()
  if vim.lsp.inline_completion then
    health.ok(("Neovim %d.%d.%d: builtin inline completion available"):format(v.major, v.minor, v.patch))
  elseif vim.fn.has("nvim-0.10") == 1 then
    health.warn(("Neovim %d.%d.%d: no vim.lsp.inline_completion; using extmark ghost text"):format(v.major, v.minor, v.patch),
      { "Neovim 0.12 or later renders suggestions natively" })
  else
    health.error("Neovim 0.10 or later is required")
  end
  health.info("ghost text engine: " .. (config.use_builtin() and "builtin" or "extmark"))

  local exe = opts.cmd and opts.cmd[1]
  if not exe or vim.fn.executable(exe) ~= 1 then
    health.error(("server command not found: %s"):format(vim.inspect(opts.cmd)),
      { "pip install kvblend, or setup({ cmd = { '/path/to/python', '-m', 'kvblend', 'serve' } })" })
  else
    health.ok(("server command: %s"):format(table.concat(opts.cmd, " ")))
  end
  if opts.model and vim.fn.isdirectory(opts.model) ~= 1 then
    health.error(("model directory does not exist: %s"):format(opts.model))
  end

  local clients = vim.lsp.get_clients({ name = "kvblend" })
  if #clients == 0 then
    health.info("no kvblend server running (open a file to start one)")
    return
  end
  for _, c in ipairs(clients) do
    local s = require("kvblend.status").state
    local line = ("client %d (root %s): %s %s"):format(c.id, c.root_dir or "?", s.state, s.message or "")
    if s.state == "error" then
      health.error(line)
    elseif c.server_capabilities and c.server_capabilities.inlineCompletionProvider then
      health.ok(line)
    else
      health.warn(line, { "the server does not advertise textDocument/inlineCompletion yet" })
    end
  end
end

return M
