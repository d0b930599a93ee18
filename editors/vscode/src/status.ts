// The status bar item, fed by the server's kvblend/status notification and the client's latency measurements.
import * as vscode from "vscode";

/** kvblend/status {state, message, done?, total?, lastLatencyMs?} (lsp_server/methods.py). */
export interface StatusParams {
  state: "loading" | "indexing" | "ready" | "error" | "off";
  message?: string;
  done?: number;
  total?: number;
  lastLatencyMs?: number;
}

export interface StatusView {
  text: string;
  tooltip: string;
  error: boolean;
}

/** What the item shows for a status and the last completion latency (ms, when known). */
export function statusView(s: StatusParams, latencyMs?: number): StatusView {
  const message = s.message ?? "";
  switch (s.state) {
    case "loading":
      return { text: "$(loading~spin) kvblend", tooltip: `kvblend: ${message || "loading"}`, error: false };
    case "indexing": {
      const progress = s.total ? ` ${s.done ?? 0}/${s.total}` : "";
      return { text: `$(sync~spin) kvblend${progress}`, tooltip: `kvblend: indexing ${message}`.trim(), error: false };
    }
    case "ready": {
      const ms = s.lastLatencyMs ?? latencyMs;
      const latency = ms !== undefined ? ` ${Math.round(ms)} ms` : "";
      const tip = `kvblend: ready${message ? ` (${message})` : ""}${latency ? `; last completion${latency}` : ""}`;
      return { text: `$(check) kvblend${latency}`, tooltip: `${tip}. Click for statistics.`, error: false };
    }
    case "error":
      return { text: "$(error) kvblend", tooltip: `kvblend: ${message || "error"}`, error: true };
    default:
      return { text: "$(circle-slash) kvblend", tooltip: `kvblend: ${message || "not running"}`, error: false };
  }
}

export class StatusBar implements vscode.Disposable {
  private status: StatusParams = { state: "loading", message: "starting" };
  private latencyMs: number | undefined;

  constructor(private readonly item: vscode.StatusBarItem) {
    item.command = "kvblend.showStats";
    this.render();
    item.show();
  }

  /** Handler of the kvblend/status notification (malformed params are ignored). */
  update(params: unknown): void {
    if (params && typeof params === "object" && typeof (params as StatusParams).state === "string") {
      this.status = params as StatusParams;
      this.render();
    }
  }

  /**
   * The language client's state. The server reports its own states while it runs; when it stops, only the client
   * knows: a stop the extension asked for shows "not running", any other (a crash, a failed restart) an error, so
   * that the item no longer says ready.
   */
  clientState(state: "starting" | "running" | "stopped", requested = false): void {
    if (state === "starting") {
      this.update({ state: "loading", message: "starting the server" });
    } else if (state === "stopped") {
      this.update(
        requested
          ? { state: "off", message: "server stopped" }
          : { state: "error", message: "the server stopped unexpectedly; see the kvblend output, or run kvblend: Restart the server" },
      );
    }
  }

  /** The client's own measurement of a completion round trip. */
  setLatency(ms: number): void {
    this.latencyMs = ms;
    this.render();
  }

  get current(): StatusParams {
    return this.status;
  }

  private render(): void {
    const view = statusView(this.status, this.latencyMs);
    this.item.text = view.text;
    this.item.tooltip = view.tooltip;
    this.item.backgroundColor = view.error ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  }

  dispose(): void {
    this.item.dispose();
  }
}
