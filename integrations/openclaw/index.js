// tether for OpenClaw: each tool call becomes a real tool span in the tether run of its turn (exact
// start, duration and error, from OpenClaw's own hooks), the turn's end finishes that run, and the
// agent gets tether memory as two tools. Everything goes to the tether gateway the agent's model
// calls already go through, tied to the same run by the W3C trace id OpenClaw sends with them.
import { randomBytes, randomUUID } from "node:crypto";

const SOURCE = "urn:openclaw:tether-plugin";

/** The plugin's settings: openclaw.json `plugins.entries.tether.config`, then the environment. */
export function settings(config = {}, env = process.env) {
  const keyEnv = config.gatewayKeyEnv ?? "TETHER_GATEWAY_KEY";
  return {
    url: (config.gatewayUrl ?? env.TETHER_GATEWAY_URL ?? "http://127.0.0.1:8400").replace(/\/+$/, ""),
    keyEnv,
    key: env[keyEnv],
    memoryTools: config.memoryTools ?? true,
    memoryNamespace: config.memoryNamespace,
    timeoutMs: config.timeoutMs ?? 5000,
  };
}

/** A W3C traceparent in OpenClaw's trace (the one its model calls carry), with a span of our own. */
export function traceparent(trace) {
  const traceId = trace?.traceId;
  if (typeof traceId !== "string" || !/^[0-9a-f]{32}$/.test(traceId)) return undefined;
  return `00-${traceId}-${randomBytes(8).toString("hex")}-${trace.traceFlags ?? "01"}`;
}

function event(type, data, time = new Date()) {
  return { specversion: "1.0", id: randomUUID(), source: SOURCE, type, time: time.toISOString(), data };
}

/** A tool call starting, from OpenClaw's before_tool_call: sent before the tool runs, so the gateway
 * knows the call is reported (and does not infer it from the conversation as well). */
export function toolRequested(call) {
  return event("tether.tool.call.requested", {
    call_id: call.toolCallId, tool: call.toolName, arguments: call.params ?? null, tool_call_id: call.toolCallId,
  }, call.startedAt);
}

/** Its end, from after_tool_call: OpenClaw's own duration and error. */
export function toolEnded(call, after, endedAt = new Date()) {
  const id = call.toolCallId;
  const durationMs = after.durationMs ?? Math.max(0, endedAt.getTime() - call.startedAt.getTime());
  if (after.error) {
    return event("tether.tool.call.failed", {
      call_id: id, tool: call.toolName, attempts: 1, duration_ms: durationMs,
      error: { type: "ToolError", message: String(after.error).slice(0, 4000) }, result: after.result ?? null,
    }, endedAt);
  }
  return event("tether.tool.call.completed", {
    call_id: id, tool: call.toolName, attempt: 1, duration_ms: durationMs, result: after.result ?? null,
  }, endedAt);
}

/** The run's end, from OpenClaw's agent_end. */
export function runFinished(end) {
  const data = { status: end.success ? "ok" : "error" };
  if (typeof end.durationMs === "number") data.duration_ms = end.durationMs;
  if (!end.success) data.error = { type: "AgentError", message: String(end.error ?? "the OpenClaw run failed").slice(0, 4000) };
  return event("tether.run.finished", data);
}

/** OpenClaw's own usage of a turn's model calls, from llm_output, in tether's terms: its `input`
 * leaves out the tokens read from or written to the cache, tether's input_tokens counts them. */
export function usageReported(output) {
  const u = output.usage ?? {};
  const count = (v) => (Number.isFinite(v) && v > 0 ? Math.round(v) : 0);
  const cached = count(u.cacheRead);
  const written = count(u.cacheWrite);
  return event("tether.llm.usage.reported", {
    reporter: "openclaw", provider: output.provider ?? null, model: output.model ?? null,
    usage: {
      input_tokens: count(u.input) + cached + written, output_tokens: count(u.output),
      cached_input_tokens: cached, cache_write_tokens: written,
    },
  });
}

function jsonSafe(value) {
  try {
    return JSON.parse(JSON.stringify(value ?? null, (_k, v) => (typeof v === "bigint" ? String(v) : v)));
  } catch {
    return String(value);
  }
}

