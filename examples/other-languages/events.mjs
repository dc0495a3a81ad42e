// Record an agent's tool call, a memory write and the end of its run in tether, from Node,
// through the tether gateway: plain fetch, no SDK. Node >= 18.
//
//   TETHER_GATEWAY_URL=http://127.0.0.1:8400 TETHER_GATEWAY_KEY=tg-... node events.mjs
//
// The traceparent header puts everything in one run: the same run as the agent's LLM calls
// that carry it (the gateway derives the run id from the key's agent and the trace id).
import { randomBytes, randomUUID } from "node:crypto";

const url = process.env.TETHER_GATEWAY_URL ?? "http://127.0.0.1:8400";
const key = process.env.TETHER_GATEWAY_KEY;
if (!key) {
  console.error("set TETHER_GATEWAY_KEY to a gateway key (tether gateway --new-key --agent NAME makes one)");
  process.exit(2);
}
const traceId = process.env.TRACE_ID ?? randomBytes(16).toString("hex");
const traceparent = `00-${traceId}-${randomBytes(8).toString("hex")}-01`;
const headers = { authorization: `Bearer ${key}`, traceparent };

async function post(path, body, contentType = "application/json") {
  const answer = await fetch(url + path, {
    method: "POST", headers: { ...headers, "content-type": contentType }, body: JSON.stringify(body),
  });
  const doc = await answer.json();
  if (!answer.ok) throw new Error(`${path}: ${answer.status} ${JSON.stringify(doc.error)}`);
  return doc;
}

const event = (type, data) => ({ specversion: "1.0", id: randomUUID(), source: "urn:agent:node-example", type, data });

// 1. A tool call, as two CloudEvents in one batch (all or nothing).
const callId = randomUUID();
const started = Date.now();
const result = { hits: ["NATS JetStream keeps a log"] };
const batch = await post("/v1/events", [
  event("tether.tool.call.requested", { call_id: callId, tool: "web_search", arguments: { q: "nats" } }),
  event("tether.tool.call.completed", { call_id: callId, tool: "web_search", result, duration_ms: Date.now() - started }),
], "application/cloudevents-batch+json");
console.log(`tool call recorded: ${batch.accepted} events`);

// 2. A memory write, then a search, as the key's agent (its own namespaces only).
const agent = process.env.AGENT ?? "bot";
const written = await post("/v1/memory/write", { namespace: `agent:${agent}`, key: "topic", text: "The user studies NATS." });
const found = await post("/v1/memory/search", { query: "what does the user study?", k: 3 });
console.log(`memory: ${written.namespace}/${written.key} v${written.version}; search found ${found.hits.length}`);

// 3. The run is over (else the gateway ends it after [gateway] run_idle_s without a call).
await post("/v1/events", event("tether.run.finished", { status: "ok" }), "application/cloudevents+json");
console.log(`run finished: trace ${traceId}`);
