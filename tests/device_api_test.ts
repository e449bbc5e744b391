/**
 * HTTP tests of the device API (`/device/v1`, HTTP Basic `deviceId:key`) through
 * `app.request()`: every route, gateways acting for children, and every error the contract names
 * with its status, its `{"error": {code, message, details?}}` body, and that nothing was written.
 * @module
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { ADMIN_TOKEN, type TestApp } from "./helpers.ts";
import { type ApiError, expectError, expectInvalid, fields, json, test } from "./api_assertions.ts";

// ---------------------------------------------------------------------------------------------
// Local helpers

/** Asserts a 400 for a body with an unknown property `name` (strict schema). */
async function expectUnknownField(res: Response, name: string): Promise<ApiError> {
  const error = await expectError(res, 400, "validation_failed");
  assert(
    JSON.stringify(error.details).includes(name),
    `expected details to name the unknown field ${name}: ${JSON.stringify(error.details)}`,
  );
  return error;
}

/** GETs the twin document (operator view). */
// deno-lint-ignore no-explicit-any
async function twinOf(t: TestApp, id: string): Promise<any> {
  return await json(await t.op("GET", `/api/v1/twins/${id}`), 200);
}

/** GETs one command (operator view). */
// deno-lint-ignore no-explicit-any
async function commandOf(t: TestApp, id: string, commandId: string): Promise<any> {
  return await json(await t.op("GET", `/api/v1/devices/${id}/commands/${commandId}`), 200);
}

/** Queues a command (operator) and returns its id. */
async function queue(
  t: TestApp,
  id: string,
  name = "cool",
  payload: unknown = { targetTemperature: 20 },
): Promise<string> {
  const body = await json(
    await t.op("POST", `/api/v1/devices/${id}/commands`, { name, payload }),
    202,
  );
  assertEquals(body.status, "queued");
  return body.id;
}

/** A device request with a raw Authorization header (or none). */
function raw(
  t: TestApp,
  method: string,
  path: string,
  authorization: string | null,
  body?: unknown,
): Promise<Response> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (authorization !== null) headers.authorization = authorization;
  return Promise.resolve(t.app.request(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  }));
}

const basic = (id: string, key: string) => `Basic ${btoa(`${id}:${key}`)}`;

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

// ---------------------------------------------------------------------------------------------
// Authentication

test("every device route refuses missing, wrong, foreign or malformed credentials with 401, writing nothing", async (t) => {
  const d = await t.register({ id: "d1" });
  const other = await t.register({ id: "d2" });
  const cmd = await queue(t, "d1");
  const routes: Array<[string, string, unknown?]> = [
    ["POST", "/device/v1/telemetry", { temperature: 21 }],
    ["GET", "/device/v1/twin"],
    ["PATCH", "/device/v1/twin/reported", { firmware: "9.9.9" }],
    ["GET", "/device/v1/commands"],
    ["POST", `/device/v1/commands/${cmd}/result`, { status: "succeeded" }],
  ];
  const badAuth: Array<string | null> = [
    null, // no Authorization at all
    "",
    basic("d1", "wrong-key"),
    basic("d1", ""),
    basic("d1", other.key), // another device's key
    basic("d2", d.key), // this key under another id
    basic("ghost", d.key), // unknown device
    `Basic ${btoa(`d1${d.key}`)}`, // no colon
    "Basic !!!not-base64!!!",
    "Basic",
    `Bearer ${ADMIN_TOKEN}`, // the operator token is not a device credential
    `Bearer ${d.key}`,
    `${d.id}:${d.key}`,
  ];
  for (const [method, path, body] of routes) {
    for (const auth of badAuth) {
      const what = `${method} ${path} with ${JSON.stringify(auth)}`;
      const res = await raw(t, method, path, auth, body);
      await expectError(res, 401, "unauthorized").catch((e) => {
        throw new Error(`${what}: ${e.message}`);
      });
      assertMatch(res.headers.get("www-authenticate") ?? "", /^Basic/i, what);
    }
  }
  // Nothing was written.
  const twin = await twinOf(t, "d1");
  assertEquals(twin.version, 1);
  assertEquals(twin.reported, {});
  assertEquals(twin.telemetry, { last: {}, lastAt: null });
  assertEquals(twin.connection.lastSeenAt, null);
  assertEquals((await commandOf(t, "d1", cmd)).status, "queued");
  assertEquals((await twinOf(t, "d2")).telemetry.last, {});
  // The real key still works.
  assertEquals((await json(await t.dev(d, "GET", "/device/v1/twin"), 200)).version, 1);
});

// ---------------------------------------------------------------------------------------------
// Disabled devices

