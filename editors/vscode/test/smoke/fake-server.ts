// A stand-in language server for the smoke tests of the client's failure paths (no model needed):
// `node fake-server.js exit` exits at once with code 3; `node fake-server.js crash` answers initialize, reports
// ready, then exits with code 1 (a crash mid-session).
const mode = process.argv[2];
if (mode === "exit") {
  process.exit(3);
}

function send(message: object): void {
  const body = JSON.stringify({ jsonrpc: "2.0", ...message });
  process.stdout.write(`Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

let buffer = Buffer.alloc(0);
process.stdin.on("data", (chunk: Buffer) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const end = buffer.indexOf("\r\n\r\n");
    const length = /Content-Length: (\d+)/i.exec(buffer.subarray(0, end).toString());
    if (end < 0 || !length || buffer.length < end + 4 + Number(length[1])) {
      return;
    }
    const message = JSON.parse(buffer.subarray(end + 4, end + 4 + Number(length[1])).toString());
    buffer = buffer.subarray(end + 4 + Number(length[1]));
    if (message.method === "initialize") {
      send({ id: message.id, result: { capabilities: { textDocumentSync: 2, inlineCompletionProvider: true } } });
    } else if (message.method === "initialized") {
      send({ method: "kvblend/status", params: { state: "ready", message: "fake" } });
      setTimeout(() => process.exit(1), 200);
    } else if (message.id !== undefined && message.method) {
      send({ id: message.id, result: null });
    }
  }
});
