// A fake VS Code host just rich enough for vscode-languageclient to start a real server: the smoke test
// activates the compiled extension in it and drives inline completion through the real language client.
/* eslint-disable @typescript-eslint/no-explicit-any */
import * as path from "path";

export class Position {
  constructor(
    public readonly line: number,
    public readonly character: number,
  ) {}
  isAfter(o: Position): boolean {
    return this.line > o.line || (this.line === o.line && this.character > o.character);
  }
  isEqual(o: Position): boolean {
    return this.line === o.line && this.character === o.character;
  }
}
export class Range {
  start: Position;
  end: Position;
  constructor(a: any, b: any, c?: number, d?: number) {
    [this.start, this.end] = typeof a === "number" ? [new Position(a, b), new Position(c!, d!)] : [a, b];
  }
  get isEmpty(): boolean {
    return this.start.isEqual(this.end);
  }
}
export class Uri {
  constructor(
    public readonly scheme: string,
    public readonly fsPath: string,
  ) {}
  get path(): string {
    return this.fsPath;
  }
  static file(p: string): Uri {
    return new Uri("file", path.resolve(p));
  }
  static parse(s: string): Uri {
    const m = /^([a-z]+):\/\/(.*)$/.exec(s);
    return m ? new Uri(m[1], decodeURIComponent(m[2])) : new Uri("untitled", s);
  }
  toString(): string {
    return `${this.scheme}://${this.fsPath.split("/").map(encodeURIComponent).join("/")}`;
  }
  toJSON(): string {
    return this.toString();
  }
  with(): Uri {
    return this;
  }
}
export class Disposable {
  constructor(private readonly fn: () => void = () => undefined) {}
  static from(...ds: { dispose(): unknown }[]): Disposable {
    return new Disposable(() => ds.forEach((d) => d.dispose()));
  }
  dispose(): void {
    this.fn();
  }
}
export class EventEmitter<T> {
  private listeners: ((e: T) => void)[] = [];
  event = (fn: (e: T) => void) => {
    this.listeners.push(fn);
    return new Disposable(() => (this.listeners = this.listeners.filter((l) => l !== fn)));
  };
  fire(e: T): void {
    this.listeners.forEach((l) => l(e));
  }
  dispose(): void {
    this.listeners = [];
  }
}
export class SnippetString {
  constructor(public value = "") {}
}
export class MarkdownString {
  constructor(public value = "") {}
}
export class ThemeColor {
  constructor(public readonly id: string) {}
}
export class InlineCompletionItem {
  command: any;
  constructor(
    public insertText: string | SnippetString,
    public range?: Range,
    command?: any,
  ) {
    this.command = command;
  }
}
export class InlineCompletionList {
  constructor(public items: InlineCompletionItem[]) {}
}
export enum InlineCompletionTriggerKind {
  Invoke = 0,
  Automatic = 1,
}
export class TabInputText {
  constructor(public readonly uri: Uri) {}
}
export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}

export class TextDocument {
  version = 1;
  isClosed = false;
  isDirty = false;
  isUntitled = false;
  eol = 1;
  constructor(
    public readonly uri: Uri,
    public text: string,
    public readonly languageId = "python",
  ) {}
  get fileName(): string {
    return this.uri.fsPath;
  }
  get lineCount(): number {
    return this.text.split("\n").length;
  }
  getText(): string {
    return this.text;
  }
  offsetAt(p: Position): number {
    return this.text.split("\n").slice(0, p.line).reduce((n, l) => n + l.length + 1, 0) + p.character;
  }
  positionAt(offset: number): Position {
    const before = this.text.slice(0, offset).split("\n");
    return new Position(before.length - 1, before[before.length - 1].length);
  }
  lineAt(line: number): { text: string } {
    return { text: this.text.split("\n")[line] };
  }
}

// Anything not modelled: capitalised names are inert classes (enum members read as numbers), `on*` are events,
// `register*` / `create*` return disposables.
function inertClass(): any {
  return new Proxy(class {}, { get: (t: any, p) => (p in t ? t[p] : typeof p === "string" ? 1 : undefined) });
}
function namespace(known: any): any {
  return new Proxy(known as any, {
    get(t, p) {
      if (p in t) {
        return t[p];
      }
      if (typeof p !== "string") {
        return undefined;
      }
      if (p.startsWith("on")) {
        return () => new Disposable();
      }
      if (p.startsWith("register") || p.startsWith("create")) {
        return () => new Disposable();
      }
      return undefined;
    },
  });
}