test("a disabled device is refused with 403 on every route, at once, and accepted again once re-enabled", async (t) => {
  const d = await t.register({ id: "d1" });
  const cmd = await queue(t, "d1");
  // Deliver one command before disabling, to have something to answer.
  const delivered = await queue(t, "d1", "reboot", {});
  const first = await json(await t.dev(d, "GET", "/device/v1/commands"), 200);
  assertEquals(first.items.map((c: { id: string }) => c.id), [cmd, delivered]);
  const cmd2 = await queue(t, "d1");
  // Make sure the device was seen (activation warm, key cached) before it is disabled.
  await json(await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 20 }), 202);

  await json(await t.op("PATCH", "/api/v1/devices/d1", { enabled: false }), 200);
  // Disabling takes it offline (its own write); what it sends from now on writes nothing.
  const before = await twinOf(t, "d1");
  assertEquals(before.connection.status, "offline");
  const routes: Array<[string, string, unknown?]> = [
    ["POST", "/device/v1/telemetry", { temperature: 25 }],
    ["POST", "/device/v1/telemetry", [{ temperature: 25 }, { temperature: 26 }]],
    ["GET", "/device/v1/twin"],
    ["PATCH", "/device/v1/twin/reported", { firmware: "2.0.0" }],
    ["GET", "/device/v1/commands"],
    ["GET", "/device/v1/commands?wait=1"],
    ["POST", `/device/v1/commands/${delivered}/result`, { status: "succeeded" }],
  ];
  for (const [method, path, body] of routes) {
    await expectError(await t.dev(d, method, path, body), 403, "forbidden").catch((e) => {
      throw new Error(`${method} ${path}: ${e.message}`);
    });
  }
  // Nothing was written.
  assertEquals(await twinOf(t, "d1"), before);
  assertEquals((await commandOf(t, "d1", cmd2)).status, "queued");
  assertEquals((await commandOf(t, "d1", delivered)).status, "delivered");

  // Re-enabled: accepted again.
  await json(await t.op("PATCH", "/api/v1/devices/d1", { enabled: true }), 200);
  assertEquals(
    await json(await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 25 }), 202),
    { accepted: 1, duplicates: 0 },
  );
  assertEquals((await json(await t.dev(d, "GET", "/device/v1/twin"), 200)).version, 1);
  assertEquals(
    await json(await t.dev(d, "PATCH", "/device/v1/twin/reported", { firmware: "2.0.0" }), 200),
    { version: 2 },
  );
  const polled = await json(await t.dev(d, "GET", "/device/v1/commands"), 200);
  assertEquals(polled.items.map((c: { id: string }) => c.id), [cmd2]);
  assertEquals(
    await json(
      await t.dev(d, "POST", `/device/v1/commands/${delivered}/result`, { status: "succeeded" }),
      200,
    ),
    { id: delivered, status: "succeeded" },
  );
  assertEquals((await twinOf(t, "d1")).telemetry.last.temperature, 25);
});

// ---------------------------------------------------------------------------------------------
// POST /device/v1/telemetry

test("telemetry: one object is accepted with 202 {accepted} and shown on the twin", async (t) => {
  const d = await t.register({ id: "d1" });
  const before = Date.now();
  const res = await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 21.5, humidity: 40 });
  assertEquals(await json(res, 202), { accepted: 1, duplicates: 0 });
  const twin = await twinOf(t, "d1");
  assertEquals(twin.telemetry.last, { temperature: 21.5, humidity: 40 });
  assertMatch(twin.telemetry.lastAt, ISO);
  const lastAt = Date.parse(twin.telemetry.lastAt);
  assert(lastAt >= before - 1 && lastAt <= Date.now() + 1, "without ts, arrival time is used");
  assertMatch(twin.connection.lastSeenAt, ISO);
  // Telemetry is not desired/reported state.
  assertEquals(twin.desired, {});
  assertEquals(twin.reported, {});
  // A second reading merges into `last`.
  await json(await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 22 }), 202);
  assertEquals((await twinOf(t, "d1")).telemetry.last, { temperature: 22, humidity: 40 });
});

test("telemetry: a batch is accepted whole; the last reading wins", async (t) => {
  const d = await t.register({ id: "d1" });
  const res = await t.dev(d, "POST", "/device/v1/telemetry", [
    { temperature: 20, humidity: 30 },
    { temperature: 21 },
    { temperature: 22, id: "b-3" },
  ]);
  assertEquals(await json(res, 202), { accepted: 3, duplicates: 0 });
  const twin = await twinOf(t, "d1");
  assertEquals(twin.telemetry.last, { temperature: 22, humidity: 30 });
  // A one-item array is a batch too.
  assertEquals(
    await json(await t.dev(d, "POST", "/device/v1/telemetry", [{ temperature: 23 }]), 202),
    { accepted: 1, duplicates: 0 },
  );
  // A permissive kind takes anything shaped as an object.
  const g = await t.register({ id: "g1", kind: "generic" });
  assertEquals(
    await json(
      await t.dev(g, "POST", "/device/v1/telemetry", [{ a: 1, nested: { b: [1, 2] } }, {
        c: "x",
      }]),
      202,
    ),
    { accepted: 2, duplicates: 0 },
  );
  assertEquals((await twinOf(t, "g1")).telemetry.last, { a: 1, nested: { b: [1, 2] }, c: "x" });
});

test("telemetry and patches nested deeper than 32 levels are refused with 400, writing nothing", async (t) => {
  const d = await t.register({ id: "deep1", kind: "generic" });
  const nest = (levels: number) => '{"a":'.repeat(levels) + "1" + "}".repeat(levels);
  const deep = await expectError(
    await t.dev(d, "POST", "/device/v1/telemetry", nest(40)),
    400,
    "bad_request",
  );
  assertEquals(fields(deep), ["(body)"]);
  // Like every 400, a body that is not JSON, or an empty batch, names the field: the body.
  const notJson = await t.dev(d, "POST", "/device/v1/telemetry", "{nope");
  assertEquals(fields(await expectError(notJson, 400, "invalid_json")), ["(body)"]);
  const empty = await t.dev(d, "POST", "/device/v1/telemetry", []);
  assertEquals(fields(await expectError(empty, 400, "bad_request")), ["(body)"]);
  await expectError(
    await t.dev(d, "PATCH", "/device/v1/twin/reported", nest(33)),
    400,
    "bad_request",
  );
  assertEquals((await json(await t.op("GET", "/api/v1/twins/deep1"), 200)).version, 1);
  await json(await t.dev(d, "POST", "/device/v1/telemetry", nest(31)), 202);
});

