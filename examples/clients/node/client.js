#!/usr/bin/env node
// A Node client of llmserve.v1.Gateway with @grpc/grpc-js, loading the contract from protos/
// at run time (@grpc/proto-loader): no generated code.
//
//   npm ci && LLMSERVE_API_KEY=... node client.js [--gateway HOST:PORT] [--prompt TEXT]
//        [--model NAME] [--max-tokens N] [--ca ca.crt] [--session ID]
//
// It checks the gateway's health, lists the models, streams a greedy Generate, then creates a
// chat session (or takes --session) and streams one Chat turn in it. It prints one JSON object
// with what it got (stdout) and exits 0, or prints the failing call's status and exits 1: a
// line "llmserve client failed: CODE: message", then one JSON object with the status's
// google.rpc details (protos/ERRORS.md): the ErrorInfo reason and domain, the BadRequest field
// violations and the RetryInfo delay, decoded from the `grpc-status-details-bin` trailer with
// protobufjs and protos/google/rpc/*.proto.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTOS = process.env.LLMSERVE_PROTOS || path.resolve(__dirname, "../../../protos");

function load() {
  const definition = protoLoader.loadSync(
    ["llmserve/v1/gateway.proto", "grpc/health/v1/health.proto"],
    { includeDirs: [PROTOS], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
  );
  return grpc.loadPackageDefinition(definition);
}

// google.rpc.Status and its error details, read with protobufjs from protos/google/rpc/.
function rpcTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(PROTOS, target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  return root;
}

// The details of a failed call: {code, message, reason, domain, metadata, field_violations,
// retry_delay_s}; only code and message when the status has no details.
function errorDetails(err) {
  const out = { code: grpc.status[err.code], message: err.details };
  const raw = err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
  if (!raw.length) return out;
  const root = rpcTypes();
  const status = root.lookupType("google.rpc.Status").decode(raw[0]);
  for (const any of status.details) {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const detail = root.lookupType(name).toObject(root.lookupType(name).decode(any.value), {
      longs: Number,
      defaults: true,
    });
    if (name === "google.rpc.ErrorInfo") {
      Object.assign(out, { reason: detail.reason, domain: detail.domain, metadata: detail.metadata });
    } else if (name === "google.rpc.BadRequest") {
      out.field_violations = detail.field_violations.map((v) => ({ field: v.field, description: v.description }));
    } else if (name === "google.rpc.RetryInfo") {
      out.retry_delay_s = detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9;
    }
  }
  return out;
}

// Resolves with the unary call's response.
function unary(client, method, request, metadata, deadlineS = 30) {
  const deadline = new Date(Date.now() + deadlineS * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// Resolves with the text of a streamed reply (ChatResponse / GatewayGenerateResponse chunks).
function streamed(client, method, request, metadata, deadlineS = 300) {
  const deadline = new Date(Date.now() + deadlineS * 1000);
  return new Promise((resolve, reject) => {
    const result = { text: "", token_ids: [], finish_reason: "", usage: null };
    const call = client[method](request, metadata, { deadline });
    call.on("data", (chunk) => {
      result.text += chunk.text;
      result.token_ids.push(...chunk.token_ids);
      if (chunk.finish_reason && chunk.finish_reason !== "FINISH_REASON_UNSPECIFIED") {
        result.finish_reason = chunk.finish_reason;
      }
      if (chunk.usage) result.usage = chunk.usage;
      if (chunk.session_id) result.session_id = chunk.session_id;
    });
    call.on("error", reject);
    call.on("end", () => resolve(result));
  });
}

async function main() {
  const { values } = parseArgs({
    options: {
      gateway: { type: "string", default: process.env.LLMSERVE_GATEWAY || "127.0.0.1:50051" },
      prompt: { type: "string", default: "The capital of France is" },
      model: { type: "string", default: "" },
      "max-tokens": { type: "string", default: "16" },
      ca: { type: "string", default: "" },
      session: { type: "string", default: "" },
    },
  });
  const key = process.env.LLMSERVE_API_KEY || "";
  if (!key) throw new Error("set LLMSERVE_API_KEY to a key of the gateway's keys file");
  const maxTokens = Number.parseInt(values["max-tokens"], 10);
  const pkg = load();
  const credentials = values.ca
    ? grpc.credentials.createSsl(fs.readFileSync(values.ca))
    : grpc.credentials.createInsecure();
  const gateway = new pkg.llmserve.v1.Gateway(values.gateway, credentials);
  const health = new pkg.grpc.health.v1.Health(values.gateway, credentials);
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${key}`);

  const out = {};
  out.health = (await unary(health, "Check", { service: "" }, new grpc.Metadata())).status;
  const models = (await unary(gateway, "ListModels", {}, metadata)).models;
  out.models = models.map((m) => ({ name: m.name, num_healthy_runtimes: m.num_healthy_runtimes }));
  const model = values.model || (models.find((m) => m.num_healthy_runtimes > 0) || {}).name;
  if (!model) throw new Error("the gateway serves no model with a healthy runtime yet");
  out.model = model;
  // Greedy, so that the same request gives the same tokens from any client.
  const sampling = { temperature: 0, max_tokens: maxTokens };
  out.generate = await streamed(
    gateway, "Generate", { model, prompt: { text: values.prompt }, sampling }, metadata,
  );
  out.session_id = values.session || (await unary(gateway, "CreateSession", { model }, metadata)).session.session_id;
  out.chat = await streamed(
    gateway, "Chat", { session_id: out.session_id, message: values.prompt, sampling }, metadata,
  );
  gateway.close();
  health.close();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((err) => {
  const status = err.code !== undefined ? `${grpc.status[err.code]}: ${err.details}` : err.message;
  process.stderr.write(`llmserve client failed: ${status}\n`);
  if (err.code !== undefined) process.stderr.write(`${JSON.stringify(errorDetails(err))}\n`);
  process.exit(1);
});
