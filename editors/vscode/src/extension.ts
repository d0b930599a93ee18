// kvblend for VS Code: start `kvblend serve` over stdio, show its inline completions as ghost text, forward
// settings, feed the status bar and report shown/accepted suggestions. The server does the work.
import * as vscode from "vscode";
import { LanguageClient, LanguageClientOptions, ServerOptions, State } from "vscode-languageclient/node";
import { AcceptTracker } from "./accept";
import { registerCommands } from "./commands";
import { inlineMiddleware } from "./inline";
import { initializationOptions, needsRestart, serverCommand, serverSettings } from "./config";
import { StatusBar } from "./status";

let client: LanguageClient | undefined;
// Set while the extension itself stops the client (restart, deactivate): that stop is not a crash.
let stopping = false;

const STATES: Record<number, "starting" | "running" | "stopped"> = {
  [State.Starting]: "starting",
  [State.Running]: "running",
  [State.Stopped]: "stopped",
};

/** A notification to the server; dropped (and logged) when it is not running rather than left to reject unhandled. */
function notify(output: vscode.LogOutputChannel, method: string, params: object): void {
  if (!client?.isRunning()) {
    return;
  }
  client.sendNotification(method, params).catch((err) => output.warn(`${method} not sent: ${err}`));
}

function createClient(output: vscode.LogOutputChannel, status: StatusBar, tracker: AcceptTracker): LanguageClient {
  const cfg = vscode.workspace.getConfiguration("kvblend");
  const { command, args } = serverCommand(cfg);
  const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  // No `transport`: TransportKind.stdio would append "--stdio" to the arguments; plain pipes are stdio already.
  const serverOptions: ServerOptions = { command, args, options: cwd ? { cwd } : {} };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: initializationOptions(cfg),
    outputChannel: output,
    middleware: {
      provideInlineCompletionItems: inlineMiddleware(
        tracker,
        (ms) => status.setLatency(ms),
        () => vscode.workspace.getConfiguration("kvblend").get<boolean>("enable", true),
      ),
    },
  };
  const lc = new LanguageClient("kvblend", "kvblend", serverOptions, clientOptions);
  lc.onNotification("kvblend/status", (params: unknown) => status.update(params));
  lc.onDidChangeState((e) => status.clientState(STATES[e.newState] ?? "stopped", stopping));
  return lc;
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel("kvblend", { log: true });
  const status = new StatusBar(vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100));
  const tracker = new AcceptTracker((method, params) => notify(output, method, params));

  async function start(): Promise<void> {
    try {
      client = createClient(output, status, tracker);
      await client.start();
      await vscode.commands.executeCommand("setContext", "kvblend.active", true);
    } catch (err) {
      client = undefined;
      status.update({ state: "error", message: `cannot start the server: ${(err as Error).message}` });
      void vscode.window.showErrorMessage(`kvblend: cannot start the server: ${(err as Error).message}`);
    }
  }

  async function stop(): Promise<void> {
    tracker.flush();
    const old = client;
    client = undefined;
    await vscode.commands.executeCommand("setContext", "kvblend.active", false);
    if (old) {
      stopping = true;
      await old.stop().catch((err) => output.appendLine(`stop failed: ${err}`));
      stopping = false;
    }
  }

  const restart = async () => {
    await stop();
    status.update({ state: "loading", message: "restarting" });
    await start();
  };

  context.subscriptions.push(
    output,
    status,
    ...registerCommands({ client: () => client, tracker, restart }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration("kvblend")) {
        return;
      }
      if (needsRestart((section) => e.affectsConfiguration(section))) {
        await restart();
      } else {
        const settings = { kvblend: serverSettings(vscode.workspace.getConfiguration("kvblend")) };
        notify(output, "workspace/didChangeConfiguration", { settings });
      }
    }),
  );
  await start();
}

export async function deactivate(): Promise<void> {
  const old = client;
  client = undefined;
  if (old) {
    stopping = true;
    await old.stop().catch(() => undefined);
    stopping = false;
  }
}