test("every 400 names what was wrong: a missing body, the body as a whole, a missing WebSocket upgrade, a gateway's ?device= on /ws", async (t) => {
  const d = await t.register({ id: "n1" });
  const noBody = await t.dev(d, "POST", "/device/v1/telemetry", undefined);
  assertEquals(fields(await expectError(noBody, 400, "bad_request")), ["(body)"]);
  const opNoBody = await t.op("POST", "/api/v1/devices", undefined);
  assertEquals(fields(await expectError(opNoBody, 400, "bad_request")), ["(body)"]);
  // A document that is wrong as a whole (no field at fault) is named `(body)`, not "".
  const emptyUpdate = await t.op("PATCH", "/api/v1/devices/n1", {});
  assertEquals(fields(await expectError(emptyUpdate, 400, "validation_failed")), ["(body)"]);
  const plainGet = await t.dev(d, "GET", "/device/v1/ws", undefined);
  assertEquals(fields(await expectError(plainGet, 400, "bad_request")), ["Upgrade"]);
  const gw = await t.register({ id: "gw9" });
  await t.register({ id: "kid9", parent: "gw9" });
  const viaGateway = await t.dev(
    gw,
    "GET",
    "/device/v1/ws?device=kid9",
    undefined,
    { upgrade: "websocket" },
  );
  assertEquals(fields(await expectError(viaGateway, 400, "bad_request")), ["device"]);
});

test("telemetry: a batch with one bad item is refused whole with details naming items[i].field", async (t) => {
  const d = await t.register({ id: "d1" });
  await json(await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 19 }), 202);
  const before = await twinOf(t, "d1");

  const bad = await expectError(
    await t.dev(d, "POST", "/device/v1/telemetry", [
      { temperature: 20, id: "m1" },
      { temperature: "hot", id: "m2" },
      { temperature: 22, id: "m3" },
    ]),
    400,
    "validation_failed",
  );
  assertEquals(fields(bad), ["items[1].temperature"]);
  assertMatch(bad.message, /items\[1\]\.temperature/);

  // Several bad items, each named.
  const many = await expectError(
    await t.dev(d, "POST", "/device/v1/telemetry", [
      { temperature: 20 },
      { humidity: 10 },
      { temperature: 20, humidity: 101 },
      { temperature: 20, ts: "not a time" },
      "not an object",
      { temperature: 20, id: 5 },
    ]),
    400,
    "validation_failed",
  );
  const named = fields(many);
  for (
    const f of [
      "items[1].temperature",
      "items[2].humidity",
      "items[3].ts",
      "items[4]",
      "items[5].id",
    ]
  ) {
    assert(named.includes(f), `${f} in ${JSON.stringify(named)}`);
  }
  assert(!named.some((f) => f.startsWith("items[0]")), "the good item is not named");

  // An unknown field in one item (thermostat telemetry is strict).
  await expectUnknownField(
    await t.dev(d, "POST", "/device/v1/telemetry", [{ temperature: 20 }, {
      temperature: 20,
      pressure: 1013,
    }]),
    "pressure",
  );

  // Nothing was written, not even the message ids of the good items.
  assertEquals(await twinOf(t, "d1"), before);
  assertEquals(
    await json(
      await t.dev(d, "POST", "/device/v1/telemetry", [
        { temperature: 20, id: "m1" },
        { temperature: 21, id: "m2" },
        { temperature: 22, id: "m3" },
      ]),
      202,
    ),
    { accepted: 3, duplicates: 0 },
  );
  assertEquals((await twinOf(t, "d1")).telemetry.last.temperature, 22);
});

test("telemetry: a bad single object is refused with 400 naming the field, writing nothing", async (t) => {
  const d = await t.register({ id: "d1" });
  const path = "/device/v1/telemetry";
  await expectInvalid(await t.dev(d, "POST", path, { temperature: "21" }), "temperature");
  await expectInvalid(await t.dev(d, "POST", path, { humidity: 50 }), "temperature");
  await expectInvalid(await t.dev(d, "POST", path, { temperature: 500 }), "temperature");
  await expectInvalid(await t.dev(d, "POST", path, { temperature: 20, ts: true }), "ts");
  await expectInvalid(await t.dev(d, "POST", path, { temperature: 20, ts: "soon" }), "ts");
  await expectInvalid(await t.dev(d, "POST", path, { temperature: 20, id: "" }), "id");
  await expectInvalid(await t.dev(d, "POST", path, { temperature: 20, id: "x".repeat(129) }), "id");
  await expectUnknownField(await t.dev(d, "POST", path, { temperature: 20, co2: 400 }), "co2");
  const notObject = await t.dev(d, "POST", path, 42);
  assertEquals(notObject.status, 400);
  await notObject.body?.cancel();
  // An empty batch is bad input too.
  const empty = await t.dev(d, "POST", path, []);
  assertEquals(empty.status, 400);
  assert((await empty.json()).error.code, "error shape");
  // Malformed JSON.
  await expectError(await t.dev(d, "POST", path, '{"temperature": 2'), 400, "invalid_json");
  await expectError(await t.dev(d, "POST", path, "[{}, "), 400, "invalid_json");
  await expectError(await t.dev(d, "POST", path, "temperature=21"), 400, "invalid_json");
  const twin = await twinOf(t, "d1");
  assertEquals(twin.telemetry, { last: {}, lastAt: null });
  assertEquals(twin.version, 1);
});

test("telemetry: oversize bodies and batches are refused with 413, writing nothing", async (t) => {
  const d = await t.register({ id: "d1" });
  const g = await t.register({ id: "g1", kind: "generic" });
  // A body over 256 KiB.
  await expectError(
    await t.dev(g, "POST", "/device/v1/telemetry", { blob: "x".repeat(260 * 1024) }),
    413,
    "payload_too_large",
  );
  const items = Array.from({ length: 3000 }, (_, i) => ({ temperature: 20, humidity: i % 100 }));
  assert(JSON.stringify(items).length > 256 * 1024 / 3, "sanity");
  await expectError(
    await t.dev(d, "POST", "/device/v1/telemetry", [...items, ...items, ...items]),
    413,
    "payload_too_large",
  );
  // Over 500 items, small enough in bytes.
  await expectError(
    await t.dev(
      d,
      "POST",
      "/device/v1/telemetry",
      Array.from({ length: 501 }, () => ({ temperature: 20 })),
    ),
    413,
    "payload_too_large",
  );
  assertEquals((await twinOf(t, "d1")).telemetry.last, {});
  assertEquals((await twinOf(t, "g1")).telemetry.last, {});
  // 500 items are fine.
  assertEquals(
    await json(
      await t.dev(
        d,
        "POST",
        "/device/v1/telemetry",
        Array.from({ length: 500 }, () => ({ temperature: 20 })),
      ),
      202,
    ),
    { accepted: 500, duplicates: 0 },
  );
});

