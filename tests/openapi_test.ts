/**
 * The OpenAPI document: structurally valid OpenAPI 3.1 (a focused validator below), covering
 * every route the app serves, with request bodies from the very zod schemas that validate them,
 * and responses that real answers parse with. `/api/v1/openapi.json` and `/docs` are checked
 * over HTTP once `src/app.ts` mounts them (skipped, and reported as ignored, until then).
 * @module
 */
import { z } from "zod";
import { ManualClock } from "../src/clock.ts";
import { PushSubscriptionBody } from "../src/web/alarms_api.ts";
import * as R from "../src/web/api_schemas.ts";
import { docsHtml, openApiDocument, REQUEST_SCHEMAS } from "../src/web/openapi.ts";
import { CommandResult, CreateCommand, RegisterDevice, UpdateDevice } from "../src/web/schemas.ts";
import { assert, assertEquals } from "./assert.ts";
import { type TestApp, testApp } from "./helpers.ts";

// deno-lint-ignore no-explicit-any
type Doc = any;
type Route = { method: string; path: string };

const HTTP_METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
const JSON_SCHEMA_TYPES = new Set([
  "null",
  "boolean",
  "object",
  "array",
  "number",
  "string",
  "integer",
]);

/** Resolves a local JSON pointer (`#/a/b`) in `doc`, or `undefined`. */
function resolvePointer(doc: unknown, ref: string): unknown {
  if (!ref.startsWith("#")) return undefined;
  if (ref === "#") return doc;
  if (!ref.startsWith("#/")) return undefined;
  let node: unknown = doc;
  for (const raw of ref.slice(2).split("/")) {
    const key = decodeURIComponent(raw).replaceAll("~1", "/").replaceAll("~0", "~");
    if (node === null || typeof node !== "object" || !(key in node)) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

/** Every `$ref` in `value`, with where it was found. */
function refsIn(
  value: unknown,
  at = "#",
  out: Array<[string, string]> = [],
): Array<[string, string]> {
  if (Array.isArray(value)) value.forEach((v, i) => refsIn(v, `${at}/${i}`, out));
  else if (value !== null && typeof value === "object") {
    for (const [key, inner] of Object.entries(value)) {
      if (key === "$ref" && typeof inner === "string") out.push([at, inner]);
      else refsIn(inner, `${at}/${key}`, out);
    }
  }
  return out;
}

/** Checks a JSON Schema (2020-12) node structurally; returns problems. */
function checkJsonSchema(schema: unknown, at: string, problems: string[]): void {
  if (typeof schema === "boolean") return;
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
    problems.push(`${at}: a schema must be an object or a boolean`);
    return;
  }
  const s = schema as Record<string, unknown>;
  const types = s.type === undefined ? [] : Array.isArray(s.type) ? s.type : [s.type];
  for (const type of types) {
    if (!JSON_SCHEMA_TYPES.has(type as string)) problems.push(`${at}: unknown type ${type}`);
  }
  if (typeof s.$id === "string" && s.$id.includes("#")) {
    problems.push(`${at}: $id must not carry a fragment (${s.$id})`);
  }
  if (s.required !== undefined) {
    if (!Array.isArray(s.required) || s.required.some((r) => typeof r !== "string")) {
      problems.push(`${at}: required must be an array of strings`);
    } else if (s.properties && typeof s.properties === "object") {
      for (const name of s.required as string[]) {
        if (!(name in (s.properties as object)) && s.additionalProperties === false) {
          problems.push(`${at}: required ${name} is not a property`);
        }
      }
    }
  }
  if (s.enum !== undefined && (!Array.isArray(s.enum) || s.enum.length === 0)) {
    problems.push(`${at}: enum must be a non-empty array`);
  }
  for (const key of ["properties", "$defs", "patternProperties"]) {
    if (s[key] === undefined) continue;
    if (typeof s[key] !== "object" || s[key] === null) problems.push(`${at}/${key}: not an object`);
    else {
      for (const [name, sub] of Object.entries(s[key] as object)) {
        checkJsonSchema(sub, `${at}/${key}/${name}`, problems);
      }
    }
  }
  for (const key of ["items", "additionalProperties", "propertyNames", "not", "contains"]) {
    if (s[key] !== undefined) checkJsonSchema(s[key], `${at}/${key}`, problems);
  }
  for (const key of ["anyOf", "oneOf", "allOf", "prefixItems"]) {
    if (s[key] === undefined) continue;
    if (!Array.isArray(s[key]) || (s[key] as unknown[]).length === 0) {
      problems.push(`${at}/${key}: must be a non-empty array`);
    } else {(s[key] as unknown[]).forEach((sub, i) =>
        checkJsonSchema(sub, `${at}/${key}/${i}`, problems)
      );}
  }
}

/** A focused OpenAPI 3.1 validator: returns every problem found (none for a valid document). */
function validateOpenApi(doc: Doc): string[] {
  const problems: string[] = [];
  const fail = (message: string) => problems.push(message);
  if (doc?.openapi !== "3.1.0") fail(`openapi must be "3.1.0", not ${doc?.openapi}`);
  if (typeof doc?.info?.title !== "string" || !doc.info.title) fail("info.title is required");
  if (typeof doc?.info?.version !== "string" || !doc.info.version) fail("info.version is required");
  if (doc.servers !== undefined) {
    if (!Array.isArray(doc.servers)) fail("servers must be an array");
    else {for (const server of doc.servers) {
        if (typeof server.url !== "string") fail("every server needs a url");
      }}
  }
  if (!doc.paths || typeof doc.paths !== "object") fail("paths must be an object");
  const schemes = doc.components?.securitySchemes ?? {};
  for (const [name, scheme] of Object.entries<Doc>(schemes)) {
    if (!["apiKey", "http", "mutualTLS", "oauth2", "openIdConnect"].includes(scheme.type)) {
      fail(`securitySchemes.${name}: bad type ${scheme.type}`);
    }
    if (scheme.type === "http" && typeof scheme.scheme !== "string") {
      fail(`securitySchemes.${name}: http needs a scheme`);
    }
    if (
      scheme.type === "apiKey" &&
      (!scheme.name || !["query", "header", "cookie"].includes(scheme.in))
    ) {
      fail(`securitySchemes.${name}: apiKey needs name and in`);
    }
  }
  const checkSecurity = (security: unknown, at: string) => {
    if (security === undefined) return;
    if (!Array.isArray(security)) return fail(`${at}: security must be an array`);
    for (const requirement of security) {
      for (const name of Object.keys(requirement)) {
        if (!(name in schemes)) fail(`${at}: security scheme ${name} is not declared`);
      }
    }
  };
  checkSecurity(doc.security, "#/security");
  const declaredTags = new Set((doc.tags ?? []).map((t: Doc) => t.name));
  const operationIds = new Set<string>();
  const templates = new Map<string, string>();
  for (const [path, item] of Object.entries<Doc>(doc.paths ?? {})) {
    const at = `paths[${path}]`;
    if (!path.startsWith("/")) fail(`${at}: a path must start with /`);
    // Paths that differ only in parameter names are the same path.
    const shape = path.replace(/\{[^}]*\}/g, "{}");
    if (templates.has(shape)) fail(`${at}: same template as ${templates.get(shape)}`);
    templates.set(shape, path);
    const templateParams = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
    const itemParams: Doc[] = item.parameters ?? [];
    for (const method of Object.keys(item)) {
      if (
        !HTTP_METHODS.includes(method) &&
        !["summary", "description", "servers", "parameters", "$ref"].includes(method) &&
        !method.startsWith("x-")
      ) fail(`${at}: unknown field ${method}`);
    }
    for (const method of HTTP_METHODS) {
      const op = item[method];
      if (op === undefined) continue;
      const where = `${method.toUpperCase()} ${path}`;
      if (typeof op.operationId !== "string") fail(`${where}: operationId is missing`);
      else if (operationIds.has(op.operationId)) {
        fail(`${where}: operationId ${op.operationId} repeats`);
      } else operationIds.add(op.operationId);
      for (const tag of op.tags ?? []) {
        if (!declaredTags.has(tag)) fail(`${where}: tag ${tag} is not declared`);
      }
      checkSecurity(op.security, where);
      const params: Doc[] = [...itemParams, ...(op.parameters ?? [])].map((p) =>
        p.$ref ? resolvePointer(doc, p.$ref) ?? p : p
      );
      const seen = new Set<string>();
      for (const p of params) {
        if (typeof p.name !== "string") fail(`${where}: a parameter has no name`);
        if (!["query", "header", "path", "cookie"].includes(p.in)) {
          fail(`${where}: parameter ${p.name} has bad in=${p.in}`);
        }
        if ((p.schema === undefined) === (p.content === undefined)) {
          fail(`${where}: parameter ${p.name} needs exactly one of schema and content`);
        }
        if (p.schema !== undefined) checkJsonSchema(p.schema, `${where} ${p.name}`, problems);
        const key = `${p.in}:${p.in === "header" ? p.name.toLowerCase() : p.name}`;
        if (seen.has(key)) fail(`${where}: parameter ${key} repeats`);
        seen.add(key);
        if (p.in === "path") {
          if (p.required !== true) fail(`${where}: path parameter ${p.name} must be required`);
          if (!templateParams.includes(p.name)) {
            fail(`${where}: path parameter ${p.name} is not in the path`);
          }
        }
      }
      for (const name of templateParams) {
        if (!params.some((p) => p.in === "path" && p.name === name)) {
          fail(`${where}: {${name}} has no path parameter`);
        }
      }
      if (op.requestBody !== undefined) {
        const body = op.requestBody.$ref
          ? resolvePointer(doc, op.requestBody.$ref)
          : op.requestBody;
        if (!body || typeof (body as Doc).content !== "object") {
          fail(`${where}: requestBody needs content`);
        }
      }
      if (!op.responses || Object.keys(op.responses).length === 0) {
        fail(`${where}: responses are required`);
        continue;
      }
      for (const [status, response] of Object.entries<Doc>(op.responses)) {
        if (!/^([1-5]XX|[1-5]\d\d|default)$/.test(status)) fail(`${where}: bad status ${status}`);
        const resolved = response.$ref ? resolvePointer(doc, response.$ref) as Doc : response;
        if (typeof resolved?.description !== "string") {
          fail(`${where} ${status}: a response needs a description`);
        }
        for (const [type, media] of Object.entries<Doc>(resolved?.content ?? {})) {
          if (media.schema !== undefined) {
            checkJsonSchema(media.schema, `${where} ${status} ${type}`, problems);
          }
        }
      }
    }
  }
  for (const [name, schema] of Object.entries(doc.components?.schemas ?? {})) {
    if (!/^[a-zA-Z0-9._-]+$/.test(name)) fail(`components.schemas: bad name ${name}`);
    checkJsonSchema(schema, `#/components/schemas/${name}`, problems);
  }
  for (const [at, ref] of refsIn(doc)) {
    if (resolvePointer(doc, ref) === undefined) fail(`${at}: $ref ${ref} does not resolve`);
  }
  return problems;
}

