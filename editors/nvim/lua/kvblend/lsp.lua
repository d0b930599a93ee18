-- Client method calls across Neovim versions: 0.11 made them methods (client:request); 0.10 has fields
-- called with a dot (client.request).
local M = {}

local methods = vim.fn.has("nvim-0.11") == 1

function M.request(client, method, params, handler, bufnr)
  if methods then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.notify(client, method, params)
  if methods then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.cancel(client, id)
  if methods then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

function M.is_stopped(client)
  if methods then
    return client:is_stopped()
  end
  return client.is_stopped()
end

function M.stop(client, force)
  if methods then
    return client:stop(force)
  end
  return client.stop(force)
end

return M