test("telemetry: an id is applied once only; a resend reports duplicates and changes nothing", async (t) => {
  const d = await t.register({ id: "d1" });
  assertEquals(
    await json(
      await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 20, id: "msg-1" }),
      202,
    ),
    { accepted: 1, duplicates: 0 },
  );
  const before = await twinOf(t, "d1");
  assertEquals(before.telemetry.last, { temperature: 20 }, "the envelope id is not a value");

  // A resend (even with other values) is a duplicate and changes nothing.
  assertEquals(
    await json(
      await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 25, id: "msg-1" }),
      202,
    ),
    { accepted: 0, duplicates: 1 },
  );
  const after = await twinOf(t, "d1");
  assertEquals(after.telemetry, before.telemetry);
  assertEquals(after.version, before.version);

  // The memory of ids is durable: it survives the twin leaving memory.
  t.runtime.evict("d1");
  assertEquals(
    await json(
      await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 26, id: "msg-1" }),
      202,
    ),
    { accepted: 0, duplicates: 1 },
  );
  // Within a batch: new ids apply, repeated and old ones do not.
  assertEquals(
    await json(
      await t.dev(d, "POST", "/device/v1/telemetry", [
        { temperature: 21, id: "msg-2" },
        { temperature: 27, id: "msg-2" },
        { temperature: 28, id: "msg-1" },
        { temperature: 22 },
      ]),
      202,
    ),
    { accepted: 2, duplicates: 2 },
  );
  assertEquals((await twinOf(t, "d1")).telemetry.last, { temperature: 22 });
  // Ids are per device.
  const other = await t.register({ id: "d2" });
  assertEquals(
    await json(
      await t.dev(other, "POST", "/device/v1/telemetry", { temperature: 20, id: "msg-1" }),
      202,
    ),
    { accepted: 1, duplicates: 0 },
  );
  // Concurrent resends of one id apply it once.
  const results = await Promise.all(
    Array.from(
      { length: 5 },
      () =>
        t.dev(d, "POST", "/device/v1/telemetry", { temperature: 23, id: "msg-3" })
          .then((r) => json(r, 202)),
    ),
  );
  assertEquals(results.reduce((n, r) => n + r.accepted, 0), 1);
  assertEquals(results.reduce((n, r) => n + r.duplicates, 0), 4);
});

test("telemetry: ts (ISO or epoch ms) sets lastAt; older readings do not replace last; insane ts uses arrival time", async (t) => {
  const d = await t.register({ id: "d1" });
  const path = "/device/v1/telemetry";
  const now = Date.now();

  // ISO 8601 ts.
  const iso = new Date(now - 60_000).toISOString();
  await json(await t.dev(d, "POST", path, { temperature: 20, ts: iso }), 202);
  let twin = await twinOf(t, "d1");
  assertEquals(twin.telemetry.lastAt, iso);
  assertEquals(twin.telemetry.last, { temperature: 20 }, "ts is not a value");

  // Epoch milliseconds, newer.
  const ms = now - 30_000;
  await json(await t.dev(d, "POST", path, { temperature: 21, ts: ms }), 202);
  twin = await twinOf(t, "d1");
  assertEquals(twin.telemetry.lastAt, new Date(ms).toISOString());
  assertEquals(twin.telemetry.last, { temperature: 21 });

  // An older reading is accepted but does not move `last` back.
  assertEquals(
    await json(await t.dev(d, "POST", path, { temperature: 5, ts: now - 45_000 }), 202),
    { accepted: 1, duplicates: 0 },
  );
  twin = await twinOf(t, "d1");
  assertEquals(twin.telemetry.last, { temperature: 21 });
  assertEquals(twin.telemetry.lastAt, new Date(ms).toISOString());

  // A batch out of order: the newest wins regardless of position.
  await json(
    await t.dev(d, "POST", path, [
      { temperature: 24, ts: now - 1_000 },
      { temperature: 23, ts: now - 2_000 },
    ]),
    202,
  );
  twin = await twinOf(t, "d1");
  assertEquals(twin.telemetry.last, { temperature: 24 });
  assertEquals(twin.telemetry.lastAt, new Date(now - 1_000).toISOString());

  // A ts far in the future is not believed: arrival time is used.
  const sent = Date.now();
  await json(await t.dev(d, "POST", path, { temperature: 25, ts: sent + 3_600_000 }), 202);
  twin = await twinOf(t, "d1");
  const lastAt = Date.parse(twin.telemetry.lastAt);
  assert(lastAt >= sent - 1 && lastAt <= Date.now() + 1, `lastAt ${twin.telemetry.lastAt}`);
  assertEquals(twin.telemetry.last, { temperature: 25 });

  // A ts far in the past (beyond the sanity window) is not believed either.
  const sent2 = Date.now();
  await json(
    await t.dev(d, "POST", path, { temperature: 26, ts: sent2 - 40 * 86_400_000 }),
    202,
  );
  twin = await twinOf(t, "d1");
  const lastAt2 = Date.parse(twin.telemetry.lastAt);
  assert(lastAt2 >= sent2 - 1 && lastAt2 <= Date.now() + 1, `lastAt ${twin.telemetry.lastAt}`);
  assertEquals(twin.telemetry.last, { temperature: 26 });

  // Invalid ts is refused.
  await expectInvalid(await t.dev(d, "POST", path, { temperature: 20, ts: "yesterday" }), "ts");
  await expectInvalid(
    await t.dev(d, "POST", path, [{ temperature: 20 }, { temperature: 20, ts: {} }]),
    "items[1].ts",
  );
  assertEquals((await twinOf(t, "d1")).telemetry, twin.telemetry);
});

