import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import { ConfigLike, SERVER_SETTINGS, initializationOptions, needsRestart, serverCommand, serverSettings } from "../src/config";

type Props = Record<string, { default: unknown }>;
const manifest = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
const props: Props = manifest.contributes.configuration.properties;

/** A configuration answering from the manifest's defaults, with some keys overridden as a user would. */
function config(overrides: Record<string, unknown> = {}): ConfigLike {
  return {
    get<T>(key: string): T | undefined {
      if (key in overrides) {
        return overrides[key] as T;
      }
      return props[`kvblend.${key}`]?.default as T | undefined;
    },
  };
}

describe("config", () => {
  it("declares every server setting in the manifest, and nothing else but the client's own keys", () => {
    const declared = Object.keys(props).map((k) => k.replace(/^kvblend\./, ""));
    const clientKeys = ["enable", "serverCommand", "model", "redisUrl"];
    assert.deepStrictEqual([...declared].sort(), [...SERVER_SETTINGS, ...clientKeys].sort());
  });

  it("maps the configuration to initializationOptions: settings with their values, start-up keys when set", () => {
    const opts = initializationOptions(config({ maxTokens: 16, mode: "full", model: "  /models/qwen  " }));
    assert.strictEqual(opts.maxTokens, 16);
    assert.strictEqual(opts.mode, "full");
    assert.strictEqual(opts.model, "/models/qwen");
    assert.strictEqual(opts.recomputeRatio, 0.15);
    assert.strictEqual(opts.sessionReuse, true);
    assert.ok(!("redisUrl" in opts), "an empty redisUrl is not sent");
    assert.ok(!("serverCommand" in opts) && !("enable" in opts), "client-only keys stay in the client");
    assert.deepStrictEqual(Object.keys(opts).sort(), [...SERVER_SETTINGS, "model"].sort());
  });

  it("sends only completion settings on a configuration change", () => {
    const settings = serverSettings(config({ temperature: 0.5, model: "/m" }));
    assert.strictEqual(settings.temperature, 0.5);
    assert.deepStrictEqual(Object.keys(settings).sort(), [...SERVER_SETTINGS].sort());
  });

  it("parses the server command and refuses one that cannot run", () => {
    assert.deepStrictEqual(serverCommand(config()), { command: "kvblend", args: ["serve"] });
    assert.deepStrictEqual(serverCommand(config({ serverCommand: ["/v/bin/python", "-m", "kvblend", "serve"] })), {
      command: "/v/bin/python",
      args: ["-m", "kvblend", "serve"],
    });
    assert.throws(() => serverCommand(config({ serverCommand: [] })), /non-empty array/);
    assert.throws(() => serverCommand(config({ serverCommand: "kvblend serve" })), /"kvblend serve"/);
  });

  it("restarts the server only for start-up settings", () => {
    assert.strictEqual(needsRestart((s) => s === "kvblend.model"), true);
    assert.strictEqual(needsRestart((s) => s === "kvblend.serverCommand"), true);
    assert.strictEqual(needsRestart((s) => s === "kvblend.maxTokens"), false);
  });
});