/** Hono's `/a/:id/*` → `/a/{id}/{*}`. */
function template(honoPath: string): string {
  return honoPath.replace(/:([A-Za-z0-9_]+)(\{[^}]*\})?\??/g, "{$1}").replace(/\*/g, "{*}");
}

/** Routes a client can call: no middleware (`ALL`), no `HEAD`. */
function servedRoutes(routes: readonly Route[]): Route[] {
  const seen = new Set<string>();
  return routes.filter((r) => {
    const method = r.method.toUpperCase();
    if (method === "ALL" || method === "HEAD") return false;
    const key = `${method} ${r.path}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * The operation of `doc` serving `route`, if it has one: a Hono parameter for a template
 * parameter, a wildcard for any, a literal only where the parameter's schema enumerates it.
 */
function operationFor(doc: Doc, route: Route): Doc | undefined {
  const wanted = template(route.path).split("/");
  const method = route.method.toLowerCase();
  for (const [path, item] of Object.entries<Doc>(doc.paths)) {
    const op = item[method];
    const segments = path.split("/");
    if (!op || segments.length !== wanted.length) continue;
    const same = segments.every((s, i) => {
      if (s === wanted[i]) return true;
      const name = /^\{(.+)\}$/.exec(s)?.[1];
      if (name === undefined) return false;
      if (wanted[i] === "{*}") return true;
      const param = (op.parameters ?? []).find((p: Doc) => p.in === "path" && p.name === name);
      const schema = param?.schema?.$ref ? resolvePointer(doc, param.schema.$ref) : param?.schema;
      return Array.isArray((schema as Doc)?.enum) && (schema as Doc).enum.includes(wanted[i]);
    });
    if (same) return op;
  }
  return undefined;
}

/** Routes the app serves that `doc` does not document. */
function undocumented(doc: Doc, routes: readonly Route[]): string[] {
  return servedRoutes(routes).filter((r) => !operationFor(doc, r)).map((r) =>
    `${r.method} ${r.path}`
  );
}

// Whether src/app.ts mounts the document and the page yet.
const probe = await testApp();
const mountedRoutes = servedRoutes(probe.app.routes).map((r) => `${r.method} ${r.path}`);
await probe.dispose();
const SPEC_MOUNTED = mountedRoutes.includes("GET /api/v1/openapi.json");
const DOCS_MOUNTED = mountedRoutes.includes("GET /docs");

async function withApp(fn: (app: TestApp, clock: ManualClock) => Promise<void>): Promise<void> {
  const clock = new ManualClock(Date.now());
  const app = await testApp({ clock });
  try {
    await fn(app, clock);
  } finally {
    await app.dispose();
  }
}

Deno.test("openapi: the document is valid OpenAPI 3.1", () => {
  const doc = openApiDocument();
  assertEquals(validateOpenApi(doc), []);
  // The validator itself catches what it should.
  const broken = structuredClone(doc) as Doc;
  broken.openapi = "3.0.3";
  broken.paths["/api/v1/devices/{id}"].get.parameters = [];
  broken.paths["/healthz"].get.responses = {};
  broken.paths["/api/v1/alarms"].get.operationId = "getDevice";
  broken.components.schemas.Twin.properties.connection.$ref = "#/components/schemas/Nope";
  const problems = validateOpenApi(broken).join("\n");
  for (
    const expected of [
      'openapi must be "3.1.0"',
      "GET /api/v1/devices/{id}: {id} has no path parameter",
      "GET /healthz: responses are required",
      "operationId getDevice repeats",
      "$ref #/components/schemas/Nope does not resolve",
    ]
  ) assert(problems.includes(expected), `validator misses: ${expected}\n${problems}`);
});

Deno.test("openapi: every route the app serves is documented", async () => {
  await withApp((app) => {
    const routes = app.app.routes;
    assert(servedRoutes(routes).length >= 28, "the app lists its routes");
    assertEquals(undocumented(openApiDocument(), routes), []);
    // The served document lists what is mounted, and only that.
    const filtered = openApiDocument({ routes }) as Doc;
    assertEquals(undocumented(filtered, routes), []);
    assertEquals(validateOpenApi(filtered), []);
    const listed = Object.entries<Doc>(filtered.paths).flatMap(([path, item]) =>
      Object.keys(item).map((method) => `${method.toUpperCase()} ${path}`)
    );
    const used = new Set(servedRoutes(routes).map((r) => operationFor(filtered, r).operationId));
    assertEquals(listed.length, used.size, listed.join("\n"));
    // Without the embedded broker there is no /mqtt; the full document has it.
    if (!routes.some((r) => r.path === "/mqtt")) assertEquals(filtered.paths["/mqtt"], undefined);
    assert((openApiDocument() as Doc).paths["/mqtt"].get, "the full document has /mqtt");
    return Promise.resolve();
  });
});

Deno.test("openapi: request bodies are the zod schemas that validate requests", () => {
  const doc = openApiDocument() as Doc;
  const bodyRef = (method: string, path: string) =>
    doc.paths[path][method].requestBody.content["application/json"].schema.$ref;
  const cases: Array<[string, string, z.ZodType, string]> = [
    ["post", "/api/v1/devices", RegisterDevice, "RegisterDevice"],
    ["patch", "/api/v1/devices/{id}", UpdateDevice, "UpdateDevice"],
    ["post", "/api/v1/devices/{id}/commands", CreateCommand, "CreateCommand"],
    ["post", "/device/v1/commands/{commandId}/result", CommandResult, "CommandResult"],
    ["post", "/api/v1/push/subscriptions", PushSubscriptionBody, "PushSubscription"],
  ];
  for (const [method, path, schema, name] of cases) {
    assertEquals(bodyRef(method, path), `#/components/schemas/${name}`);
    assert((REQUEST_SCHEMAS as Record<string, z.ZodType>)[name] === schema, `${name} is the same`);
    const { $schema: _, ...expected } = z.toJSONSchema(schema, {
      target: "draft-2020-12",
      io: "input",
      unrepresentable: "any",
    }) as Record<string, unknown>;
    const component = doc.components.schemas[name];
    // Same constraints (JSON values are a shared component there, and dates lose their regex).
    assertEquals(Object.keys(component.properties), Object.keys(expected.properties as object));
    assertEquals(component.required, expected.required);
    assertEquals(component.additionalProperties, expected.additionalProperties);
  }
  assertEquals(doc.components.schemas.CreateCommand.properties.ttl.maximum, 604_800);
  assertEquals(doc.components.schemas.CommandResult.properties.status.enum, [
    "succeeded",
    "failed",
  ]);
  // Headers and security the routes honour.
  const names = (method: string, path: string) =>
    doc.paths[path][method].parameters.map((p: Doc) => `${p.in}:${p.name}`);
  assert(names("patch", "/api/v1/twins/{id}/desired").includes("header:If-Match"));
  assert(names("get", "/api/v1/twins/{id}").includes("header:If-None-Match"));
  assert(names("post", "/api/v1/devices/{id}/commands").includes("header:Idempotency-Key"));
  assert(names("get", "/device/v1/commands").includes("query:device"), "gateway parameter");
  assertEquals(doc.paths["/api/v1/devices"].get.security, [{ operator: [] }, { session: [] }]);
  assert(names("post", "/api/v1/devices").includes("header:X-CSRF-Token"), "CSRF with a session");
  assertEquals(doc.paths["/metrics"].get.security, [{ operator: [] }]);
  assertEquals(doc.paths["/devices"].get.security, [{ session: [] }]);
  assertEquals(doc.paths["/device/v1/twin"].get.security, [{ device: [] }]);
  assertEquals(doc.paths["/healthz"].get.security, []);
  assertEquals(doc.components.securitySchemes.operator, {
    type: "http",
    scheme: "bearer",
    description: doc.components.securitySchemes.operator.description,
  });
  assertEquals(doc.components.securitySchemes.device.scheme, "basic");
  const desired = doc.paths["/api/v1/twins/{id}/desired"].patch.responses;
  for (const status of ["200", "400", "401", "404", "412", "413"]) assert(desired[status], status);
});