// ---------------------------------------------------------------------------------------------
// GET /device/v1/twin and PATCH /device/v1/twin/reported

test("GET /device/v1/twin returns desired, reported and their versions", async (t) => {
  const d = await t.register({ id: "d1" });
  const empty = await json(await t.dev(d, "GET", "/device/v1/twin"), 200);
  assertEquals(empty.version, 1);
  assertEquals(empty.desired, {});
  assertEquals(empty.reported, {});

  await json(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 21, mode: "heat" }),
    200,
  );
  await json(await t.dev(d, "PATCH", "/device/v1/twin/reported", { firmware: "1.2.0" }), 200);
  const res = await t.dev(d, "GET", "/device/v1/twin");
  const twin = await json(res, 200);
  assertEquals(twin.version, 3);
  assertEquals(twin.desired, { targetTemperature: 21, mode: "heat" });
  assertEquals(twin.reported, { firmware: "1.2.0" });
  assertEquals(twin.metadata.desired.targetTemperature.version, 2);
  assertEquals(twin.metadata.reported.firmware.version, 3);
  const etag = res.headers.get("etag");
  if (etag !== null) assertEquals(etag, '"3"');
  // A device sees only its own twin.
  const other = await t.register({ id: "d2" });
  assertEquals((await json(await t.dev(other, "GET", "/device/v1/twin"), 200)).desired, {});
});

test("PATCH /device/v1/twin/reported merges (null deletes) and returns {version}", async (t) => {
  const d = await t.register({ id: "d1" });
  const path = "/device/v1/twin/reported";
  assertEquals(
    await json(await t.dev(d, "PATCH", path, { firmware: "1.0.0", mode: "auto" }), 200),
    { version: 2 },
  );
  assertEquals(
    await json(await t.dev(d, "PATCH", path, { targetTemperature: 20.5 }), 200),
    { version: 3 },
  );
  let twin = await twinOf(t, "d1");
  assertEquals(twin.reported, { firmware: "1.0.0", mode: "auto", targetTemperature: 20.5 });
  assertEquals(twin.metadata.reported.firmware.version, 2);
  assertEquals(twin.metadata.reported.targetTemperature.version, 3);
  assertMatch(twin.metadata.reported.firmware.updatedAt, ISO);

  assertEquals(await json(await t.dev(d, "PATCH", path, { mode: null }), 200), { version: 4 });
  twin = await twinOf(t, "d1");
  assertEquals(twin.reported, { firmware: "1.0.0", targetTemperature: 20.5 });
  assert(!("mode" in twin.metadata.reported));

  // A patch that changes nothing keeps the version.
  assertEquals(await json(await t.dev(d, "PATCH", path, { firmware: "1.0.0" }), 200), {
    version: 4,
  });
  assertEquals(await json(await t.dev(d, "PATCH", path, {}), 200), { version: 4 });
});

test("PATCH /device/v1/twin/reported refuses bad input with the right status, writing nothing", async (t) => {
  const d = await t.register({ id: "d1" });
  const g = await t.register({ id: "g1", kind: "generic" });
  const path = "/device/v1/twin/reported";
  await json(await t.dev(d, "PATCH", path, { firmware: "1.0.0" }), 200);
  const before = await twinOf(t, "d1");

  await expectInvalid(await t.dev(d, "PATCH", path, { firmware: 100 }), "firmware");
  await expectInvalid(await t.dev(d, "PATCH", path, { mode: "turbo" }), "mode");
  await expectInvalid(await t.dev(d, "PATCH", path, { firmware: "x".repeat(33) }), "firmware");
  await expectUnknownField(await t.dev(d, "PATCH", path, { battery: 80 }), "battery");
  await expectError(await t.dev(d, "PATCH", path, '{"firmware": '), 400, "invalid_json");
  const notObject = await t.dev(d, "PATCH", path, ["firmware"]);
  assertEquals(notObject.status, 400);
  await notObject.body?.cancel();
  assertEquals(await twinOf(t, "d1"), before);

  // Over the 32 KiB document cap (whole patch refused), and over the body limit.
  const gPath = path;
  await expectError(
    await t.dev(g, "PATCH", gPath, { blob: "x".repeat(33 * 1024) }),
    413,
    "payload_too_large",
  );
  assertEquals(
    await json(await t.dev(g, "PATCH", gPath, { a: "y".repeat(20 * 1024) }), 200),
    { version: 2 },
  );
  await expectError(
    await t.dev(g, "PATCH", gPath, { b: "z".repeat(20 * 1024), c: 1 }),
    413,
    "payload_too_large",
  );
  await expectError(
    await t.dev(g, "PATCH", gPath, { b: "z".repeat(80 * 1024) }),
    413,
    "payload_too_large",
  );
  const gTwin = await twinOf(t, "g1");
  assertEquals(gTwin.version, 2);
  assertEquals(Object.keys(gTwin.reported), ["a"]);
});

// ---------------------------------------------------------------------------------------------
// GET /device/v1/commands

