import * as assert from "assert";
import { AcceptTracker, charLength } from "../src/accept";

function tracker(): { sent: [string, Record<string, unknown>][]; t: AcceptTracker } {
  const sent: [string, Record<string, unknown>][] = [];
  return { sent, t: new AcceptTracker((m, p) => sent.push([m, p as Record<string, unknown>])) };
}

const URI = "file:///ws/app/main.py";

describe("accept accounting", () => {
  it("a full accept reports the whole length once", () => {
    const { sent, t } = tracker();
    t.shown(URI, "otenuse_length(a, b)");
    t.shown(URI, "otenuse_length(a, b)"); // the same suggestion asked again: not shown twice
    t.acceptedAll(URI, "otenuse_length(a, b)");
    assert.deepStrictEqual(sent, [
      ["kvblend/didShowCompletion", { uri: URI, text: "otenuse_length(a, b)" }],
      ["kvblend/didAcceptCompletion", { uri: URI, text: "otenuse_length(a, b)", acceptedLength: 20 }],
    ]);
    assert.strictEqual(t.current(URI), undefined);
  });

  it("word-by-word accepts count once, with the total, when the next suggestion replaces it", () => {
    const { sent, t } = tracker();
    t.shown(URI, "return width * height");
    t.accepted(URI, "return width * height", 6);
    t.accepted(URI, "return width * height", 6);
    assert.strictEqual(sent.length, 1, "nothing sent while the suggestion is still being taken");
    assert.strictEqual(t.current(URI), "return width * height");
    t.shown(URI, " * height");
    assert.deepStrictEqual(sent.slice(1), [
      ["kvblend/didAcceptCompletion", { uri: URI, text: "return width * height", acceptedLength: 12 }],
      ["kvblend/didShowCompletion", { uri: URI, text: " * height" }],
    ]);
  });

  it("partial accepts that reach the end are a full accept; a rejected suggestion sends no accept", () => {
    const { sent, t } = tracker();
    t.shown(URI, "ab");
    t.shown(URI, "cd"); // "ab" was never taken
    t.accepted(URI, "cd", 1);
    t.accepted(URI, "cd", 5); // more than shown: clamped
    assert.deepStrictEqual(sent.map(([m, p]) => [m, p.text, p.acceptedLength]), [
      ["kvblend/didShowCompletion", "ab", undefined],
      ["kvblend/didShowCompletion", "cd", undefined],
      ["kvblend/didAcceptCompletion", "cd", 2],
    ]);
  });

  it("counts characters as the server does, not UTF-16 units", () => {
    assert.strictEqual(charLength("x = '𝄞'"), 7);
    const { sent, t } = tracker();
    t.acceptedAll(URI, "'𝄞'");
    assert.strictEqual(sent[1][1].acceptedLength, 3);
  });
});