/** Parses `body` with `schema` and fails if anything was dropped or changed on the way. */
function assertShape(schema: z.ZodType, body: unknown, what: string): void {
  const result = schema.safeParse(body);
  assert(
    result.success,
    `${what}: ${result.error?.message}\n${JSON.stringify(body, null, 2)}`,
  );
  assertEquals(result.data, body, `${what}: has fields the schema does not name`);
}

/** Reads a JSON response, checks its status is documented for the operation, and its shape. */
async function check(
  doc: Doc,
  res: Response,
  op: [string, string],
  status: number,
  schema?: z.ZodType,
): Promise<Doc> {
  const text = await res.text();
  assertEquals(res.status, status, `${op[0]} ${op[1]}: ${text}`);
  const operation = doc.paths[op[1]]?.[op[0].toLowerCase()];
  assert(operation, `${op[0]} ${op[1]} is documented`);
  assert(operation.responses[String(status)], `${op[0]} ${op[1]} documents ${status}`);
  if (!text) return undefined;
  const body = JSON.parse(text);
  if (schema) assertShape(schema, body, `${op[0]} ${op[1]} ${status}`);
  if (status >= 400) assertShape(R.ErrorBody, body, `${op[0]} ${op[1]} ${status}`);
  return body;
}

Deno.test("openapi: real responses parse with the response schemas", async () => {
  const doc = openApiDocument() as Doc;
  await withApp(async (app, clock) => {
    const reg = await app.op("POST", "/api/v1/devices", {
      id: "t1",
      kind: "thermostat",
      tags: { site: "lab" },
    });
    const device = await check(doc, reg, ["POST", "/api/v1/devices"], 201, R.DeviceWithKey);
    const creds = { id: "t1", key: device.key as string };
    await check(
      doc,
      await app.op("POST", "/api/v1/devices", { id: "t1", kind: "thermostat" }),
      ["POST", "/api/v1/devices"],
      409,
    );
    const invalid = await check(
      doc,
      await app.op("POST", "/api/v1/devices", { kind: "" }),
      ["POST", "/api/v1/devices"],
      400,
    );
    assertShape(R.ValidationDetails, invalid.error.details, "validation details");

    // Device traffic, so twin, history, commands, events and alarms all have content.
    const at = clock.now();
    for (let i = 0; i <= 4; i++) {
      const res = await app.dev(creds, "POST", "/device/v1/telemetry", [
        { ts: at + i * 10_000, temperature: 33 + i, humidity: 40, id: `m${i}` },
      ]);
      await check(doc, res, ["POST", "/device/v1/telemetry"], 202, R.TelemetryAccepted);
    }
    clock.advance(45_000);
    await check(
      doc,
      await app.dev(creds, "PATCH", "/device/v1/twin/reported", { firmware: "1.2.0" }),
      ["PATCH", "/device/v1/twin/reported"],
      200,
      R.ReportedAccepted,
    );
    const patched = await check(
      doc,
      await app.op("PATCH", "/api/v1/twins/t1/desired", { targetTemperature: 21 }, {
        "if-match": '"2"',
      }),
      ["PATCH", "/api/v1/twins/{id}/desired"],
      200,
      R.Twin,
    );
    assertEquals(patched.version, 3);
    await check(
      doc,
      await app.op("PATCH", "/api/v1/twins/t1/desired", { targetTemperature: 22 }, {
        "if-match": '"2"',
      }),
      ["PATCH", "/api/v1/twins/{id}/desired"],
      412,
    );
    const twinRes = await app.op("GET", "/api/v1/twins/t1");
    const etag = twinRes.headers.get("etag");
    const twin = await check(doc, twinRes, ["GET", "/api/v1/twins/{id}"], 200, R.Twin);
    assert(Object.keys(twin.metadata.desired).length > 0, "metadata has leaves");
    assert(twin.telemetry.lastAt, "telemetry arrived");
    await check(
      doc,
      await app.op("GET", "/api/v1/twins/t1", undefined, { "if-none-match": etag! }),
      ["GET", "/api/v1/twins/{id}"],
      304,
    );
    await check(
      doc,
      await app.op("GET", "/api/v1/twins/nope"),
      ["GET", "/api/v1/twins/{id}"],
      404,
    );
    await check(
      doc,
      await app.dev(creds, "GET", "/device/v1/twin"),
      ["GET", "/device/v1/twin"],
      200,
      R.DeviceTwin,
    );
    await check(
      doc,
      await app.dev({ id: "t1", key: "wrong" }, "GET", "/device/v1/twin"),
      ["GET", "/device/v1/twin"],
      401,
    );

    await check(
      doc,
      await app.op("GET", "/api/v1/devices/t1"),
      ["GET", "/api/v1/devices/{id}"],
      200,
      R.Device,
    );
    await check(
      doc,
      await app.op("GET", "/api/v1/devices?tag=site:lab&limit=10"),
      ["GET", "/api/v1/devices"],
      200,
      R.DeviceList,
    );
    await check(
      doc,
      await app.op("PATCH", "/api/v1/devices/t1", { tags: { room: "2.14" } }),
      ["PATCH", "/api/v1/devices/{id}"],
      200,
      R.Device,
    );

    // Commands, both sides.
    const command = await check(
      doc,
      await app.op("POST", "/api/v1/devices/t1/commands", { name: "reboot", payload: {} }, {
        "idempotency-key": "k1",
      }),
      ["POST", "/api/v1/devices/{id}/commands"],
      202,
      R.Command,
    );
    const polled = await check(
      doc,
      await app.dev(creds, "GET", "/device/v1/commands"),
      ["GET", "/device/v1/commands"],
      200,
      R.DeviceCommandList,
    );
    assert(polled.items.some((c: Doc) => c.id === command.id), "the device got the command");
    for (const item of polled.items) {
      await check(
        doc,
        await app.dev(creds, "POST", `/device/v1/commands/${item.id}/result`, {
          status: "succeeded",
          result: { ok: true },
        }),
        ["POST", "/device/v1/commands/{commandId}/result"],
        200,
        R.CommandResultAccepted,
      );
    }
    await check(
      doc,
      await app.dev(creds, "POST", `/device/v1/commands/${command.id}/result`, {
        status: "failed",
      }),
      ["POST", "/device/v1/commands/{commandId}/result"],
      409,
    );
    await check(
      doc,
      await app.op("GET", `/api/v1/devices/t1/commands/${command.id}`),
      ["GET", "/api/v1/devices/{id}/commands/{commandId}"],
      200,
      R.Command,
    );
    await check(
      doc,
      await app.op("GET", "/api/v1/devices/t1/commands"),
      ["GET", "/api/v1/devices/{id}/commands"],
      200,
      R.CommandList,
    );

    // History, events, alarms.
    const points = await check(
      doc,
      await app.op("GET", `/api/v1/devices/t1/telemetry?metric=temperature&from=${at - 1}`),
      ["GET", "/api/v1/devices/{id}/telemetry"],
      200,
      R.HistoryPage,
    );
    assertEquals(points.items.length, 5);
    const buckets = await check(
      doc,
      await app.op("GET", `/api/v1/devices/t1/telemetry?metric=temperature&bucket=1m`),
      ["GET", "/api/v1/devices/{id}/telemetry"],
      200,
      R.HistoryPage,
    );
    assert(buckets.items.length >= 1, "a bucket");
    await check(
      doc,
      await app.op("GET", "/api/v1/devices/t1/telemetry"),
      ["GET", "/api/v1/devices/{id}/telemetry"],
      400,
    );
    await check(
      doc,
      await app.op("GET", "/api/v1/devices/t1/events?limit=1000"),
      ["GET", "/api/v1/devices/{id}/events"],
      200,
      R.EventList,
    );
    const alarms = await check(
      doc,
      await app.op("GET", "/api/v1/alarms"),
      ["GET", "/api/v1/alarms"],
      200,
      R.AlarmList,
    );
    assert(alarms.items.length > 0, "running hot for 40 s raised an alarm");
    const alarmId = alarms.items[0].id;
    await check(
      doc,
      await app.op("GET", `/api/v1/alarms/${alarmId}`),
      ["GET", "/api/v1/alarms/{alarmId}"],
      200,
      R.Alarm,
    );
    await check(
      doc,
      await app.op("POST", `/api/v1/alarms/${alarmId}/acknowledge`),
      ["POST", "/api/v1/alarms/{alarmId}/acknowledge"],
      200,
      R.Alarm,
    );
    await check(
      doc,
      await app.op("POST", `/api/v1/alarms/${alarmId}/clear`),
      ["POST", "/api/v1/alarms/{alarmId}/clear"],
      200,
      R.Alarm,
    );
    await check(
      doc,
      await app.op("POST", `/api/v1/alarms/${alarmId}/clear`),
      ["POST", "/api/v1/alarms/{alarmId}/clear"],
      409,
    );

    // Push.
    await check(
      doc,
      await app.op("GET", "/api/v1/push/vapid-public-key"),
      ["GET", "/api/v1/push/vapid-public-key"],
      200,
      R.VapidPublicKey,
    );
    const sub = await check(
      doc,
      await app.op("POST", "/api/v1/push/subscriptions", {
        endpoint: "https://push.example/abc",
        keys: {
          p256dh: base64url(new Uint8Array(65).fill(4, 0, 1)),
          auth: base64url(new Uint8Array(16)),
        },
        severities: ["critical"],
      }),
      ["POST", "/api/v1/push/subscriptions"],
      201,
      R.PushSubscriptionCreated,
    );
    await check(
      doc,
      await app.op("GET", "/api/v1/push/subscriptions"),
      ["GET", "/api/v1/push/subscriptions"],
      200,
      R.PushSubscriptionList,
    );
    await check(
      doc,
      await app.op("DELETE", `/api/v1/push/subscriptions/${sub.id}`),
      ["DELETE", "/api/v1/push/subscriptions/{id}"],
      204,
    );

    // Keys, deletion, health.
    await check(
      doc,
      await app.op("POST", "/api/v1/devices/t1/keys"),
      ["POST", "/api/v1/devices/{id}/keys"],
      200,
      R.DeviceWithKey,
    );
    await check(
      doc,
      await app.op("DELETE", "/api/v1/devices/t1"),
      ["DELETE", "/api/v1/devices/{id}"],
      204,
    );
    await check(
      doc,
      await app.op("GET", "/api/v1/devices/t1"),
      ["GET", "/api/v1/devices/{id}"],
      404,
    );
    await check(
      doc,
      await app.app.request("/api/v1/devices"),
      ["GET", "/api/v1/devices"],
      401,
    );
    await check(doc, await app.app.request("/healthz"), ["GET", "/healthz"], 200, R.Health);
  });
});

