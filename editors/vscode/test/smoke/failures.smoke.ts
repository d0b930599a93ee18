// The client's failure paths in the fake host, against stand-in servers (test/smoke/fake-server.ts): no model or
// real server needed, so these run in every CI run.
/* eslint-disable @typescript-eslint/no-explicit-any */
import * as assert from "assert";
import * as path from "path";
import { until } from "./until";
import * as host from "./vscode-host";

const FAKE = path.join(__dirname, "fake-server.js");

describe("extension when the server fails", function () {
  this.timeout(60_000);
  const ext = () => require("../../src/extension");

  beforeEach(() => {
    host.state.statusItems.length = 0;
    host.state.messages.length = 0;
    host.state.documents.length = 0;
    host.state.providers.length = 0;
  });

  afterEach(async () => {
    await ext().deactivate();
  });

  it("a server that exits at start: one message, the status bar in error", async () => {
    host.state.config = { "kvblend.serverCommand": [process.execPath, FAKE, "exit"] };
    await ext().activate({ subscriptions: [] });
    const item = host.state.statusItems[0];
    assert.match(item.text, /^\$\(error\)/);
    assert.match(item.tooltip, /cannot start the server/);
    assert.strictEqual(host.state.messages.filter((m) => m.startsWith("kvblend: cannot start")).length, 1);
  });

  it("a crash mid-session leaves the status bar in error, not ready; feedback and settings are dropped quietly", async () => {
    host.state.config = { "kvblend.serverCommand": [process.execPath, FAKE, "crash"] };
    const context = { subscriptions: [] as { dispose(): void }[] };
    await ext().activate(context);
    const item = host.state.statusItems[0];
    // vscode-languageclient restarts a crashed server 4 times, then gives up (and says so).
    await until(() => host.state.messages.find((m) => /will not be restarted/.test(m)), "the client to give up", 30_000);
    // The item used to keep showing ready ("$(check) kvblend") after the server was gone.
    await until(() => item.text === "$(error) kvblend", `the status bar to show the error, not ${item.text}`, 10_000);
    assert.match(item.tooltip, /stopped unexpectedly/);
    // Accept feedback and a settings change to the stopped client used to reject unhandled.
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    const mochaHandlers = process.listeners("unhandledRejection");
    process.removeAllListeners("unhandledRejection");
    process.on("unhandledRejection", onUnhandled);
    try {
      await host.commands.executeCommand("kvblend._didAccept", "file:///ws/main.py", "x");
      host.state.config["kvblend.maxTokens"] = 8;
      host.state.configChanged.fire({ affectsConfiguration: (s: string) => s === "kvblend" || s === "kvblend.maxTokens" });
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      process.removeListener("unhandledRejection", onUnhandled);
      mochaHandlers.forEach((h) => process.on("unhandledRejection", h));
    }
    assert.deepStrictEqual(unhandled.map(String), []);
    for (const d of context.subscriptions) {
      d.dispose();
    }
  });
});
