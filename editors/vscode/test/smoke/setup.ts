// Mocha --require for the smoke test: `import "vscode"` resolves to the fake host.
import Module = require("module");
import * as path from "path";

const hostPath = path.join(__dirname, "vscode-host.js");
const M = Module as unknown as { _resolveFilename: (request: string, ...rest: unknown[]) => string };
const resolve = M._resolveFilename;
M._resolveFilename = function (request: string, ...rest: unknown[]): string {
  return request === "vscode" ? hostPath : resolve.call(this, request, ...rest);
};