export function createTether(config, { log = console, fetchImpl = fetch } = {}) {
  const s = settings(config);

  async function post(path, body, { trace, contentType = "application/json" } = {}) {
    if (!s.key) throw new Error(`no tether gateway key: set ${s.keyEnv} (tether gateway --new-key --agent NAME makes one)`);
    const headers = { authorization: `Bearer ${s.key}`, "content-type": contentType };
    const parent = traceparent(trace);
    if (parent) headers.traceparent = parent;
    const answer = await fetchImpl(s.url + path, {
      method: "POST", headers, body: JSON.stringify(body), signal: AbortSignal.timeout(s.timeoutMs),
    });
    const text = await answer.text();
    let doc;
    try {
      doc = JSON.parse(text);
    } catch {
      doc = { error: { message: text.slice(0, 500) } };
    }
    if (!answer.ok) {
      throw new Error(`tether gateway ${path}: ${answer.status} ${doc?.error?.code ?? ""} ${doc?.error?.message ?? ""}`.trim());
    }
    return doc;
  }

  /** Events are best effort: a gateway that is down must never fail the agent's turn. */
  async function send(events, trace) {
    if (!traceparent(trace)) return; // no trace: no run to put them in
    try {
      await post("/v1/events", events, { trace, contentType: "application/cloudevents-batch+json" });
    } catch (error) {
      log.warn?.(`[tether] could not record ${events.map((e) => e.type).join(", ")}: ${error.message}`);
    }
  }

  const calls = new Map(); // toolCallId -> what before_tool_call saw

  return {
    settings: s,
    post,
    async beforeToolCall(ev, ctx) {
      const toolCallId = ev.toolCallId ?? ctx?.toolCallId;
      if (!toolCallId) return;
      const call = { toolCallId, toolName: ev.toolName, params: jsonSafe(ev.params), startedAt: new Date(), trace: ctx?.trace };
      calls.set(toolCallId, call);
      await send([toolRequested(call)], ctx?.trace);
    },
    async afterToolCall(ev, ctx) {
      const toolCallId = ev.toolCallId ?? ctx?.toolCallId;
      const call = toolCallId && calls.get(toolCallId);
      if (!call) return; // its start was not seen: no span to end
      calls.delete(toolCallId);
      await send([toolEnded(call, { ...ev, result: jsonSafe(ev.result) })], ctx?.trace ?? call.trace);
    },
    async llmOutput(ev, ctx) {
      if (ev?.usage) await send([usageReported(ev)], ctx?.trace);
    },
    async agentEnd(ev, ctx) {
      await send([runFinished(ev)], ctx?.trace);
    },
    memoryTools() {
      const text = (doc) => ({ content: [{ type: "text", text: JSON.stringify(doc) }], details: doc });
      return [
        {
          name: "tether_memory_write",
          label: "tether memory: write",
          description: "Remember a fact in tether memory (it stays across sessions). Give the text; a key replaces an earlier entry with that key.",
          parameters: {
            type: "object", additionalProperties: false, required: ["text"],
            properties: {
              text: { type: "string", description: "What to remember" },
              key: { type: "string", description: "A name for the entry (optional)" },
              namespace: { type: "string", description: "Where to write (optional)" },
            },
          },
          async execute(id, params) {
            const namespace = params.namespace ?? s.memoryNamespace;
            if (!namespace) throw new Error("tether_memory_write needs a namespace: set memoryNamespace in the tether plugin's config (e.g. agent:openclaw-main)");
            const body = { namespace, text: params.text };
            if (params.key) body.key = params.key;
            return text(await post("/v1/memory/write", body, { trace: calls.get(id)?.trace }));
          },
        },
        {
          name: "tether_memory_search",
          label: "tether memory: search",
          description: "Search tether memory for what was remembered before.",
          parameters: {
            type: "object", additionalProperties: false, required: ["query"],
            properties: {
              query: { type: "string", description: "What to look for" },
              k: { type: "integer", minimum: 1, maximum: 20, description: "How many hits (default 5)" },
            },
          },
          async execute(id, params) {
            const body = { query: params.query };
            if (params.k) body.k = params.k;
            return text(await post("/v1/memory/search", body, { trace: calls.get(id)?.trace }));
          },
        },
      ];
    },
  };
}

export default {
  id: "tether",
  name: "tether",
  description: "Real tool spans, run ends and memory tools for runs that go through the tether gateway",
  register(api) {
    const tether = createTether(api.pluginConfig ?? {}, { log: api.logger ?? console });
    api.on("before_tool_call", async (ev, ctx) => { await tether.beforeToolCall(ev, ctx); });
    api.on("after_tool_call", (ev, ctx) => tether.afterToolCall(ev, ctx));
    api.on("llm_output", (ev, ctx) => tether.llmOutput(ev, ctx));
    api.on("agent_end", (ev, ctx) => tether.agentEnd(ev, ctx));
    if (tether.settings.memoryTools) {
      for (const tool of tether.memoryTools()) api.registerTool(tool);
    }
  },
};
