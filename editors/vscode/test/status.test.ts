import * as assert from "assert";
import { StatusBar, statusView } from "../src/status";
import * as vscode from "vscode";
import { MockStatusBarItem } from "./vscode-mock";

function bar(): { item: MockStatusBarItem; status: StatusBar } {
  const item = new MockStatusBarItem();
  return { item, status: new StatusBar(item as unknown as vscode.StatusBarItem) };
}

describe("status bar", () => {
  it("shows loading, indexing progress, ready with latency, and errors", () => {
    const { item, status } = bar();
    assert.ok(item.visible);
    assert.strictEqual(item.command, "kvblend.showStats");
    assert.strictEqual(item.text, "$(loading~spin) kvblend");

    status.update({ state: "indexing", message: "3/10 chunks", done: 3, total: 10 });
    assert.strictEqual(item.text, "$(sync~spin) kvblend 3/10");

    status.update({ state: "ready", message: "indexed 4 files, 10 chunks" });
    assert.strictEqual(item.text, "$(check) kvblend");
    assert.match(String(item.tooltip), /indexed 4 files/);
    status.setLatency(87.6);
    assert.strictEqual(item.text, "$(check) kvblend 88 ms");
    status.update({ state: "ready", message: "", lastLatencyMs: 41.2 });
    assert.strictEqual(item.text, "$(check) kvblend 41 ms", "the server's own latency wins");
    assert.strictEqual(item.backgroundColor, undefined);

    status.update({ state: "error", message: "model load failed: no config.json" });
    assert.strictEqual(item.text, "$(error) kvblend");
    assert.match(String(item.tooltip), /no config.json/);
    assert.strictEqual((item.backgroundColor as { id: string } | undefined)?.id, "statusBarItem.errorBackground");
  });

  it("ignores malformed notifications", () => {
    const { item, status } = bar();
    status.update({ state: "indexing", done: 1, total: 2 });
    for (const bad of [null, 5, "ready", { message: "no state" }]) {
      status.update(bad);
    }
    assert.strictEqual(item.text, "$(sync~spin) kvblend 1/2");
  });

  it("the client's own states: starting, a requested stop, a crash", () => {
    const { item, status } = bar();
    status.update({ state: "ready", message: "" });
    status.clientState("stopped", false);
    assert.strictEqual(item.text, "$(error) kvblend");
    assert.match(String(item.tooltip), /stopped unexpectedly/);
    status.clientState("starting");
    assert.strictEqual(item.text, "$(loading~spin) kvblend");
    status.clientState("running"); // the server reports its own state from here
    assert.strictEqual(item.text, "$(loading~spin) kvblend");
    status.clientState("stopped", true);
    assert.strictEqual(item.text, "$(circle-slash) kvblend");
  });

  it("indexing before the total is known shows no fraction", () => {
    assert.strictEqual(statusView({ state: "indexing", done: 0, total: 0 }).text, "$(sync~spin) kvblend");
  });
});
