// Smoke test: the compiled extension, activated in a fake VS Code host, starts the real `kvblend serve` through
// vscode-languageclient, shows its status, gets an inline completion, reports the accept, forwards settings.
// The server command comes from KVBLEND_SMOKE_SERVER (a JSON array), e.g. '["/path/python", "-m", "kvblend", "serve"]'.
/* eslint-disable @typescript-eslint/no-explicit-any */
import * as assert from "assert";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { until } from "./until";
import * as host from "./vscode-host";

const serverEnv = process.env.KVBLEND_SMOKE_SERVER;

const MAIN = 'from geometry import shapes\n\n\ndef diagonal(width, height):\n    """The diagonal of a width x height rectangle."""\n    return shapes.compute_hyp\n';
const SHAPES = 'def compute_hypotenuse_length(a, b):\n    return (a * a + b * b) ** 0.5\n';

async function stats(): Promise<any> {
  // A request that fails shows a message instead of a document: retry a few times, then report what was shown.
  for (let attempt = 0; attempt < 5; attempt++) {
    host.state.opened.length = 0;
    await host.commands.executeCommand("kvblend.showStats");
    const content = host.state.opened[0]?.content;
    if (content !== undefined) {
      return JSON.parse(String(content));
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`kvblend.showStats opened no document; messages: ${JSON.stringify(host.state.messages)}`);
}

(serverEnv ? describe : describe.skip)("extension against the real server", function () {
  this.timeout(240_000);
  const ext = () => require("../../src/extension");

  after(async () => {
    await ext().deactivate();
  });

  it("activates, completes, accepts and forwards settings", async () => {
    // A fixed workspace name: the server puts it in the prompt, and greedy decoding then answers the same.
    const root = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "kvblend-vscode-")), "ws");
    fs.mkdirSync(path.join(root, "geometry"), { recursive: true });
    fs.writeFileSync(path.join(root, "geometry", "shapes.py"), SHAPES);
    fs.writeFileSync(path.join(root, "main.py"), MAIN);
    const doc = new host.TextDocument(host.Uri.file(path.join(root, "main.py")), MAIN);
    host.state.documents.push(doc);
    host.state.workspaceFolder = { uri: host.Uri.file(root), name: "ws", index: 0 };
    host.state.config = {
      "kvblend.serverCommand": JSON.parse(serverEnv!),
      "kvblend.debounceMs": 0,
      "kvblend.warmupMs": 0,
      "kvblend.maxTokens": 16,
    };

    const context = { subscriptions: [] as { dispose(): void }[] };
    await ext().activate(context);
    const item = host.state.statusItems[0];
    await until(() => {
      if (item.text.startsWith("$(error)")) {
        throw new Error(`${item.tooltip}; messages: ${JSON.stringify(host.state.messages)}`);
      }
      return item.text.startsWith("$(check)");
    }, "the status bar to show ready", 180_000);
    assert.match(item.tooltip, /ready/);

    const { provider } = await until(() => host.state.providers[0], "the inline completion provider", 10_000);
    const token = { isCancellationRequested: false, onCancellationRequested: () => new host.Disposable() };
    const position = new host.Position(5, "    return shapes.compute_hyp".length);
    const context2 = { triggerKind: host.InlineCompletionTriggerKind.Automatic, selectedCompletionInfo: undefined };
    const result = await provider.provideInlineCompletionItems(doc, position, context2, token);
    const items = Array.isArray(result) ? result : result.items;
    assert.ok(items.length > 0, "the server answered with a suggestion");
    const text = typeof items[0].insertText === "string" ? items[0].insertText : items[0].insertText.value;
    assert.ok(text.length > 0);
    assert.strictEqual(items[0].command.command, "kvblend._didAccept");
    console.log(`      suggestion: ${JSON.stringify(text)}; status bar: ${item.text}`);
    assert.match(item.text, /^\$\(check\) kvblend \d+ ms$/);

    // VS Code runs the item's command when the user accepts it with Tab.
    await host.commands.executeCommand(items[0].command.command, ...items[0].command.arguments);
    let s = await stats();
    assert.strictEqual(s.server.shown, 1);
    assert.strictEqual(s.server.accepted, 1);
    assert.strictEqual(s.server.accepted_chars, Array.from(text).length);
    assert.strictEqual(s.settings.max_tokens, 16, "initializationOptions reached the server");

    // A settings change is forwarded without a restart.
    host.state.config["kvblend.maxTokens"] = 8;
    host.state.configChanged.fire({ affectsConfiguration: (sec: string) => sec === "kvblend" || sec === "kvblend.maxTokens" });
    for (let i = 0; i < 50 && (s = await stats()).settings.max_tokens !== 8; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.strictEqual(s.settings.max_tokens, 8);
    assert.deepStrictEqual(host.state.messages, [], "no warnings or errors shown");
  });
});
