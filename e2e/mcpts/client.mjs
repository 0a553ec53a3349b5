// Drives `pyro mcp serve` (stdio) with the official TypeScript MCP SDK
// client. Run by e2e/mcp_ts_test.go:
//
//   node client.mjs [PYRO_BIN]     (or PYRO_BIN in the environment)
//
// It lists the tools, calls vm_run once and prints one JSON summary line on
// stdout (everything else goes to stderr). Exit 0 when the calls completed;
// the Go test asserts the summary's values.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const bin = process.argv[2] || process.env.PYRO_BIN;
if (!bin) {
  console.error("usage: node client.mjs PYRO_BIN (or set PYRO_BIN)");
  process.exit(2);
}
const environment = process.env.PYRO_TS_ENV || "debian:12-base";

const transport = new StdioClientTransport({
  command: bin,
  args: ["mcp", "serve"],
  // The default environment drops most variables; pyro needs PYRO_HOME etc.
  env: { ...process.env },
  stderr: "inherit",
});
const client = new Client({ name: "pyro-e2e-ts", version: "1.0.0" });

try {
  await client.connect(transport);
  const server = client.getServerVersion();
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  for (const want of ["vm_run", "workspace_create"]) {
    if (!names.includes(want)) throw new Error(`tool ${want} missing from tools/list: ${names.join(", ")}`);
  }
  // Guests boot slowly under TCG: allow more than the SDK's 60 s default.
  const res = await client.callTool(
    { name: "vm_run", arguments: { environment, command: "echo ts-hi; exit 3" } },
    undefined,
    { timeout: 300_000 },
  );
  if (res.isError) throw new Error(`vm_run tool error: ${JSON.stringify(res.content)}`);
  const sc = res.structuredContent ?? {};
  const text = (res.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("");
  console.log(JSON.stringify({
    server: server?.name ?? "",
    tools: names.length,
    exit_code: sc.exit_code,
    stdout: sc.stdout,
    stderr: sc.stderr,
    environment: sc.environment,
    text,
  }));
} catch (err) {
  console.error(`client.mjs: ${err?.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await client.close().catch(() => {});
}
