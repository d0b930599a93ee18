// The slice of the vscode API the extension's modules use, recording what they do for the tests to check.

export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}

export class ThemeColor {
  constructor(public readonly id: string) {}
}

export class Position {
  constructor(
    public readonly line: number,
    public readonly character: number,
  ) {}
  isAfter(other: Position): boolean {
    return this.line > other.line || (this.line === other.line && this.character > other.character);
  }
}

export class Range {
  constructor(
    public readonly start: Position,
    public readonly end: Position,
  ) {}
}

export class Disposable {
  constructor(private readonly fn: () => void = () => undefined) {}
  dispose(): void {
    this.fn();
  }
}

export class MockStatusBarItem {
  text = "";
  tooltip: string | undefined;
  command: string | undefined;
  backgroundColor: ThemeColor | undefined;
  visible = false;
  show(): void {
    this.visible = true;
  }
  hide(): void {
    this.visible = false;
  }
  dispose(): void {
    this.visible = false;
  }
}

/** A one-line-per-offset text document: enough for offsets, ranges and versions. */
export class MockDocument {
  version = 1;
  constructor(
    public text: string,
    public readonly uri = { toString: () => "file:///ws/app/main.py", fsPath: "/ws/app/main.py" },
  ) {}
  offsetAt(p: Position): number {
    const lines = this.text.split("\n");
    return lines.slice(0, p.line).reduce((n, l) => n + l.length + 1, 0) + p.character;
  }
  positionAt(offset: number): Position {
    const before = this.text.slice(0, offset).split("\n");
    return new Position(before.length - 1, before[before.length - 1].length);
  }
  getText(range?: Range): string {
    return range ? this.text.slice(this.offsetAt(range.start), this.offsetAt(range.end)) : this.text;
  }
  insert(offset: number, s: string): void {
    this.text = this.text.slice(0, offset) + s + this.text.slice(offset);
    this.version += 1;
  }
}

export const messages: { kind: string; text: string }[] = [];
export const opened: { language?: string; content?: string }[] = [];
const commandTable = new Map<string, (...args: unknown[]) => unknown>();
let quickPickAnswer: ((items: { label: string }[]) => { label: string } | undefined) | undefined;

export function reset(): void {
  messages.length = 0;
  opened.length = 0;
  commandTable.clear();
  window.activeTextEditor = undefined;
  quickPickAnswer = undefined;
}

export function answerQuickPick(fn: (items: { label: string }[]) => { label: string } | undefined): void {
  quickPickAnswer = fn;
}

export const window = {
  activeTextEditor: undefined as undefined | { document: MockDocument; selection: { active: Position } },
  createStatusBarItem: () => new MockStatusBarItem(),
  showInformationMessage: async (text: string) => void messages.push({ kind: "info", text }),
  showWarningMessage: async (text: string) => void messages.push({ kind: "warning", text }),
  showErrorMessage: async (text: string) => void messages.push({ kind: "error", text }),
  showQuickPick: async (items: { label: string }[]) => (quickPickAnswer ? quickPickAnswer(items) : undefined),
  showInputBox: async () => "2",
  showTextDocument: async () => undefined,
};

export const commands = {
  registerCommand(name: string, fn: (...args: unknown[]) => unknown): Disposable {
    commandTable.set(name, fn);
    return new Disposable(() => commandTable.delete(name));
  },
  async executeCommand(name: string, ...args: unknown[]): Promise<unknown> {
    const fn = commandTable.get(name);
    if (!fn) {
      throw new Error(`command ${name} not found`);
    }
    return fn(...args);
  },
};

export const workspace = {
  async openTextDocument(options: { language?: string; content?: string }) {
    opened.push(options);
    return options;
  },
  getConfiguration: () => ({ get: <T>(_key: string, fallback?: T) => fallback }),
};