test("GET /device/v1/commands returns queued commands once, in order, and marks them delivered", async (t) => {
  const d = await t.register({ id: "d1" });
  assertEquals(await json(await t.dev(d, "GET", "/device/v1/commands"), 200), { items: [] });

  const c1 = await queue(t, "d1", "cool", { targetTemperature: 18 });
  const c2 = await queue(t, "d1", "reboot", { delaySeconds: 10 });
  const res = await json(await t.dev(d, "GET", "/device/v1/commands"), 200);
  assertEquals(res.items.map((c: { id: string }) => c.id), [c1, c2]);
  const [first, second] = res.items;
  assertEquals(first.name, "cool");
  assertEquals(first.payload, { targetTemperature: 18 });
  assertMatch(first.expiresAt, ISO);
  assertEquals(second.name, "reboot");
  assertEquals(second.payload, { delaySeconds: 10 });
  for (const c of [c1, c2]) {
    const command = await commandOf(t, "d1", c);
    assertEquals(command.status, "delivered");
    assertMatch(command.deliveredAt, ISO);
  }
  // Once only.
  assertEquals(await json(await t.dev(d, "GET", "/device/v1/commands"), 200), { items: [] });
  // Another device does not see them.
  const other = await t.register({ id: "d2" });
  assertEquals(await json(await t.dev(other, "GET", "/device/v1/commands"), 200), { items: [] });
  // A later command comes alone.
  const c3 = await queue(t, "d1");
  assertEquals(
    (await json(await t.dev(d, "GET", "/device/v1/commands"), 200)).items.map((
      c: { id: string },
    ) => c.id),
    [c3],
  );
});

test("GET /device/v1/commands?wait=N wakes when a command is created meanwhile", async (t) => {
  const d = await t.register({ id: "d1" });
  const started = Date.now();
  const [poll, created] = await Promise.all([
    t.dev(d, "GET", "/device/v1/commands?wait=5").then((r) => json(r, 200)),
    queue(t, "d1", "cool", { targetTemperature: 17 }),
  ]);
  assertEquals(poll.items.map((c: { id: string }) => c.id), [created]);
  assertEquals(poll.items[0].payload, { targetTemperature: 17 });
  assert(Date.now() - started < 4_000, "the poll woke rather than timing out");
  assertEquals((await commandOf(t, "d1", created)).status, "delivered");
});

test("GET /device/v1/commands?wait=N with nothing to do returns [] after about N seconds", async (t) => {
  const d = await t.register({ id: "d1" });
  const started = Date.now();
  assertEquals(await json(await t.dev(d, "GET", "/device/v1/commands?wait=1"), 200), {
    items: [],
  });
  assert(Date.now() - started >= 900, "it waited");
});

test("GET /device/v1/commands refuses invalid wait with 400 naming it", async (t) => {
  const d = await t.register({ id: "d1" });
  const c = await queue(t, "d1");
  for (const wait of ["999", "61", "-1", "abc", "1.5"]) {
    await expectInvalid(await t.dev(d, "GET", `/device/v1/commands?wait=${wait}`), "wait")
      .catch((e) => {
        throw new Error(`wait=${wait}: ${e.message}`);
      });
  }
  assertEquals((await commandOf(t, "d1", c)).status, "queued", "nothing was delivered");
});

// ---------------------------------------------------------------------------------------------
// POST /device/v1/commands/{id}/result

test("POST result succeeded and failed complete commands, with their results", async (t) => {
  const d = await t.register({ id: "d1" });
  const ok = await queue(t, "d1");
  const bad = await queue(t, "d1", "reboot", {});
  await json(await t.dev(d, "GET", "/device/v1/commands"), 200);

  assertEquals(
    await json(
      await t.dev(d, "POST", `/device/v1/commands/${ok}/result`, {
        status: "succeeded",
        result: { reached: 20 },
      }),
      200,
    ),
    { id: ok, status: "succeeded" },
  );
  assertEquals(
    await json(
      await t.dev(d, "POST", `/device/v1/commands/${bad}/result`, {
        status: "failed",
        result: { error: "busy" },
      }),
      200,
    ),
    { id: bad, status: "failed" },
  );
  const okCmd = await commandOf(t, "d1", ok);
  assertEquals(okCmd.status, "succeeded");
  assertEquals(okCmd.result, { reached: 20 });
  assertMatch(okCmd.completedAt, ISO);
  const badCmd = await commandOf(t, "d1", bad);
  assertEquals(badCmd.status, "failed");
  assertEquals(badCmd.result, { error: "busy" });

  // A result without a result value.
  const plain = await queue(t, "d1");
  await json(await t.dev(d, "GET", "/device/v1/commands"), 200);
  await json(
    await t.dev(d, "POST", `/device/v1/commands/${plain}/result`, { status: "succeeded" }),
    200,
  );
  assertEquals((await commandOf(t, "d1", plain)).status, "succeeded");
});

test("POST result twice is 409 and keeps the first result", async (t) => {
  const d = await t.register({ id: "d1" });
  const c = await queue(t, "d1");
  await json(await t.dev(d, "GET", "/device/v1/commands"), 200);
  await json(
    await t.dev(d, "POST", `/device/v1/commands/${c}/result`, { status: "succeeded", result: 1 }),
    200,
  );
  await expectError(
    await t.dev(d, "POST", `/device/v1/commands/${c}/result`, { status: "failed", result: 2 }),
    409,
    "conflict",
  );
  await expectError(
    await t.dev(d, "POST", `/device/v1/commands/${c}/result`, { status: "succeeded", result: 1 }),
    409,
    "conflict",
  );
  const command = await commandOf(t, "d1", c);
  assertEquals(command.status, "succeeded");
  assertEquals(command.result, 1);
});

test("POST result for an unknown command is 404", async (t) => {
  const d = await t.register({ id: "d1" });
  for (const id of ["nope", "zz-deadbeef", "1-00000000"]) {
    await expectError(
      await t.dev(d, "POST", `/device/v1/commands/${id}/result`, { status: "succeeded" }),
      404,
      "not_found",
    ).catch((e) => {
      throw new Error(`${id}: ${e.message}`);
    });
  }
  // Another device's command is unknown to this one, and is left alone.
  const other = await t.register({ id: "d2" });
  const c = await queue(t, "d2");
  await expectError(
    await t.dev(d, "POST", `/device/v1/commands/${c}/result`, { status: "succeeded" }),
    404,
    "not_found",
  );
  assertEquals((await commandOf(t, "d2", c)).status, "queued");
  await json(await t.dev(other, "GET", "/device/v1/commands"), 200);
});

