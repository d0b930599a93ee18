// Show/accept feedback for the server's acceptance statistics. No vscode import.
//
// One kvblend/didShowCompletion per suggestion shown; one kvblend/didAcceptCompletion per suggestion the user
// took any of, sent when it is fully taken or when the next suggestion replaces it, so that accepting word by
// word counts once, with the total length taken.

export type Send = (method: string, params: object) => void;

/** Lengths in characters (code points), as the server counts them; JS string length counts UTF-16 units. */
export function charLength(text: string): number {
  return Array.from(text).length;
}

export class AcceptTracker {
  private pending: { uri: string; text: string; accepted: number } | undefined;

  constructor(private readonly send: Send) {}

  /** The suggestion shown for `uri` now, if any. */
  current(uri: string): string | undefined {
    return this.pending?.uri === uri ? this.pending.text : undefined;
  }

  shown(uri: string, text: string): void {
    if (this.pending?.uri === uri && this.pending.text === text) {
      return;
    }
    this.flush();
    this.pending = { uri, text, accepted: 0 };
    this.send("kvblend/didShowCompletion", { uri, text });
  }

  /** `n` more characters of the shown suggestion were inserted (a word or line accept). */
  accepted(uri: string, text: string, n: number): void {
    if (this.pending?.uri !== uri || this.pending.text !== text) {
      this.shown(uri, text);
    }
    const p = this.pending!;
    p.accepted += Math.max(0, n);
    if (p.accepted >= charLength(p.text)) {
      this.flush();
    }
  }

  /** The rest of the suggestion was accepted (Tab): the item's command runs this. */
  acceptedAll(uri: string, text: string): void {
    this.accepted(uri, text, charLength(text));
  }

  /** Send the pending accept, if any part of the suggestion was taken. */
  flush(): void {
    const p = this.pending;
    this.pending = undefined;
    if (p && p.accepted > 0) {
      const acceptedLength = Math.min(p.accepted, charLength(p.text));
      this.send("kvblend/didAcceptCompletion", { uri: p.uri, text: p.text, acceptedLength });
    }
  }
}
