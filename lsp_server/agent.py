"""Capsule requests (`kvblend/capsule.*`) and agent edits (`kvblend/applyAgentEdit`) of the language server.

A mixin of `Backend`, which provides `server` (the pygls server), `loop`, `executor` (the model thread), `root`,
`completer` and `_completer()` (the completer once loaded), and calls `_init_edits` from its constructor.
"""

from __future__ import annotations

import logging

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from lsp_server import methods

log = logging.getLogger(__name__)


class CapsulesAndEdits:
    def _init_edits(self) -> None:
        self._gate = None  # the ledger's gate, and the policy file's mtime it was built for
        self._gate_stamp = None

    async def capsule(self, method: str, params: dict):
        """Run a kvblend/capsule.* request on the model thread (it touches live sessions)."""
        completer = await self._completer()
        keeper = completer.capsules
        if keeper is None:
            raise JsonRpcInvalidParams("capsules are off in this server")
        calls = {
            methods.CAPSULE_SNAPSHOT: lambda: completer.capsule_snapshot(params["uri"]),
            methods.CAPSULE_RESTORE: lambda: keeper.pin(params["id"]),
            methods.CAPSULE_UNDO: lambda: keeper.undo(params["uri"]),
            methods.CAPSULE_FORK: lambda: {"branches": keeper.fork(params["id"], params["n"])},
            methods.CAPSULE_LIST: lambda: keeper.list(params.get("uri")),
            methods.CAPSULE_DROP: lambda: {"dropped": keeper.drop(params["id"])},
        }
        try:
            return await self.loop.run_in_executor(self.executor, calls[method])
        except ValueError as e:  # unknown capsule, no live session, fork n < 1
            raise JsonRpcInvalidParams(f"{method}: {e}") from None

    def gate(self):
        """The ledger's gate for this workspace, rebuilt when the policy file changes (a broken policy denies)."""
        from ledger import Gate, LedgerConfig

        if self.root is None:
            raise JsonRpcInvalidParams("applyAgentEdit needs a workspace folder")
        policy = self.root / LedgerConfig().policy_file
        stamp = policy.stat().st_mtime_ns if policy.exists() else None
        if self._gate is None or self._gate_stamp != stamp:
            self._gate, self._gate_stamp = Gate(self.root), stamp
        return self._gate

    async def apply_agent_edit(self, params: dict) -> dict:
        """Check an agent's WorkspaceEdit with the ledger; an allowed one is snapshotted (capsules of the
        open documents it touches) and sent to the client as workspace/applyEdit."""
        from lsp_server.convert import lsp_file_changes, lsp_workspace_edit

        edit = lsp_workspace_edit(params.get("edit"), methods.APPLY_AGENT_EDIT)
        changes = lsp_file_changes(edit, self.server.workspace, self.root)
        gate = self.gate()
        decision = await self.loop.run_in_executor(None, gate.check, changes, bool(params.get("approved")))
        out = decision.to_dict() | {"applied": False}
        if not decision.allowed:
            return out
        if self.completer is not None and self.completer.capsules is not None:
            for uri in {u for u in (edit.changes or {})} | {
                op.text_document.uri for op in edit.document_changes or [] if isinstance(op, types.TextDocumentEdit)
            }:
                try:
                    out.setdefault("capsules", []).append(
                        (await self.loop.run_in_executor(self.executor, self.completer.capsule_snapshot, uri))["id"]
                    )
                except ValueError:
                    pass  # no live session for that document: nothing to keep
        try:
            result = await self.server.workspace_apply_edit_async(
                types.ApplyWorkspaceEditParams(edit=edit, label=params.get("label") or "kvblend agent edit")
            )
        except Exception as e:  # an error response, or one that is no ApplyWorkspaceEditResult (null)
            log.warning("workspace/applyEdit failed: %s", e)
            out["failureReason"] = f"the client did not answer workspace/applyEdit with a result: {e}"
            return out
        out["applied"] = bool(result.applied)
        if not result.applied:
            out["failureReason"] = result.failure_reason or "the client did not apply the edit"
        return out