test("POST result for a never-issued id that shares a real command's queue position is 404", async (t) => {
  const d = await t.register({ id: "d1" });
  const real = await queue(t, "d1");
  await json(await t.dev(d, "GET", "/device/v1/commands"), 200);
  const seq = real.split("-")[0];
  const forged = `${seq}-${real.endsWith("00000000") ? "11111111" : "00000000"}`;
  await expectError(
    await t.dev(d, "POST", `/device/v1/commands/${forged}/result`, { status: "succeeded" }),
    404,
    "not_found",
  );
  assertEquals((await commandOf(t, "d1", real)).status, "delivered");
});

test("POST result refuses bad bodies with 400, changing nothing", async (t) => {
  const d = await t.register({ id: "d1" });
  const c = await queue(t, "d1");
  await json(await t.dev(d, "GET", "/device/v1/commands"), 200);
  const path = `/device/v1/commands/${c}/result`;
  await expectInvalid(await t.dev(d, "POST", path, { status: "done" }), "status");
  await expectInvalid(await t.dev(d, "POST", path, { status: 1 }), "status");
  await expectInvalid(await t.dev(d, "POST", path, {}), "status");
  await expectInvalid(await t.dev(d, "POST", path, { status: "delivered" }), "status");
  await expectUnknownField(
    await t.dev(d, "POST", path, { status: "succeeded", output: 1 }),
    "output",
  );
  await expectError(await t.dev(d, "POST", path, '{"status": "succeeded"'), 400, "invalid_json");
  await expectError(
    await t.dev(d, "POST", path, { status: "succeeded", result: "x".repeat(40 * 1024) }),
    413,
    "payload_too_large",
  );
  await expectError(
    await t.dev(d, "POST", path, { status: "succeeded", result: "x".repeat(20 * 1024) }),
    413,
    "payload_too_large",
  );
  const command = await commandOf(t, "d1", c);
  assertEquals(command.status, "delivered");
  assert(!("result" in command));
});

// ---------------------------------------------------------------------------------------------
// Gateways

test("a gateway acts for its child with ?device=child on every route", async (t) => {
  const gw = await t.register({ id: "gw", kind: "generic" });
  await t.register({ id: "child", parent: "gw" });
  const q = "?device=child";

  assertEquals(
    await json(await t.dev(gw, "POST", `/device/v1/telemetry${q}`, { temperature: 19 }), 202),
    { accepted: 1, duplicates: 0 },
  );
  assertEquals((await twinOf(t, "child")).telemetry.last, { temperature: 19 });
  assertEquals((await twinOf(t, "gw")).telemetry.last, {}, "the gateway's own twin is untouched");

  // The child's schema applies (thermostat is strict even when the gateway is generic).
  await expectInvalid(
    await t.dev(gw, "POST", `/device/v1/telemetry${q}`, { temperature: "x" }),
    "temperature",
  );

  assertEquals(
    await json(await t.dev(gw, "PATCH", `/device/v1/twin/reported${q}`, { firmware: "3.1" }), 200),
    { version: 2 },
  );
  await json(await t.op("PATCH", "/api/v1/twins/child/desired", { mode: "cool" }), 200);
  const twin = await json(await t.dev(gw, "GET", `/device/v1/twin${q}`), 200);
  assertEquals(twin.desired, { mode: "cool" });
  assertEquals(twin.reported, { firmware: "3.1" });
  assertEquals(twin.version, 3);
  assertEquals((await json(await t.dev(gw, "GET", "/device/v1/twin"), 200)).reported, {});

  const c = await queue(t, "child");
  const gwCmd = await queue(t, "gw", "blink", null);
  const polled = await json(await t.dev(gw, "GET", `/device/v1/commands${q}`), 200);
  assertEquals(polled.items.map((x: { id: string }) => x.id), [c]);
  assertEquals(
    await json(
      await t.dev(gw, "POST", `/device/v1/commands/${c}/result${q}`, {
        status: "succeeded",
        result: "ok",
      }),
      200,
    ),
    { id: c, status: "succeeded" },
  );
  assertEquals((await commandOf(t, "child", c)).status, "succeeded");
  // Its own commands are still its own.
  assertEquals((await commandOf(t, "gw", gwCmd)).status, "queued");
  // ?device=<itself> is the same as no ?device.
  assertEquals(
    (await json(await t.dev(gw, "GET", "/device/v1/commands?device=gw"), 200)).items.map((
      x: { id: string },
    ) => x.id),
    [gwCmd],
  );
});

test("a gateway may not act for a device that is not its child (403), and nothing is written", async (t) => {
  const gw = await t.register({ id: "gw", kind: "generic" });
  const child = await t.register({ id: "child", parent: "gw" });
  await t.register({ id: "stranger" });
  await t.register({ id: "gw2", kind: "generic" });
  await t.register({ id: "other-child", parent: "gw2" });
  const c = await queue(t, "stranger");

  for (const target of ["stranger", "other-child", "ghost"]) {
    const q = `?device=${target}`;
    const routes: Array<[string, string, unknown?]> = [
      ["POST", `/device/v1/telemetry${q}`, { temperature: 20 }],
      ["GET", `/device/v1/twin${q}`],
      ["PATCH", `/device/v1/twin/reported${q}`, { firmware: "x" }],
      ["GET", `/device/v1/commands${q}`],
      ["POST", `/device/v1/commands/${c}/result${q}`, { status: "succeeded" }],
    ];
    for (const [method, path, body] of routes) {
      await expectError(await t.dev(gw, method, path, body), 403, "forbidden").catch((e) => {
        throw new Error(`${method} ${path}: ${e.message}`);
      });
    }
  }
  // A child may not act for its gateway either.
  await expectError(
    await t.dev(child, "POST", "/device/v1/telemetry?device=gw", { x: 1 }),
    403,
    "forbidden",
  );
  for (const id of ["stranger", "other-child", "gw"]) {
    const twin = await twinOf(t, id);
    assertEquals(twin.telemetry.last, {}, id);
    assertEquals(twin.reported, {}, id);
    assertEquals(twin.version, 1, id);
  }
  assertEquals((await commandOf(t, "stranger", c)).status, "queued");

  // A disabled child is refused through its gateway too; re-enabled, it is accepted.
  await json(await t.op("PATCH", "/api/v1/devices/child", { enabled: false }), 200);
  await expectError(
    await t.dev(gw, "POST", "/device/v1/telemetry?device=child", { temperature: 20 }),
    403,
    "forbidden",
  );
  assertEquals((await twinOf(t, "child")).telemetry.last, {});
  await json(await t.op("PATCH", "/api/v1/devices/child", { enabled: true }), 200);
  await json(
    await t.dev(gw, "POST", "/device/v1/telemetry?device=child", { temperature: 20 }),
    202,
  );
  // A disabled gateway cannot act for anyone.
  await json(await t.op("PATCH", "/api/v1/devices/gw", { enabled: false }), 200);
  await expectError(
    await t.dev(gw, "POST", "/device/v1/telemetry?device=child", { temperature: 21 }),
    403,
    "forbidden",
  );
  assertEquals((await twinOf(t, "child")).telemetry.last, { temperature: 20 });
});

