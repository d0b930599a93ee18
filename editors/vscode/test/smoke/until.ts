// Polling for the smoke tests: the client and the server run asynchronously, so a test waits for a state.

/** `fn()`'s first truthy value, polled every `everyMs`; throws naming `what` after `timeoutMs`. */
export async function until<T>(fn: () => T | undefined, what: string, timeoutMs: number, everyMs = 50): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = fn();
    if (v) {
      return v;
    }
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