export const state = {
  documents: [] as TextDocument[],
  config: {} as Record<string, unknown>,
  providers: [] as any[],
  statusItems: [] as any[],
  commands: new Map<string, (...a: any[]) => any>(),
  messages: [] as string[],
  opened: [] as { language?: string; content?: string }[],
  configChanged: new EventEmitter<{ affectsConfiguration(section: string): boolean }>(),
  workspaceFolder: undefined as undefined | { uri: Uri; name: string; index: number },
};

const log = (level: string) => (...a: unknown[]) => {
  if (process.env.KVBLEND_SMOKE_VERBOSE) {
    console.log(`[${level}]`, ...a);
  }
};

const outputChannel = () =>
  namespace({
    name: "kvblend",
    logLevel: 2,
    onDidChangeLogLevel: () => new Disposable(),
    append: log("out"),
    appendLine: log("out"),
    replace: log("out"),
    trace: log("trace"),
    debug: log("debug"),
    info: log("info"),
    warn: log("warn"),
    error: log("error"),
    clear: () => undefined,
    show: () => undefined,
    hide: () => undefined,
    dispose: () => undefined,
  });

export const workspace = namespace({
  get textDocuments() {
    return state.documents;
  },
  get workspaceFolders() {
    return state.workspaceFolder ? [state.workspaceFolder] : undefined;
  },
  notebookDocuments: [],
  getWorkspaceFolder: () => state.workspaceFolder,
  getConfiguration: (section?: string) => ({
    get: <T>(key: string, fallback?: T) => {
      const full = section ? `${section}.${key}` : key;
      return (full in state.config ? state.config[full] : fallback) as T;
    },
    has: () => false,
    inspect: () => undefined,
    update: async () => undefined,
  }),
  openTextDocument: async (o: { language?: string; content?: string }) => (state.opened.push(o), o),
  get onDidChangeConfiguration() {
    return state.configChanged.event;
  },
});

export const window = namespace({
  activeTextEditor: undefined,
  visibleTextEditors: [],
  tabGroups: {
    get all() {
      return [{ tabs: state.documents.map((d) => ({ input: new TabInputText(d.uri) })) }];
    },
    onDidChangeTabs: () => new Disposable(),
  },
  createOutputChannel: outputChannel,
  createStatusBarItem: () => {
    const item = { text: "", tooltip: "", show() {}, hide() {}, dispose() {} } as any;
    state.statusItems.push(item);
    return item;
  },
  showInformationMessage: async (m: string) => void state.messages.push(m),
  showWarningMessage: async (m: string) => void state.messages.push(m),
  showErrorMessage: async (m: string) => void state.messages.push(m),
  showTextDocument: async () => undefined,
});

export const languages = namespace({
  match: (selector: any, doc: TextDocument) => {
    const sels = Array.isArray(selector) ? selector : [selector];
    return sels.some((s: any) => (typeof s === "string" ? s === doc.languageId : !s.scheme || s.scheme === doc.uri.scheme))
      ? 10
      : 0;
  },
  registerInlineCompletionItemProvider: (selector: any, provider: any) => {
    state.providers.push({ selector, provider });
    return new Disposable();
  },
});

export const commands = namespace({
  registerCommand: (name: string, fn: (...a: any[]) => any) => {
    state.commands.set(name, fn);
    return new Disposable(() => state.commands.delete(name));
  },
  executeCommand: async (name: string, ...args: any[]) => state.commands.get(name)?.(...args),
  getCommands: async () => [...state.commands.keys()],
});

export const env = namespace({ language: "en", appName: "smoke", machineId: "smoke", sessionId: "smoke", uriScheme: "vscode" });
export const extensions = namespace({ all: [], getExtension: () => undefined });
export const version = "1.91.0";
export const l10n = namespace({ t: (s: string) => s });

// Everything else vscode-languageclient touches at import time (classes it extends, enums it reads).
export default undefined;
const known = new Set(Object.keys(module.exports));
module.exports = new Proxy(module.exports, {
  get(t, p) {
    if (p in t || typeof p !== "string" || known.has(p)) {
      return t[p];
    }
    if (/^[A-Z]/.test(p)) {
      t[p] = inertClass();
      return t[p];
    }
    return undefined;
  },
});