// ---------------------------------------------------------------------------------------------
// Routing

test("an unknown device route is 404 in the error shape", async (t) => {
  const d = await t.register({ id: "d1" });
  await expectError(await t.dev(d, "GET", "/device/v1/nothing"), 404, "not_found");
});

test("a device disabled while its long poll is parked is not handed commands", async (t) => {
  // "A disabled device is refused at once everywhere": a poll that authenticated before the
  // device was disabled must not deliver a command queued after it.
  const d = await t.register({ id: "d1" });
  const poll = t.dev(d, "GET", "/device/v1/commands?wait=3");
  // Wait (on a condition, not a clock) until the poll has looked once and is parked.
  for (let i = 0; i < 2000 && !(t.runtime.peek("d1")?.idle && t.runtime.peek("d1")?.state); i++) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  assert(t.runtime.peek("d1")?.idle, "the poll reached the twin");
  await new Promise((resolve) => setTimeout(resolve, 0));
  await json(await t.op("PATCH", "/api/v1/devices/d1", { enabled: false }), 200);
  const c = await queue(t, "d1");
  const res = await poll;
  const text = await res.text();
  if (res.status === 200) {
    assertEquals(JSON.parse(text), { items: [] }, "a disabled device got a command");
  } else {
    assertEquals(res.status, 403, text);
  }
  assertEquals((await commandOf(t, "d1", c)).status, "queued");
});

test("a long poll whose key was retired, or whose child went to another gateway, while it was parked is not handed commands", async (t) => {
  const parked = async (id: string) => {
    // Wait (on a condition, not a clock) until the poll has looked once and is parked.
    for (let i = 0; i < 2000 && !(t.runtime.peek(id)?.idle && t.runtime.peek(id)?.state); i++) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    assert(t.runtime.peek(id)?.idle, "the poll reached the twin");
    await new Promise((resolve) => setTimeout(resolve, 0));
  };
  const refusedOrEmpty = async (res: Response, status: number) => {
    const text = await res.text();
    if (res.status === 200) assertEquals(JSON.parse(text), { items: [] }, text);
    else assertEquals(res.status, status, text);
  };
  // A key retired by two rotations.
  const d = await t.register({ id: "r1" });
  const poll = t.dev(d, "GET", "/device/v1/commands?wait=3");
  await parked("r1");
  for (let i = 0; i < 2; i++) await json(await t.op("POST", "/api/v1/devices/r1/keys"), 200);
  const c = await queue(t, "r1");
  await refusedOrEmpty(await poll, 401);
  assertEquals((await commandOf(t, "r1", c)).status, "queued");

  // A gateway's child deleted and registered under another gateway.
  const g1 = await t.register({ id: "g1" });
  await t.register({ id: "g2" });
  await t.register({ id: "k1", parent: "g1" });
  const childPoll = t.dev(g1, "GET", "/device/v1/commands?wait=3&device=k1");
  await parked("k1");
  assertEquals((await t.op("DELETE", "/api/v1/devices/k1")).status, 204);
  await t.register({ id: "k1", parent: "g2" });
  const c2 = await queue(t, "k1");
  await refusedOrEmpty(await childPoll, 403);
  assertEquals((await commandOf(t, "k1", c2)).status, "queued");
});

test("an unknown field is named in details.fields (strict telemetry, single and batch)", async (t) => {
  // The contract: 400 bad input, "details name the field".
  const d = await t.register({ id: "d1" });
  const single = await expectError(
    await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 20, co2: 400 }),
    400,
    "validation_failed",
  );
  assert(fields(single).includes("co2"), JSON.stringify(single.details));
  const batch = await expectError(
    await t.dev(d, "POST", "/device/v1/telemetry", [{ temperature: 20 }, {
      temperature: 20,
      co2: 400,
    }]),
    400,
    "validation_failed",
  );
  assert(fields(batch).includes("items[1].co2"), JSON.stringify(batch.details));
});

test("an HTTP device disabled is offline at once, with reason disabled", async (t) => {
  const d = await t.register({ id: "off1" });
  await json(await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 20 }), 202);
  const online = await json(await t.op("GET", "/api/v1/devices?status=online"), 200);
  assertEquals(online.items.map((x: { id: string }) => x.id), ["off1"]);
  await json(await t.op("PATCH", "/api/v1/devices/off1", { enabled: false }), 200);
  const after = await json(await t.op("GET", "/api/v1/devices?status=online"), 200);
  assertEquals(after.items, []);
  const twin = await json(await t.op("GET", "/api/v1/twins/off1"), 200);
  assertEquals([twin.connection.status, twin.connection.reason], ["offline", "disabled"]);
});