Deno.test("openapi: declared security matches what the routes do without credentials", async () => {
  await withApp(async (app) => {
    const doc = openApiDocument({ routes: app.app.routes }) as Doc;
    for (const [path, item] of Object.entries<Doc>(doc.paths)) {
      const op = item.get;
      if (!op || path.includes("{") || op["x-websocket"]) continue;
      if (Object.values<Doc>(op.responses).some((r) => r.content?.["text/event-stream"])) continue;
      const res = await app.app.request(path);
      await res.body?.cancel();
      if (op.security.length === 0) {
        assert(res.status < 400, `GET ${path} is documented as public but gave ${res.status}`);
      } else {
        assert(
          res.status === 401 || (res.status >= 300 && res.status < 400),
          `GET ${path} is documented as needing credentials but gave ${res.status}`,
        );
      }
    }
  });
});

Deno.test("openapi: the reference page is self-contained and lists every operation", () => {
  const doc = openApiDocument() as Doc;
  const html = docsHtml();
  assert(html.startsWith("<!DOCTYPE html>"));
  assert(!/<script\b/i.test(html), "no script");
  assert(!/<link\b/i.test(html), "no external stylesheet");
  assert(!/\b(src|href)="(https?:)?\/\//i.test(html), "no external assets");
  for (const item of Object.values<Doc>(doc.paths)) {
    for (const op of Object.values<Doc>(item)) {
      assert(html.includes(`id="op-${op.operationId}"`), `the page shows ${op.operationId}`);
    }
  }
  for (const name of Object.keys(doc.components.schemas)) {
    assert(html.includes(`id="schema-${name}"`), `the page shows schema ${name}`);
  }
  // Every in-page link has its target.
  const ids = new Set([...html.matchAll(/\bid="([^"]+)"/g)].map((m) => m[1]));
  for (const [, target] of html.matchAll(/href="#([^"]+)"/g)) {
    assert(ids.has(target), `link #${target} has a target`);
  }
  assert(html.includes("&quot;additionalProperties&quot;"), "schemas are rendered as JSON");
});

Deno.test({
  name: "openapi: GET /api/v1/openapi.json serves the document (public)",
  ignore: !SPEC_MOUNTED,
  fn: () =>
    withApp(async (app) => {
      const res = await app.app.request("/api/v1/openapi.json");
      assertEquals(res.status, 200);
      assert(res.headers.get("content-type")?.startsWith("application/json"));
      const doc = await res.json();
      assertEquals(validateOpenApi(doc), []);
      assertEquals(undocumented(doc, app.app.routes), []);
      assert(doc.paths["/api/v1/openapi.json"]?.get, "it documents itself");
      if (DOCS_MOUNTED) assert(doc.paths["/docs"]?.get, "and /docs");
    }),
});

Deno.test({
  name: "openapi: GET /docs serves the reference page (public)",
  ignore: !DOCS_MOUNTED,
  fn: () =>
    withApp(async (app) => {
      const res = await app.app.request("/docs");
      assertEquals(res.status, 200);
      assert(res.headers.get("content-type")?.startsWith("text/html"));
      const html = await res.text();
      assert(!/<script\b[^>]*\bsrc=/i.test(html), "no external script");
      for (const route of servedRoutes(app.app.routes)) {
        const op = operationFor(openApiDocument(), route);
        assert(html.includes(`id="op-${op.operationId}"`), `the page shows ${route.path}`);
      }
    }),
});

function base64url(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_")
    .replace(/=+$/, "");
}
