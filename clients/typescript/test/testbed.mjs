// Starts the buildlog test bed once (a real buildlogd in front of the
// simulated upstream, clients/testbed) and drives it through its control API.
//
// BUILDLOG_TESTBED names a prebuilt test bed binary; without it the test bed
// runs with `go run ./clients/testbed` from the repository root.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";

const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));

/**
 * Starts the test bed and resolves with its ready line and a stop function.
 * buildlogdFlags are passed on to buildlogd, after the test bed's own.
 */
export async function startTestbed(buildlogdFlags = []) {
  const bin = process.env.BUILDLOG_TESTBED;
  const extra = buildlogdFlags.length ? ["--", ...buildlogdFlags] : [];
  const [cmd, args] = bin ? [bin, extra] : ["go", ["run", "./clients/testbed", ...extra]];
  const child = spawn(cmd, args, { cwd: repoRoot, stdio: ["pipe", "pipe", "inherit"] });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  const ready = await new Promise((resolve, reject) => {
    lines.once("line", (line) => {
      try {
        resolve(JSON.parse(line));
      } catch (e) {
        reject(new Error(`the test bed's first line is not JSON: ${line}`));
      }
    });
    child.once("error", reject);
    exited.then(({ code, signal }) => reject(new Error(`the test bed exited before it was ready (${code ?? signal})`)));
  });
  lines.on("line", (l) => process.stderr.write(`testbed: ${l}\n`));
  return {
    ...ready,
    async stop() {
      child.stdin.end(); // the test bed stops buildlogd and exits at EOF
      await exited;
    },
  };
}

/** A client of the test bed's control API. */
export function control(base) {
  async function call(method, path, body) {
    const res = await fetch(base + path, {
      method,
      headers: body ? { "content-type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
    return res;
  }
  const post = async (path, body) => (await call("POST", path, body)).json();
  return {
    addLog: (record_id, task_name, size) => post("/log", { record_id, task_name, size }),
    addAction: (record_id, task_name, size) => post("/action", { record_id, task_name, size }),
    grow: (record_id, task_name, bytes) => post("/grow", { record_id, task_name, bytes }),
    finish: (record_id, task_name) => post("/finish", { record_id, task_name }),
    fault: (f) => post("/fault", f),
    restart: (graceful, down_ms) => post("/restart", { graceful, down_ms }),
    stats: async () => (await call("GET", "/stats")).json(),
    async content(record_id, task_name, level = "") {
      const q = new URLSearchParams({ record_id, task_name, level });
      return Buffer.from(await (await call("GET", `/content?${q}`)).arrayBuffer());
    },
  };
}

/** A record id of the upstream's form. */
export const newRecordId = () => randomUUID();
