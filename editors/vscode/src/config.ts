// Settings: the `kvblend.*` configuration -> the server's initializationOptions and didChangeConfiguration
// payloads, and the command that starts the server. No vscode import: the tests call these directly.

/** What the functions here read from a configuration section (vscode.WorkspaceConfiguration fits). */
export interface ConfigLike {
  get<T>(key: string): T | undefined;
}

/** Completion settings the server reads (kvblend/settings.py's fields, camelCase). */
export const SERVER_SETTINGS = [
  "mode",
  "recomputeRatio",
  "contextTokens",
  "prefixTokens",
  "suffixTokens",
  "fimOrder",
  "multiline",
  "maxTokens",
  "maxLineTokens",
  "timeBudgetMs",
  "debounceMs",
  "sessionReuse",
  "resultCache",
  "temperature",
  "warmupMs",
] as const;

/** Settings read once when the server starts: changing one restarts it. */
export const RESTART_SETTINGS = ["serverCommand", "model", "redisUrl"] as const;

/** The completion settings, as sent in workspace/didChangeConfiguration under "kvblend". */
export function serverSettings(cfg: ConfigLike): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_SETTINGS) {
    const value = cfg.get<unknown>(key);
    if (value !== undefined && value !== null) {
      out[key] = value;
    }
  }
  return out;
}

/** initializationOptions: the completion settings plus the start-up keys the server reads (model, redisUrl). */
export function initializationOptions(cfg: ConfigLike): Record<string, unknown> {
  const out = serverSettings(cfg);
  for (const key of ["model", "redisUrl"]) {
    const value = cfg.get<string>(key);
    if (typeof value === "string" && value.trim() !== "") {
      out[key] = value.trim();
    }
  }
  return out;
}

/** The server's command line from `kvblend.serverCommand`; throws on a value that cannot be run. */
export function serverCommand(cfg: ConfigLike): { command: string; args: string[] } {
  const value = cfg.get<unknown>("serverCommand") ?? ["kvblend", "serve"];
  if (!Array.isArray(value) || value.length === 0 || !value.every((v) => typeof v === "string" && v !== "")) {
    throw new Error(`kvblend.serverCommand must be a non-empty array of strings, got ${JSON.stringify(value)}`);
  }
  const [command, ...args] = value as string[];
  return { command, args };
}

/** Whether a configuration change needs a server restart (`affects` is ConfigurationChangeEvent.affectsConfiguration). */
export function needsRestart(affects: (section: string) => boolean): boolean {
  return RESTART_SETTINGS.some((key) => affects(`kvblend.${key}`));
}
