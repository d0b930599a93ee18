"""Secrets by name in any case, by content around a prompt window, and in commit history."""

from __future__ import annotations

import pytest

from indexer.commits import commit_texts
from indexer.secrets import is_secret_path, secret_in_span

KEY_LINES = [f"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w{i:04d}" for i in range(40)]
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(KEY_LINES) + "\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    "path",
    [".env", ".ENV", "prod.ENV", ".envrc", ".env_local", ".env-prod", ".env.local", "cfg/.NETRC", "ID_RSA",
     "Server.PEM", "tls.KEY", "deploy/Credentials.json", "id_ed25519.pub"],
)  # fmt: skip
def test_secret_names_match_in_any_case(path):
    assert is_secret_path(path)


@pytest.mark.parametrize("path", ["environment.py", "envs/app.py", "README.md", "keyboard.py", "pem_tools.py"])
def test_ordinary_names_are_not_secrets(path):
    assert not is_secret_path(path)


def test_a_window_inside_a_key_block_is_a_secret():
    text = "import os\n\n" + KEY + "\ndef after():\n    return 1\n"
    inside = text.index(KEY_LINES[20])
    assert secret_in_span(text, inside, inside + 200) == "private_key"  # only base64 lines in view
    assert secret_in_span(text, 0, 60) == "private_key"  # the BEGIN line in view
    after = text.index("def after")
    assert secret_in_span(text, after, len(text)) is None  # past the END line
    assert secret_in_span(text, 0, 9) is None  # before the block
    prose = "# load the PRIVATE KEY from the vault\nx = 1\n"
    assert secret_in_span(prose, len(prose) - 6, len(prose)) is None  # a mention is not a block


def test_commit_summaries_hide_changes_inside_a_key(tmp_path):
    git = pytest.importorskip("git")
    repo = git.Repo.init(tmp_path)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Fixture Author")
        cw.set_value("user", "email", "fixture@example.com")
    (tmp_path / "deploy_key.txt").write_text(KEY)
    (tmp_path / "app.py").write_text("x = 1\n")
    repo.index.add(["deploy_key.txt", "app.py"])
    repo.index.commit("Add the deploy key")
    rotated = KEY.replace(KEY_LINES[20], "ROTATEDKEYMATERIALXYZ0123456789abcdefABCDEF")
    (tmp_path / "deploy_key.txt").write_text(rotated)
    (tmp_path / "app.py").write_text("x = 2\n")
    repo.index.add(["deploy_key.txt", "app.py"])
    repo.index.commit("Rotate the key")
    texts = dict(commit_texts(tmp_path, 5, 50))
    assert len(texts) == 2
    for text in texts.values():
        assert "deploy_key.txt" in text and "(diff not shown)" in text
        assert "ROTATED" not in text and not any(line in text for line in KEY_LINES)
    newest = next(iter(texts.values()))
    assert "+x = 2" in newest and "-x = 1" in newest  # other files keep their diff


def test_a_corrupt_object_is_one_warning_line(tmp_path, caplog):
    git = pytest.importorskip("git")
    repo = git.Repo.init(tmp_path)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Fixture Author")
        cw.set_value("user", "email", "fixture@example.com")
    for i in range(2):
        (tmp_path / "app.py").write_text(f"x = {i}\n")
        repo.index.add(["app.py"])
        repo.index.commit(f"Commit {i}")
    blob = repo.head.commit.tree["app.py"].hexsha
    obj = tmp_path / ".git" / "objects" / blob[:2] / blob[2:]
    obj.chmod(0o644)
    obj.write_bytes(b"not a zlib stream")
    with caplog.at_level("WARNING"):
        texts = commit_texts(tmp_path, 5, 50)
    assert len(texts) == 1  # the older commit still indexed
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all("\n" not in w for w in warnings), warnings
