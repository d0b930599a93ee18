// The extension's commands: manual trigger, word/line accept, statistics, capsules, restart.
import * as vscode from "vscode";
import { AcceptTracker, charLength } from "./accept";

/** The part of a language client the commands use (a LanguageClient fits). */
export interface RequestClient {
  sendRequest(method: string, params: unknown): Promise<unknown>;
}

export interface CommandContext {
  client(): RequestClient | undefined;
  tracker: AcceptTracker;
  restart(): Promise<void>;
}

const METHOD_NOT_FOUND = -32601;

/** Capsule info as the server lists it (capsule/store.py `info`). */
export interface CapsuleInfo {
  id: string;
  uri?: string;
  n_tokens?: number;
  parent?: string | null;
  created?: number;
  where?: string;
}

/** The message to show for a failed request; MethodNotFound means a server without that command. */
export function requestErrorMessage(method: string, err: unknown): string {
  const e = err as { code?: number; message?: string };
  if (e && e.code === METHOD_NOT_FOUND) {
    return `kvblend: this server does not support ${method} (upgrade kvblend).`;
  }
  return `kvblend: ${method} failed: ${e?.message ?? String(err)}`;
}

export function capsuleLabel(info: CapsuleInfo): { label: string; description: string } {
  const name = info.uri ? decodeURIComponent(info.uri.split("/").pop() ?? info.uri) : "";
  const parts = [name, info.n_tokens !== undefined ? `${info.n_tokens} tokens` : "", info.parent ? `parent ${info.parent}` : ""];
  return { label: info.id, description: parts.filter((p) => p).join(" · ") };
}

export function registerCommands(ctx: CommandContext): vscode.Disposable[] {
  // The capsule each document was last snapshotted, restored or undone to: the default for fork.
  const current = new Map<string, string>();

  async function request<T>(method: string, params: unknown): Promise<T | undefined> {
    const client = ctx.client();
    if (!client) {
      void vscode.window.showWarningMessage("kvblend: the server is not running.");
      return undefined;
    }
    try {
      return (await client.sendRequest(method, params)) as T;
    } catch (err) {
      const message = requestErrorMessage(method, err);
      void ((err as { code?: number })?.code === METHOD_NOT_FOUND
        ? vscode.window.showWarningMessage(message)
        : vscode.window.showErrorMessage(message));
      return undefined;
    }
  }

  function activeUri(): string | undefined {
    const uri = vscode.window.activeTextEditor?.document.uri.toString();
    if (!uri) {
      void vscode.window.showWarningMessage("kvblend: no active editor.");
    }
    return uri;
  }

  async function pickCapsule(placeHolder: string): Promise<string | undefined> {
    const uri = vscode.window.activeTextEditor?.document.uri.toString();
    const infos = await request<CapsuleInfo[]>("kvblend/capsule.list", uri ? { uri } : {});
    if (!infos) {
      return undefined;
    }
    if (infos.length === 0) {
      void vscode.window.showInformationMessage("kvblend: no capsules for this document.");
      return undefined;
    }
    const picked = await vscode.window.showQuickPick(infos.map(capsuleLabel), { placeHolder });
    return picked?.label;
  }

  // A partial accept: run VS Code's own command, then count what it inserted.
  async function acceptPart(builtin: string): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    if (!editor) {
      return;
    }
    const doc = editor.document;
    const uri = doc.uri.toString();
    const text = ctx.tracker.current(uri);
    const before = editor.selection.active;
    const version = doc.version;
    await vscode.commands.executeCommand(builtin);
    const after = editor.selection.active;
    if (text !== undefined && doc.version !== version && after.isAfter(before)) {
      ctx.tracker.accepted(uri, text, charLength(doc.getText(new vscode.Range(before, after))));
    }
  }

  const register = vscode.commands.registerCommand;
  return [
    register("kvblend.trigger", () => vscode.commands.executeCommand("editor.action.inlineSuggest.trigger")),
    register("kvblend.acceptWord", () => acceptPart("editor.action.inlineSuggest.acceptNextWord")),
    register("kvblend.acceptLine", () => acceptPart("editor.action.inlineSuggest.acceptNextLine")),
    // Run by VS Code after an inline item is accepted in full (the item's command).
    register("kvblend._didAccept", (uri: string, text: string) => ctx.tracker.acceptedAll(uri, text)),
    register("kvblend.showStats", async () => {
      const stats = await request<object>("kvblend/stats", {});
      if (stats) {
        const doc = await vscode.workspace.openTextDocument({ language: "json", content: JSON.stringify(stats, null, 2) });
        await vscode.window.showTextDocument(doc, { preview: true });
      }
    }),
    register("kvblend.restartServer", () => ctx.restart()),
    register("kvblend.capsuleSnapshot", async () => {
      const uri = activeUri();
      const info = uri && (await request<CapsuleInfo>("kvblend/capsule.snapshot", { uri }));
      if (uri && info) {
        current.set(uri, info.id);
        const { label, description } = capsuleLabel(info);
        void vscode.window.showInformationMessage(`kvblend: capsule ${label} (${description})`);
      }
    }),
    register("kvblend.capsuleList", async () => {
      const uri = vscode.window.activeTextEditor?.document.uri.toString();
      const infos = await request<CapsuleInfo[]>("kvblend/capsule.list", uri ? { uri } : {});
      if (infos) {
        await vscode.window.showQuickPick(infos.map(capsuleLabel), { placeHolder: `${infos.length} capsules` });
      }
    }),
    register("kvblend.capsuleRestore", async (id?: string) => {
      id = id ?? (await pickCapsule("Capsule to resume from"));
      const info = id && (await request<CapsuleInfo>("kvblend/capsule.restore", { id }));
      if (id && info) {
        current.set(info.uri ?? vscode.window.activeTextEditor?.document.uri.toString() ?? "", id);
        void vscode.window.showInformationMessage(`kvblend: restored ${id}; the next completion resumes from it.`);
      }
    }),
    register("kvblend.capsuleUndo", async () => {
      const uri = activeUri();
      if (!uri) {
        return;
      }
      const info = await request<CapsuleInfo | null>("kvblend/capsule.undo", { uri });
      if (info) {
        current.set(uri, info.id);
        void vscode.window.showInformationMessage(`kvblend: back to capsule ${info.id}.`);
      } else if (info === null) {
        void vscode.window.showInformationMessage("kvblend: nothing to undo.");
      }
    }),
    register("kvblend.capsuleFork", async () => {
      const uri = activeUri();
      const id = (uri && current.get(uri)) || (await pickCapsule("Capsule to fork"));
      if (!id) {
        return;
      }
      const answer = await vscode.window.showInputBox({ prompt: "Number of branches", value: "2",
        validateInput: (v) => (/^[1-9]\d*$/.test(v) ? undefined : "a positive integer") });  // prettier-ignore
      if (!answer) {
        return;
      }
      const result = await request<{ branches?: string[]; ids?: string[] }>("kvblend/capsule.fork", { id, n: Number(answer) });
      if (result) {
        const ids = result.branches ?? result.ids ?? [];
        void vscode.window.showInformationMessage(`kvblend: forked ${id} into ${ids.join(", ")}.`);
      }
    }),
    register("kvblend.capsuleDrop", async (id?: string) => {
      id = id ?? (await pickCapsule("Capsule to drop"));
      const result = id && (await request<{ dropped?: boolean }>("kvblend/capsule.drop", { id }));
      if (id && result) {
        void vscode.window.showInformationMessage(`kvblend: ${id} ${result.dropped ? "dropped" : "not found"}.`);
      }
    }),
  ];
}
