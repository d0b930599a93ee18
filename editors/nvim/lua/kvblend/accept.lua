-- Accepting a suggestion, whole or in part, and the show/accept feedback the server counts.
local lsp = require("kvblend.lsp")

local M = {}

--- The part of `text` a partial accept takes: "all", "word" (leading blanks and one word or one run of
--- punctuation) or "line" (up to the end of the current line; from a leading newline, the next line).
---@param text string
---@param kind "all"|"word"|"line"
---@return string
function M.piece(text, kind)
  if kind == "word" then
    return text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text:match("^%s+") or text
  elseif kind == "line" then
    local head = text:match("^[^\n]*")
    if head ~= "" then
      return head
    end
    return text:match("^\n[^\n]*") or text
  end
  return text
end

--- Insert `piece` into the buffer over [start, end) (0-based row, byte col) and put the cursor after it.
---@param bufnr integer
---@param piece string
---@param srow integer
---@param scol integer
---@param erow integer
---@param ecol integer
function M.apply(bufnr, piece, srow, scol, erow, ecol)
  local lines = vim.split(piece, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, srow, scol, erow, ecol, lines)
  local win = vim.fn.bufwinid(bufnr)
  if win ~= -1 then
    local row = srow + #lines - 1
    local col = (#lines == 1 and scol or 0) + #lines[#lines]
    vim.api.nvim_win_set_cursor(win, { row + 1, col })
  end
end

-- Feedback: one didShow per suggestion shown; one didAccept per suggestion the user took any of, sent when
-- it is fully taken or when the next suggestion replaces it (so word-by-word accepts count once, with the
-- total length taken).
-- Lengths count characters, as the server does (Lua's # counts bytes).
local pending = nil ---@type {client: vim.lsp.Client, uri: string, text: string, len: integer, accepted: integer}?

local function notify(client, method, params)
  if client and not lsp.is_stopped(client) then
    lsp.notify(client, method, params)
  end
end

local function flush()
  if pending and pending.accepted > 0 then
    notify(pending.client, "kvblend/didAcceptCompletion", {
      uri = pending.uri,
      text = pending.text,
      acceptedLength = math.min(pending.accepted, pending.len),
    })
  end
  pending = nil
end

--- A suggestion was shown.
function M.shown(client, uri, text)
  if pending and pending.uri == uri and pending.text == text then
    return
  end
  flush()
  pending = { client = client, uri = uri, text = text, len = vim.fn.strchars(text), accepted = 0 }
  notify(client, "kvblend/didShowCompletion", { uri = uri, text = text })
end

--- `n` characters (not bytes) of the shown suggestion `text` were inserted.
function M.accepted(client, uri, text, n)
  if not (pending and pending.uri == uri and pending.text == text) then
    M.shown(client, uri, text)
  end
  pending.accepted = pending.accepted + n
  if pending.accepted >= pending.len then
    flush()
  end
end

return M
