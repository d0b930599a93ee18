// Mocha --require: resolve `import "vscode"` to the hand-written mock (the real module exists only inside VS Code).
import Module = require("module");
import * as path from "path";

const mockPath = path.join(__dirname, "vscode-mock.js");
const M = Module as unknown as { _resolveFilename: (request: string, ...rest: unknown[]) => string };
const resolve = M._resolveFilename;
M._resolveFilename = function (request: string, ...rest: unknown[]): string {
  return request === "vscode" ? mockPath : resolve.call(this, request, ...rest);
};
