// Inline completion middleware: the language client fetches the items; this counts what is shown, measures
// the round trip and gives each item a command that VS Code runs when the item is accepted in full.
import * as vscode from "vscode";
import { AcceptTracker } from "./accept";

type Result = vscode.InlineCompletionItem[] | vscode.InlineCompletionList | null | undefined;
type Next = (
  document: vscode.TextDocument,
  position: vscode.Position,
  context: vscode.InlineCompletionContext,
  token: vscode.CancellationToken,
) => vscode.ProviderResult<vscode.InlineCompletionItem[] | vscode.InlineCompletionList>;

export function insertText(item: vscode.InlineCompletionItem): string {
  return typeof item.insertText === "string" ? item.insertText : item.insertText.value;
}

export function inlineMiddleware(tracker: AcceptTracker, onLatency: (ms: number) => void, enabled: () => boolean) {
  return async (
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
    next: Next,
  ): Promise<Result> => {
    if (!enabled()) {
      return [];
    }
    const t0 = Date.now();
    const result = await next(document, position, context, token);
    const items = Array.isArray(result) ? result : (result?.items ?? []);
    if (items.length > 0 && !token.isCancellationRequested) {
      onLatency(Date.now() - t0);
      const uri = document.uri.toString();
      tracker.shown(uri, insertText(items[0]));
      for (const item of items) {
        item.command = { title: "kvblend: accepted", command: "kvblend._didAccept", arguments: [uri, insertText(item)] };
      }
    }
    return result;
  };
}
