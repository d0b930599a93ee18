import * as assert from "assert";
import * as vscode from "vscode";
import { AcceptTracker } from "../src/accept";
import { RequestClient, registerCommands, requestErrorMessage } from "../src/commands";
import { inlineMiddleware } from "../src/inline";
import * as mock from "./vscode-mock";

const URI = "file:///ws/app/main.py";

function setup(client?: RequestClient) {
  mock.reset();
  const sent: [string, Record<string, unknown>][] = [];
  const tracker = new AcceptTracker((m, p) => sent.push([m, p as Record<string, unknown>]));
  registerCommands({ client: () => client, tracker, restart: async () => undefined });
  return { sent, tracker };
}

function editorWith(text: string, line: number, character: number) {
  const document = new mock.MockDocument(text);
  const editor = { document, selection: { active: new mock.Position(line, character) } };
  mock.window.activeTextEditor = editor;
  return editor;
}

describe("commands", () => {
  it("accept word runs VS Code's command and counts the characters it inserted", async () => {
    const { sent, tracker } = setup();
    const editor = editorWith("    return shapes.compute_hy", 0, 28);
    tracker.shown(URI, "potenuse_length(a, b)");
    // VS Code's built-in partial accept, as the mock sees it: insert the next word and move the cursor.
    mock.commands.registerCommand("editor.action.inlineSuggest.acceptNextWord", () => {
      editor.document.insert(28, "potenuse_length");
      editor.selection.active = new mock.Position(0, 28 + "potenuse_length".length);
    });
    await mock.commands.executeCommand("kvblend.acceptWord");
    assert.strictEqual(editor.document.text, "    return shapes.compute_hypotenuse_length");
    // The rest accepted with Tab: VS Code runs the item's command.
    await mock.commands.executeCommand("kvblend._didAccept", URI, "potenuse_length(a, b)");
    assert.deepStrictEqual(sent[1], [
      "kvblend/didAcceptCompletion",
      { uri: URI, text: "potenuse_length(a, b)", acceptedLength: 21 },
    ]);
    assert.strictEqual(sent.length, 2);
  });

  it("a partial accept that inserted nothing counts nothing", async () => {
    const { sent, tracker } = setup();
    editorWith("x = ", 0, 4);
    tracker.shown(URI, "1");
    mock.commands.registerCommand("editor.action.inlineSuggest.acceptNextLine", () => undefined);
    await mock.commands.executeCommand("kvblend.acceptLine");
    tracker.flush();
    assert.deepStrictEqual(sent.map(([m]) => m), ["kvblend/didShowCompletion"]);
  });

  it("capsule commands tell the user when the server has no capsules", async () => {
    const client: RequestClient = {
      sendRequest: async (method: string) => {
        throw Object.assign(new Error(`Unhandled method ${method}`), { code: -32601 });
      },
    };
    setup(client);
    editorWith("x = 1\n", 1, 0);
    await mock.commands.executeCommand("kvblend.capsuleSnapshot");
    assert.deepStrictEqual(mock.messages, [
      { kind: "warning", text: "kvblend: this server does not support kvblend/capsule.snapshot (upgrade kvblend)." },
    ]);
    assert.strictEqual(requestErrorMessage("kvblend/stats", { code: -32603, message: "boom" }), "kvblend: kvblend/stats failed: boom");
  });

  it("snapshot then fork sends the snapshot's id; restore picks from the list", async () => {
    const calls: [string, unknown][] = [];
    const answers: Record<string, unknown> = {
      "kvblend/capsule.snapshot": { id: "c1", uri: URI, n_tokens: 120, parent: null },
      "kvblend/capsule.fork": { branches: ["b1", "b2"] },
      "kvblend/capsule.list": [{ id: "c1", uri: URI, n_tokens: 120 }, { id: "c0", uri: URI, n_tokens: 80 }],
      "kvblend/capsule.restore": { id: "c0", uri: URI },
    };
    setup({ sendRequest: async (m, p) => (calls.push([m, p]), answers[m]) });
    editorWith("x = 1\n", 1, 0);
    await mock.commands.executeCommand("kvblend.capsuleSnapshot");
    await mock.commands.executeCommand("kvblend.capsuleFork");
    mock.answerQuickPick((items) => items.find((i) => i.label === "c0"));
    await mock.commands.executeCommand("kvblend.capsuleRestore");
    assert.deepStrictEqual(calls, [
      ["kvblend/capsule.snapshot", { uri: URI }],
      ["kvblend/capsule.fork", { id: "c1", n: 2 }],
      ["kvblend/capsule.list", { uri: URI }],
      ["kvblend/capsule.restore", { id: "c0" }],
    ]);
    assert.match(mock.messages[1].text, /forked c1 into b1, b2/);
    assert.match(mock.messages[2].text, /restored c0/);
  });

  it("show stats opens the server's statistics as JSON", async () => {
    setup({ sendRequest: async () => ({ acceptance_rate: 0.5, counters: { finished: 3 } }) });
    await mock.commands.executeCommand("kvblend.showStats");
    assert.strictEqual(mock.opened[0].language, "json");
    assert.deepStrictEqual(JSON.parse(String(mock.opened[0].content)), { acceptance_rate: 0.5, counters: { finished: 3 } });
  });
});

describe("inline completion middleware", () => {
  const doc = { uri: { toString: () => URI } } as unknown as vscode.TextDocument;
  const pos = new mock.Position(0, 0) as unknown as vscode.Position;
  const ctx = {} as vscode.InlineCompletionContext;
  const token = { isCancellationRequested: false } as vscode.CancellationToken;

  it("reports the first item as shown and attaches the accept command to every item", async () => {
    const sent: [string, Record<string, unknown>][] = [];
    const tracker = new AcceptTracker((m, p) => sent.push([m, p as Record<string, unknown>]));
    let latency = -1;
    const mw = inlineMiddleware(tracker, (ms) => (latency = ms), () => true);
    const items = [{ insertText: "(self)" }, { insertText: { value: "(a, b)" } }] as unknown as vscode.InlineCompletionItem[];
    const result = (await mw(doc, pos, ctx, token, async () => ({ items }))) as vscode.InlineCompletionList;
    assert.deepStrictEqual(sent, [["kvblend/didShowCompletion", { uri: URI, text: "(self)" }]]);
    assert.ok(latency >= 0);
    assert.deepStrictEqual(result.items[0].command, { title: "kvblend: accepted", command: "kvblend._didAccept", arguments: [URI, "(self)"] });
    assert.deepStrictEqual(result.items[1].command?.arguments, [URI, "(a, b)"]);
  });

  it("an empty answer shows nothing; disabled asks nothing", async () => {
    const sent: unknown[] = [];
    const tracker = new AcceptTracker((m, p) => sent.push([m, p]));
    let asked = 0;
    const next = async () => ((asked += 1), { items: [] });
    await inlineMiddleware(tracker, () => undefined, () => true)(doc, pos, ctx, token, next);
    assert.deepStrictEqual(await inlineMiddleware(tracker, () => undefined, () => false)(doc, pos, ctx, token, next), []);
    assert.strictEqual(asked, 1);
    assert.deepStrictEqual(sent, []);
  });
});
