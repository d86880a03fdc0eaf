// An MCP client on the official TypeScript SDK, driven by e2e_test.go: it
// connects to the agentsec gateway (over stdio, by launching a command, or
// over streamable HTTP with a bearer token), runs the steps it is given,
// and prints one JSON object with what it saw.
//
//   node client.mjs stdio <steps> <command> [args...]
//   node client.mjs http <steps> <url> <token>
//   node client.mjs oauth <steps> <url> <client id> <client secret> <issuer> <scope>
//
// In oauth mode the client holds no token: the SDK's client-credentials
// provider finds where to get one from the gateway's 401 and its
// protected-resource metadata, and gets it from the issuer, asking for
// <scope> (the SDK asks a client-credentials grant for the scope the
// client is configured with).
//
// <steps> is a JSON array of {op, ...}: list-tools, call {name, arguments,
// progress}, list-resources, read-resource {uri}, list-prompts,
// get-prompt {name, arguments}.
//
// The client offers sampling, elicitation and roots, so servers can ask it
// things during a call: sampling answers "sampled: <the prompt's text>",
// elicitation accepts with {name: "e2e"}, and the one root is
// file:///e2e-root. It counts what it was asked in the output's "asked".
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ClientCredentialsProvider } from "@modelcontextprotocol/sdk/client/auth-extensions.js";
import { CreateMessageRequestSchema, ElicitRequestSchema, ListRootsRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [mode, stepsJSON, ...rest] = process.argv.slice(2);
const steps = JSON.parse(stepsJSON);

let transport;
if (mode === "stdio") {
  transport = new StdioClientTransport({ command: rest[0], args: rest.slice(1), stderr: "inherit" });
} else if (mode === "http") {
  transport = new StreamableHTTPClientTransport(new URL(rest[0]), {
    requestInit: { headers: { Authorization: `Bearer ${rest[1]}` } },
  });
} else if (mode === "oauth") {
  const authProvider = new ClientCredentialsProvider({ clientId: rest[1], clientSecret: rest[2], expectedIssuer: rest[3], scope: rest[4] });
  transport = new StreamableHTTPClientTransport(new URL(rest[0]), { authProvider });
} else {
  throw new Error(`unknown mode ${mode}`);
}

const client = new Client({ name: "agentsec-e2e", version: "1.0.0" },
  { capabilities: { sampling: {}, elicitation: {}, roots: { listChanged: true } } });
const asked = { sampling: 0, elicitation: 0, roots: 0 };
client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
  asked.sampling++;
  const text = req.params.messages.map((m) => m.content?.text ?? "").join(" ");
  return { model: "e2e-model", role: "assistant", content: { type: "text", text: `sampled: ${text}` } };
});
client.setRequestHandler(ElicitRequestSchema, async () => {
  asked.elicitation++;
  return { action: "accept", content: { name: "e2e" } };
});
client.setRequestHandler(ListRootsRequestSchema, async () => {
  asked.roots++;
  return { roots: [{ uri: "file:///e2e-root", name: "e2e root" }] };
});
await client.connect(transport);
const out = { server: client.getServerVersion(), steps: [], asked };
for (const step of steps) {
  const seen = { op: step.op };
  try {
    switch (step.op) {
      case "list-tools":
        seen.tools = (await client.listTools()).tools.map((t) => t.name).sort();
        break;
      case "call": {
        const progress = [];
        const options = step.progress ? { onprogress: (p) => progress.push(p.progress) } : undefined;
        seen.name = step.name;
        seen.result = await client.callTool({ name: step.name, arguments: step.arguments ?? {} }, undefined, options);
        if (step.progress) seen.progress = progress;
        break;
      }
      case "list-resources":
        seen.resources = (await client.listResources()).resources.map((r) => r.uri);
        break;
      case "read-resource":
        seen.contents = (await client.readResource({ uri: step.uri })).contents;
        break;
      case "list-prompts":
        seen.prompts = (await client.listPrompts()).prompts.map((p) => p.name).sort();
        break;
      case "get-prompt":
        seen.messages = (await client.getPrompt({ name: step.name, arguments: step.arguments ?? {} })).messages;
        break;
      default:
        throw new Error(`unknown op ${step.op}`);
    }
  } catch (err) {
    seen.error = String(err?.message ?? err);
  }
  out.steps.push(seen);
}
await client.close();
console.log(JSON.stringify(out));
