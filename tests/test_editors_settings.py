"""The editors' settings stay in step with the server's: every `kvblend.*` completion setting the VS Code
extension declares is a Settings field with the same default, and the payload it sends raises no warning."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from kvblend.settings import Settings

EDITORS = Path(__file__).resolve().parents[1] / "editors"
CLIENT_KEYS = {"enable", "serverCommand", "model", "redisUrl"}  # the extension's own, read at start-up


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def vscode_properties() -> dict:
    manifest = json.loads((EDITORS / "vscode" / "package.json").read_text())
    props = manifest["contributes"]["configuration"]["properties"]
    return {key.removeprefix("kvblend."): spec for key, spec in props.items()}


def test_vscode_declares_every_setting_with_the_server_default():
    props = vscode_properties()
    fields = {camel(f.name): f for f in dataclasses.fields(Settings)}
    assert set(props) - CLIENT_KEYS == set(fields)
    for key, f in fields.items():
        assert props[key]["default"] == f.default, key
        kind = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}[str(f.type)]
        assert props[key]["type"] == kind, key


def test_vscode_payload_is_accepted_without_warnings():
    # What src/config.ts sends: the completion settings, plus model and redisUrl (read by the server at start-up).
    payload = {key: spec["default"] for key, spec in vscode_properties().items()}
    del payload["serverCommand"], payload["enable"]
    settings, warnings = Settings.from_options({"kvblend": payload})
    assert warnings == [] and settings == Settings()


def test_vscode_config_module_lists_the_same_settings():
    source = (EDITORS / "vscode" / "src" / "config.ts").read_text()
    block = source[source.index("SERVER_SETTINGS = [") : source.index("] as const")]
    assert set(re.findall(r'"(\w+)"', block)) == {camel(f.name) for f in dataclasses.fields(Settings)}
