/**
 * HTTP tests of the operator API (`/api/v1`, bearer token) and `/healthz`, through
 * `app.request()`: every route, and every error the contract names with its status, its
 * `{"error": {code, message, details?}}` body, and that nothing was written.
 * @module
 */
import { createApp } from "../src/app.ts";
import { silentLogger } from "../src/log.ts";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { ADMIN_TOKEN, KINDS, type TestApp, testApp } from "./helpers.ts";
import { expectError, expectInvalid, fields, json, test } from "./api_assertions.ts";

// ---------------------------------------------------------------------------------------------
// Local helpers

/** Asserts a 400 for a body with an unknown property `name` (strict schema). */
async function expectUnknownField(res: Response, name: string): Promise<void> {
  const error = await expectError(res, 400, "validation_failed");
  assert(
    JSON.stringify(error.details).includes(name),
    `expected details to name the unknown field ${name}: ${JSON.stringify(error.details)}`,
  );
}

/** GETs the twin document (operator view). */
// deno-lint-ignore no-explicit-any
async function twinOf(t: TestApp, id: string): Promise<any> {
  return await json(await t.op("GET", `/api/v1/twins/${id}`), 200);
}

/** Lists a device's commands (first page). */
// deno-lint-ignore no-explicit-any
async function commandsOf(t: TestApp, id: string): Promise<any[]> {
  return (await json(await t.op("GET", `/api/v1/devices/${id}/commands?limit=1000`), 200)).items;
}

/** Whether device credentials are accepted (GET /device/v1/twin). */
async function keyWorks(t: TestApp, creds: { id: string; key: string }): Promise<boolean> {
  const res = await t.dev(creds, "GET", "/device/v1/twin");
  await res.body?.cancel();
  if (res.status === 200) return true;
  assertEquals(res.status, 401);
  return false;
}

/** Follows a listing's cursors to the end; returns ids in page order and the page count. */
async function allPages(t: TestApp, query: string): Promise<{ ids: string[]; pages: number }> {
  const ids: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const sep = query === "" ? "" : "&";
    const path = `/api/v1/devices?${query}${
      cursor === null ? "" : `${sep}cursor=${encodeURIComponent(cursor)}`
    }`;
    const body = await json(await t.op("GET", path), 200);
    assert(Array.isArray(body.items));
    assert("cursor" in body, "a listing has a cursor member");
    for (const item of body.items) ids.push(item.id);
    cursor = body.cursor;
    pages++;
    assert(pages <= 50, "paging does not end");
  } while (cursor !== null);
  return { ids, pages };
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

// ---------------------------------------------------------------------------------------------
// Health and routing

test("GET /healthz answers 200 {status: ok} without auth", async (t) => {
  const res = await t.app.request("/healthz");
  assertEquals(await json(res, 200), { status: "ok" });
  // A token does not hurt either.
  assertEquals(await json(await t.op("GET", "/healthz"), 200), { status: "ok" });
});

test("an unknown operator route is 404 in the error shape", async (t) => {
  await expectError(await t.op("GET", "/api/v1/nothing-here"), 404, "not_found");
  await expectError(await t.op("GET", "/nothing-here"), 404, "not_found");
});

// ---------------------------------------------------------------------------------------------
// Operator auth

test("the live stream of an unregistered device (or of `*`) is 404, not a stream that stays silent", async (t) => {
  for (const device of ["ghost", "*"]) {
    const res = await t.op("GET", `/api/v1/stream?device=${encodeURIComponent(device)}`);
    await expectError(res, 404, "not_found");
  }
});

test("every operator route refuses a missing, wrong or non-bearer token with 401, writing nothing", async (t) => {
  const d = await t.register({ id: "d1", tags: { site: "a" } });
  const routes: Array<[string, string, unknown?]> = [
    ["POST", "/api/v1/devices", { id: "d2", kind: "thermostat" }],
    ["GET", "/api/v1/devices"],
    ["GET", "/api/v1/devices/d1"],
    ["PATCH", "/api/v1/devices/d1", { enabled: false, tags: { site: null } }],
    ["DELETE", "/api/v1/devices/d1"],
    ["POST", "/api/v1/devices/d1/keys"],
    ["GET", "/api/v1/twins/d1"],
    ["PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 20 }],
    ["POST", "/api/v1/devices/d1/commands", { name: "reboot" }],
    ["GET", "/api/v1/devices/d1/commands"],
    ["GET", "/api/v1/devices/d1/commands/1-abcdef12"],
    ["GET", "/api/v1/devices/d1/telemetry"],
  ];
  const badAuth: Array<Record<string, string> | null> = [
    null, // no Authorization header at all
    { authorization: "" },
    { authorization: "Bearer" },
    { authorization: "Bearer wrong-token-0123456789" },
    { authorization: `Bearer ${ADMIN_TOKEN}x` },
    { authorization: `Basic ${btoa(`admin:${ADMIN_TOKEN}`)}` },
    { authorization: ADMIN_TOKEN },
  ];
  for (const [method, path, body] of routes) {
    for (const auth of badAuth) {
      const what = `${method} ${path} with ${JSON.stringify(auth)}`;
      const res = auth === null
        ? await t.app.request(path, {
          method,
          headers: { "content-type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
        })
        : await t.op(method, path, body, auth);
      const error = await expectError(res, 401, "unauthorized").catch((e) => {
        throw new Error(`${what}: ${e.message}`);
      });
      assert(error.message.length > 0);
      assertMatch(res.headers.get("www-authenticate") ?? "", /^Bearer/i, what);
    }
  }
  // Nothing was written.
  const list = await json(await t.op("GET", "/api/v1/devices"), 200);
  assertEquals(list.items.map((i: { id: string }) => i.id), ["d1"]);
  const device = list.items[0];
  assertEquals(device.tags, { site: "a" });
  assertEquals(device.enabled, true);
  assert(await keyWorks(t, d), "the key was not rotated");
  const twin = await twinOf(t, "d1");
  assertEquals(twin.version, 1);
  assertEquals(twin.desired, {});
  assertEquals(await commandsOf(t, "d1"), []);
});

test("the bearer scheme is case-insensitive", async (t) => {
  const res = await t.op("GET", "/api/v1/devices", undefined, {
    authorization: `bearer ${ADMIN_TOKEN}`,
  });
  assertEquals((await json(res, 200)).items, []);
});

// ---------------------------------------------------------------------------------------------
// POST /api/v1/devices

test("POST /devices registers: 201 with the device and its key, shown only there", async (t) => {
  const before = Date.now();
  const res = await t.op("POST", "/api/v1/devices", {
    id: "therm-1",
    kind: "thermostat",
    tags: { site: "berlin", floor: "2" },
  });
  const body = await json(res, 201);
  assertEquals(body.id, "therm-1");
  assertEquals(body.kind, "thermostat");
  assertEquals(body.tags, { site: "berlin", floor: "2" });
  assertEquals(body.parent, null);
  assertEquals(body.enabled, true);
  assertMatch(body.createdAt, ISO);
  assertMatch(body.updatedAt, ISO);
  assert(Date.parse(body.createdAt) >= before - 1);
  assert(typeof body.key === "string" && body.key.length >= 32, "a strong key is returned");
  assert(!("keys" in body), "stored (sealed) keys are never shown");
  // The key works for the device API.
  assert(await keyWorks(t, { id: "therm-1", key: body.key }));

  // GET one: the device, never its key.
  const one = await json(await t.op("GET", "/api/v1/devices/therm-1"), 200);
  assert(!("key" in one) && !("keys" in one), `no key in ${JSON.stringify(one)}`);
  assertEquals(one.id, "therm-1");
  assertEquals(one.kind, "thermostat");
  assertEquals(one.tags, { site: "berlin", floor: "2" });
  assertEquals(one.enabled, true);
  assertEquals(one.connection?.status, "never");
  assert(!JSON.stringify(one).includes(body.key), "the key appears nowhere");

  // The listing does not show it either.
  const list = await json(await t.op("GET", "/api/v1/devices"), 200);
  assert(!JSON.stringify(list).includes(body.key));
  assert(!("key" in list.items[0]) && !("keys" in list.items[0]));

  // The twin was created with the device.
  const twin = await twinOf(t, "therm-1");
  assertEquals(twin.version, 1);
  assertEquals(twin.kind, "thermostat");
});

test("POST /devices without an id generates one; a parent is recorded", async (t) => {
  const gw = await json(await t.op("POST", "/api/v1/devices", { kind: "generic" }), 201);
  assert(typeof gw.id === "string" && gw.id.length > 0);
  const child = await json(
    await t.op("POST", "/api/v1/devices", { id: "c1", kind: "thermostat", parent: gw.id }),
    201,
  );
  assertEquals(child.parent, gw.id);
  assertEquals((await json(await t.op("GET", "/api/v1/devices/c1"), 200)).parent, gw.id);
});

test("POST /devices refuses an unknown kind with 400 naming kind, registering nothing", async (t) => {
  await expectInvalid(
    await t.op("POST", "/api/v1/devices", { id: "x1", kind: "toaster" }),
    "kind",
  );
  await expectError(await t.op("GET", "/api/v1/devices/x1"), 404, "not_found");
  await expectError(await t.op("GET", "/api/v1/twins/x1"), 404, "not_found");
  assertEquals((await json(await t.op("GET", "/api/v1/devices"), 200)).items, []);
});

test("POST /devices refuses a duplicate id with 409 and keeps the first device's key", async (t) => {
  const first = await t.register({ id: "dup", tags: { a: "1" } });
  await expectError(
    await t.op("POST", "/api/v1/devices", { id: "dup", kind: "generic", tags: { b: "2" } }),
    409,
    "conflict",
  );
  const one = await json(await t.op("GET", "/api/v1/devices/dup"), 200);
  assertEquals(one.kind, "thermostat");
  assertEquals(one.tags, { a: "1" });
  assert(await keyWorks(t, first));
  // The loser's tag index was not written either.
  assertEquals((await json(await t.op("GET", "/api/v1/devices?tag=b:2"), 200)).items, []);
  assertEquals((await json(await t.op("GET", "/api/v1/devices?kind=generic"), 200)).items, []);
});

test("POST /devices validates its body: types, ids, tags, parent, unknown fields, JSON, size", async (t) => {
  await expectInvalid(await t.op("POST", "/api/v1/devices", { id: "a", kind: 5 }), "kind");
  await expectInvalid(await t.op("POST", "/api/v1/devices", { id: "a" }), "kind");
  await expectInvalid(await t.op("POST", "/api/v1/devices", { id: 7, kind: "generic" }), "id");
  await expectInvalid(
    await t.op("POST", "/api/v1/devices", { id: "has space", kind: "generic" }),
    "id",
  );
  await expectInvalid(
    await t.op("POST", "/api/v1/devices", { id: "a", kind: "generic", tags: { site: 1 } }),
    "tags.site",
  );
  await expectInvalid(
    await t.op("POST", "/api/v1/devices", { id: "a", kind: "generic", tags: "site:a" }),
    "tags",
  );
  await expectInvalid(
    await t.op("POST", "/api/v1/devices", { id: "a", kind: "generic", parent: "nobody" }),
    "parent",
  );
  await expectInvalid(
    await t.op("POST", "/api/v1/devices", { id: "a", kind: "generic", parent: "a" }),
    "parent",
  );
  await expectUnknownField(
    await t.op("POST", "/api/v1/devices", { id: "a", kind: "generic", colour: "red" }),
    "colour",
  );
  await expectError(
    await t.op("POST", "/api/v1/devices", '{"id": "a", "kind": '),
    400,
    "invalid_json",
  );
  await expectError(await t.op("POST", "/api/v1/devices", "[1, 2"), 400, "invalid_json");
  await expectError(
    await t.op("POST", "/api/v1/devices", {
      id: "a",
      kind: "generic",
      tags: { big: "x".repeat(40 * 1024) },
    }),
    413,
    "payload_too_large",
  );
  // Nothing was registered by any of these.
  assertEquals((await json(await t.op("GET", "/api/v1/devices"), 200)).items, []);
  await expectError(await t.op("GET", "/api/v1/twins/a"), 404, "not_found");
});

// ---------------------------------------------------------------------------------------------
// GET /api/v1/devices

test("GET /devices filters by kind, tag, status and pages with cursors over more than limit", async (t) => {
  const thermostats: string[] = [];
  const generics: string[] = [];
  for (let i = 0; i < 15; i++) {
    const id = `t${String(i).padStart(2, "0")}`;
    await t.register({
      id,
      kind: "thermostat",
      tags: { site: i % 2 === 0 ? "a" : "b", floor: String(i % 3) },
    });
    thermostats.push(id);
  }
  for (let i = 0; i < 10; i++) {
    const id = `g${String(i).padStart(2, "0")}`;
    await t.register({ id, kind: "generic", tags: { site: i < 5 ? "a" : "c" } });
    generics.push(id);
  }
  const all = [...thermostats, ...generics].sort();

  // No filter: default page holds everything (25 < 50) and the cursor is null.
  const first = await json(await t.op("GET", "/api/v1/devices"), 200);
  assertEquals(first.items.map((i: { id: string }) => i.id).sort(), all);
  assertEquals(first.cursor, null);

  // Paging over more devices than the limit: each page at most `limit`, no gaps, no repeats.
  for (const limit of [1, 3, 7, 10, 24]) {
    const { ids, pages } = await allPages(t, `limit=${limit}`);
    assertEquals([...ids].sort(), all, `limit=${limit}`);
    assertEquals(new Set(ids).size, ids.length, `no repeats at limit=${limit}`);
    assert(pages >= Math.ceil(25 / limit), `limit=${limit} took ${pages} pages`);
  }
  const page1 = await json(await t.op("GET", "/api/v1/devices?limit=4"), 200);
  assertEquals(page1.items.length, 4);
  assert(typeof page1.cursor === "string" && page1.cursor.length > 0);

  // kind
  const kindList = await json(await t.op("GET", "/api/v1/devices?kind=generic"), 200);
  assertEquals(kindList.items.map((i: { id: string }) => i.id).sort(), generics);
  assert(kindList.items.every((i: { kind: string }) => i.kind === "generic"));
  assertEquals((await allPages(t, "kind=thermostat&limit=4")).ids.sort(), thermostats);
  assertEquals((await json(await t.op("GET", "/api/v1/devices?kind=toaster"), 200)).items, []);

  // tag=k:v, alone, repeated (all must match) and with kind
  const siteA = [...thermostats.filter((_, i) => i % 2 === 0), ...generics.slice(0, 5)].sort();
  assertEquals((await allPages(t, "tag=site:a&limit=3")).ids.sort(), siteA);
  const siteAFloor0 = thermostats.filter((_, i) => i % 2 === 0 && i % 3 === 0).sort();
  assertEquals((await allPages(t, "tag=site:a&tag=floor:0&limit=2")).ids.sort(), siteAFloor0);
  assertEquals(
    (await allPages(t, "kind=generic&tag=site:a&limit=2")).ids.sort(),
    generics.slice(0, 5),
  );
  assertEquals((await json(await t.op("GET", "/api/v1/devices?tag=site:zzz"), 200)).items, []);

  // status: nobody has connected
  assertEquals((await allPages(t, "status=never&limit=6")).ids.sort(), all);
  assertEquals((await json(await t.op("GET", "/api/v1/devices?status=online"), 200)).items, []);
  assertEquals(
    (await json(await t.op("GET", "/api/v1/devices?status=offline"), 200)).items,
    [],
  );
  assertEquals(
    (await allPages(t, "kind=thermostat&status=never&tag=site:b&limit=2")).ids.sort(),
    thermostats.filter((_, i) => i % 2 === 1).sort(),
  );
});

test("GET /devices refuses invalid query parameters with 400 naming them", async (t) => {
  await t.register({ id: "d1" });
  for (
    const [query, field] of [
      ["limit=0", "limit"],
      ["limit=-1", "limit"],
      ["limit=1001", "limit"],
      ["limit=abc", "limit"],
      ["limit=2.5", "limit"],
      ["status=bogus", "status"],
      ["status=ONLINE", "status"],
      ["tag=nocolon", "tag"],
      ["tag=:value", "tag"],
      ["cursor=not-a-cursor!!", "cursor"],
    ]
  ) {
    await expectInvalid(await t.op("GET", `/api/v1/devices?${query}`), field).catch((e) => {
      throw new Error(`${query}: ${e.message}`);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// GET / PATCH / DELETE /api/v1/devices/{id}

test("GET /devices/{id} of an unknown device is 404", async (t) => {
  const error = await expectError(await t.op("GET", "/api/v1/devices/ghost"), 404, "not_found");
  assertMatch(error.message, /ghost/);
});

test("PATCH /devices/{id} merges tags (null removes) and sets enabled, keeping indexes right", async (t) => {
  await t.register({ id: "d1", tags: { site: "a", floor: "1" } });
  const created = await json(await t.op("GET", "/api/v1/devices/d1"), 200);

  const patched = await json(
    await t.op("PATCH", "/api/v1/devices/d1", { tags: { floor: null, room: "7", site: "b" } }),
    200,
  );
  assertEquals(patched.tags, { site: "b", room: "7" });
  assertEquals(patched.enabled, true);
  assert(!("key" in patched) && !("keys" in patched));
  assert(Date.parse(patched.updatedAt) >= Date.parse(created.updatedAt));
  assertEquals((await json(await t.op("GET", "/api/v1/devices/d1"), 200)).tags, {
    site: "b",
    room: "7",
  });
  // Tag indexes follow.
  const ids = async (q: string) =>
    (await json(await t.op("GET", `/api/v1/devices?${q}`), 200)).items.map((i: { id: string }) =>
      i.id
    );
  assertEquals(await ids("tag=floor:1"), []);
  assertEquals(await ids("tag=site:a"), []);
  assertEquals(await ids("tag=site:b"), ["d1"]);
  assertEquals(await ids("tag=room:7"), ["d1"]);

  // enabled alone leaves tags alone.
  const disabled = await json(await t.op("PATCH", "/api/v1/devices/d1", { enabled: false }), 200);
  assertEquals(disabled.enabled, false);
  assertEquals(disabled.tags, { site: "b", room: "7" });
  // Both at once; removing a tag that is not there is fine.
  const both = await json(
    await t.op("PATCH", "/api/v1/devices/d1", { enabled: true, tags: { nope: null, room: null } }),
    200,
  );
  assertEquals(both.enabled, true);
  assertEquals(both.tags, { site: "b" });
  assertEquals(await ids("tag=room:7"), []);
});

test("PATCH /devices/{id} refuses bad bodies with 400 and unknown devices with 404, writing nothing", async (t) => {
  await t.register({ id: "d1", tags: { site: "a" } });
  await expectInvalid(await t.op("PATCH", "/api/v1/devices/d1", { enabled: "no" }), "enabled");
  await expectInvalid(
    await t.op("PATCH", "/api/v1/devices/d1", { tags: { site: 5 } }),
    "tags.site",
  );
  await expectInvalid(await t.op("PATCH", "/api/v1/devices/d1", { tags: ["a"] }), "tags");
  const badTag = await expectError(
    await t.op("PATCH", "/api/v1/devices/d1", { tags: { "bad tag!": "x" } }),
    400,
    "validation_failed",
  );
  assert(fields(badTag).some((f) => f.startsWith("tags")), JSON.stringify(badTag));
  await expectError(await t.op("PATCH", "/api/v1/devices/d1", {}), 400, "validation_failed");
  await expectUnknownField(
    await t.op("PATCH", "/api/v1/devices/d1", { enabled: false, kind: "generic" }),
    "kind",
  );
  await expectError(
    await t.op("PATCH", "/api/v1/devices/d1", "{enabled:false}"),
    400,
    "invalid_json",
  );
  await expectError(
    await t.op("PATCH", "/api/v1/devices/ghost", { enabled: false }),
    404,
    "not_found",
  );
  const one = await json(await t.op("GET", "/api/v1/devices/d1"), 200);
  assertEquals(one.tags, { site: "a" });
  assertEquals(one.enabled, true);
  assertEquals(one.kind, "thermostat");
});

test("DELETE /devices/{id} is 204 and takes its twin, commands and history with it", async (t) => {
  const d = await t.register({ id: "d1", tags: { site: "a" } });
  await t.register({ id: "keep" });
  await json(await t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 20 }), 200);
  const cmd = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", { name: "reboot", payload: {} }, {
      "idempotency-key": "once",
    }),
    202,
  );
  await json(await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 20, id: "m1" }), 202);

  const res = await t.op("DELETE", "/api/v1/devices/d1");
  assertEquals(res.status, 204);
  assertEquals(await res.text(), "");

  await expectError(await t.op("GET", "/api/v1/devices/d1"), 404, "not_found");
  await expectError(await t.op("GET", "/api/v1/twins/d1"), 404, "not_found");
  await expectError(await t.op("GET", "/api/v1/devices/d1/commands"), 404, "not_found");
  await expectError(
    await t.op("GET", `/api/v1/devices/d1/commands/${cmd.id}`),
    404,
    "not_found",
  );
  await expectError(await t.op("DELETE", "/api/v1/devices/d1"), 404, "not_found");
  await expectError(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 21 }),
    404,
    "not_found",
  );
  await expectError(
    await t.op("POST", "/api/v1/devices/d1/commands", { name: "reboot", payload: {} }),
    404,
    "not_found",
  );
  await expectError(await t.op("POST", "/api/v1/devices/d1/keys"), 404, "not_found");
  await expectError(await t.op("PATCH", "/api/v1/devices/d1", { enabled: true }), 404, "not_found");
  // Its key no longer works.
  assertEquals(await keyWorks(t, d), false);
  // Listings and indexes forget it; the other device stays.
  const ids = async (q: string) =>
    (await json(await t.op("GET", `/api/v1/devices?${q}`), 200)).items.map((i: { id: string }) =>
      i.id
    );
  assertEquals(await ids(""), ["keep"]);
  assertEquals(await ids("tag=site:a"), []);
  assertEquals(await ids("kind=thermostat"), ["keep"]);
  // Nothing of it is left in the store.
  for (
    const prefix of [
      ["devices", "d1"],
      ["twins", "d1"],
      ["twin_chunks", "d1"],
      ["commands", "d1"],
      ["command_idempotency", "d1"],
      ["dedupe", "d1"],
      ["events", "d1"],
    ]
  ) {
    const left = [];
    for await (const e of t.kv.list({ prefix })) left.push(e.key);
    const exact = await t.kv.get(prefix);
    assertEquals(left, [], `left under ${JSON.stringify(prefix)}`);
    assertEquals(exact.versionstamp, null, `left at ${JSON.stringify(prefix)}`);
  }

  // Registering the id again starts from nothing.
  const again = await t.register({ id: "d1" });
  const twin = await twinOf(t, "d1");
  assertEquals(twin.version, 1);
  assertEquals(twin.desired, {});
  assertEquals(twin.telemetry.last, {});
  assertEquals(await commandsOf(t, "d1"), []);
  const cmd2 = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", { name: "reboot", payload: {} }, {
      "idempotency-key": "once",
    }),
    202,
  );
  assertEquals((await commandsOf(t, "d1")).length, 1, "the old idempotency key is gone");
  assert(cmd2.id !== cmd.id || (await commandsOf(t, "d1"))[0].status === "queued");
  assertEquals(
    await json(
      await t.dev(again, "POST", "/device/v1/telemetry", { temperature: 21, id: "m1" }),
      202,
    ),
    { accepted: 1, duplicates: 0 },
    "the old message ids are gone",
  );
});

test("DELETE of a gateway with children is refused with 409", async (t) => {
  await t.register({ id: "gw", kind: "generic" });
  await t.register({ id: "child", parent: "gw" });
  await expectError(await t.op("DELETE", "/api/v1/devices/gw"), 409, "conflict");
  await json(await t.op("GET", "/api/v1/devices/gw"), 200);
  // Once the child is gone, the gateway may go.
  assertEquals((await t.op("DELETE", "/api/v1/devices/child")).status, 204);
  assertEquals((await t.op("DELETE", "/api/v1/devices/gw")).status, 204);
});

test("DELETE of a gateway racing a child's registration under it never leaves the child without a parent", async (t) => {
  for (let i = 0; i < 20; i++) {
    await t.register({ id: `gw${i}`, kind: "generic" });
    const [del, reg] = await Promise.all([
      t.op("DELETE", `/api/v1/devices/gw${i}`),
      t.op("POST", "/api/v1/devices", { id: `kid${i}`, kind: "generic", parent: `gw${i}` }),
    ]);
    await del.body?.cancel();
    await reg.body?.cancel();
    // One of them may win, or the delete may be told to try again: never both.
    assert(!(del.status === 204 && reg.status === 201), `try ${i}: both succeeded`);
    if (reg.status === 201) await json(await t.op("GET", `/api/v1/devices/gw${i}`), 200);
  }
});

test("POST /devices for an id whose deletion is still removing data waits (409), or finishes a stalled one", async (t) => {
  await t.register({ id: "gone1" });
  assertEquals((await t.op("DELETE", "/api/v1/devices/gone1")).status, 204);
  await json(await t.op("POST", "/api/v1/devices", { id: "gone1", kind: "thermostat" }), 201);

  // Another process is deleting "gone2" now: its commands are still being removed.
  await t.kv.set(["device_deletions", "gone2"], Date.now());
  await t.kv.set(["commands", "gone2", 1], { stale: true });
  const waiting = await t.op("POST", "/api/v1/devices", { id: "gone2", kind: "thermostat" });
  await expectError(waiting, 409, "conflict");
  // That process stopped half-way long ago: registering finishes the removal first.
  await t.kv.set(["device_deletions", "gone2"], Date.now() - 11 * 60_000);
  await json(await t.op("POST", "/api/v1/devices", { id: "gone2", kind: "thermostat" }), 201);
  assertEquals((await t.kv.get(["commands", "gone2", 1])).value, null, "the old command is gone");
  assertEquals((await t.kv.get(["device_deletions", "gone2"])).value, null);
});

// ---------------------------------------------------------------------------------------------
// POST /api/v1/devices/{id}/keys

test("POST /devices/{id}/keys rotates: the previous key stays valid until the next rotation", async (t) => {
  const k1 = await t.register({ id: "d1" });
  const r1 = await json(await t.op("POST", "/api/v1/devices/d1/keys"), 200);
  assertEquals(r1.id, "d1");
  assert(typeof r1.key === "string" && r1.key.length >= 32);
  assert(r1.key !== k1.key);
  assert(!("keys" in r1));
  const k2 = { id: "d1", key: r1.key };
  assert(await keyWorks(t, k1), "the first key is still valid after one rotation");
  assert(await keyWorks(t, k2), "the new key works");

  const r2 = await json(await t.op("POST", "/api/v1/devices/d1/keys"), 200);
  const k3 = { id: "d1", key: r2.key };
  assert(r2.key !== k1.key && r2.key !== k2.key);
  assertEquals(await keyWorks(t, k1), false, "the first key is invalid after the second rotation");
  assert(await keyWorks(t, k2), "the second key stays valid until the next rotation");
  assert(await keyWorks(t, k3), "the newest key works");
  // keyCreatedAt follows the newest key; GET never shows one.
  const one = await json(await t.op("GET", "/api/v1/devices/d1"), 200);
  assertEquals(one.keyCreatedAt, r2.keyCreatedAt);
  assert(!JSON.stringify(one).includes(k3.key));

  await expectError(await t.op("POST", "/api/v1/devices/ghost/keys"), 404, "not_found");
});

// ---------------------------------------------------------------------------------------------
// GET /api/v1/twins/{id}

test("GET /twins/{id} returns the twin document with ETag of its version", async (t) => {
  await t.register({ id: "d1" });
  const res = await t.op("GET", "/api/v1/twins/d1");
  const twin = await json(res, 200);
  assertEquals(res.headers.get("etag"), '"1"');
  assertEquals(Object.keys(twin).sort(), [
    "connection",
    "delta",
    "desired",
    "id",
    "kind",
    "metadata",
    "reported",
    "telemetry",
    "version",
  ]);
  assertEquals(twin.id, "d1");
  assertEquals(twin.kind, "thermostat");
  assertEquals(twin.version, 1);
  assertEquals(twin.desired, {});
  assertEquals(twin.reported, {});
  assertEquals(twin.delta, {});
  assertEquals(twin.metadata, { desired: {}, reported: {} });
  assertEquals(twin.telemetry, { last: {}, lastAt: null });
  assertEquals(twin.connection.status, "never");

  // ETag moves with the version; If-None-Match with the current one is 304.
  await json(await t.op("PATCH", "/api/v1/twins/d1/desired", { mode: "auto" }), 200);
  const res2 = await t.op("GET", "/api/v1/twins/d1");
  assertEquals((await json(res2, 200)).version, 2);
  assertEquals(res2.headers.get("etag"), '"2"');
  const cached = await t.op("GET", "/api/v1/twins/d1", undefined, { "if-none-match": '"2"' });
  assertEquals(cached.status, 304);
  // As for If-Match: weak, bare or in a list, the same ETag.
  for (const tag of ['W/"2"', "2", '"1", "2"', "*"]) {
    const res = await t.op("GET", "/api/v1/twins/d1", undefined, { "if-none-match": tag });
    assertEquals(res.status, 304, tag);
  }
  await cached.body?.cancel();
  const stale = await t.op("GET", "/api/v1/twins/d1", undefined, { "if-none-match": '"1"' });
  assertEquals((await json(stale, 200)).version, 2);

  await expectError(await t.op("GET", "/api/v1/twins/ghost"), 404, "not_found");
});

// ---------------------------------------------------------------------------------------------
// PATCH /api/v1/twins/{id}/desired

test("PATCH /twins/{id}/desired merges, honours If-Match, and keeps delta and metadata per property", async (t) => {
  const d = await t.register({ id: "d1" });
  const start = Date.now();

  // If-Match that matches.
  const res = await t.op(
    "PATCH",
    "/api/v1/twins/d1/desired",
    { targetTemperature: 21, mode: "heat" },
    { "if-match": '"1"' },
  );
  const v2 = await json(res, 200);
  assertEquals(res.headers.get("etag"), '"2"');
  assertEquals(v2.version, 2);
  assertEquals(v2.desired, { targetTemperature: 21, mode: "heat" });
  assertEquals(v2.delta, { targetTemperature: 21, mode: "heat" });
  assertEquals(v2.metadata.desired.targetTemperature.version, 2);
  assertEquals(v2.metadata.desired.mode.version, 2);
  assertMatch(v2.metadata.desired.targetTemperature.updatedAt, ISO);
  const at2 = Date.parse(v2.metadata.desired.targetTemperature.updatedAt);
  assert(at2 >= start - 1 && at2 <= Date.now() + 1);
  assertEquals(await twinOf(t, "d1"), v2, "the response is the stored twin");

  // The device reports one property: delta shrinks.
  assertEquals(
    await json(await t.dev(d, "PATCH", "/device/v1/twin/reported", { targetTemperature: 21 }), 200),
    { version: 3 },
  );
  const v3 = await twinOf(t, "d1");
  assertEquals(v3.delta, { mode: "heat" });
  assertEquals(v3.metadata.reported.targetTemperature.version, 3);

  // Patching another property leaves the first one's metadata alone.
  const v4 = await json(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { maxTemperature: 40 }),
    200,
  );
  assertEquals(v4.version, 4);
  assertEquals(v4.desired, { targetTemperature: 21, mode: "heat", maxTemperature: 40 });
  assertEquals(v4.metadata.desired.targetTemperature, v2.metadata.desired.targetTemperature);
  assertEquals(v4.metadata.desired.maxTemperature.version, 4);
  assertEquals(v4.delta, { mode: "heat", maxTemperature: 40 });

  // A stale If-Match is 412 and writes nothing.
  const stale = await expectError(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 30 }, {
      "if-match": '"2"',
    }),
    412,
    "precondition_failed",
  );
  assert(stale.message.length > 0);
  assertEquals(await twinOf(t, "d1"), v4);

  // Weak and bare ETags and `*` are honoured.
  const v5 = await json(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 22 }, {
      "if-match": 'W/"4"',
    }),
    200,
  );
  assertEquals(v5.version, 5);
  assertEquals(v5.metadata.desired.targetTemperature.version, 5);
  const v6 = await json(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 23 }, { "if-match": "*" }),
    200,
  );
  assertEquals(v6.version, 6);

  // null deletes a property with its metadata.
  const v7 = await json(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { mode: null }, { "if-match": '"6"' }),
    200,
  );
  assertEquals(v7.version, 7);
  assertEquals(v7.desired, { targetTemperature: 23, maxTemperature: 40 });
  assert(!("mode" in v7.metadata.desired), "metadata of a deleted property goes");
  assertEquals(v7.delta, { targetTemperature: 23, maxTemperature: 40 });

  // A patch that changes nothing does not bump the version.
  const same = await json(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 23 }),
    200,
  );
  assertEquals(same.version, 7);
  assertEquals(await twinOf(t, "d1"), v7);
});

test("PATCH /twins/{id}/desired refuses bad input with the right status and writes nothing", async (t) => {
  await t.register({ id: "d1" });
  await t.register({ id: "g1", kind: "generic" });
  const v2 = await json(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature: 20 }),
    200,
  );
  const path = "/api/v1/twins/d1/desired";

  // Invalid If-Match.
  for (const header of ["abc", '"x"', "1.5", '"-1"']) {
    await expectInvalid(
      await t.op("PATCH", path, { mode: "off" }, { "if-match": header }),
      "If-Match",
    )
      .catch((e) => {
        throw new Error(`If-Match ${header}: ${e.message}`);
      });
  }
  // Malformed JSON.
  await expectError(await t.op("PATCH", path, "{targetTemperature: 1}"), 400, "invalid_json");
  await expectError(await t.op("PATCH", path, ""), 400, "invalid_json").catch(async () => {
    // An empty body may also be reported as bad_request; it must be a 400 in the error shape.
    await expectError(await t.op("PATCH", path, ""), 400, "bad_request");
  });
  // Wrong types and out-of-range values name the field.
  await expectInvalid(
    await t.op("PATCH", path, { targetTemperature: "warm" }),
    "targetTemperature",
  );
  await expectInvalid(await t.op("PATCH", path, { targetTemperature: 99 }), "targetTemperature");
  await expectInvalid(await t.op("PATCH", path, { mode: "turbo" }), "mode");
  // Unknown fields: thermostat desired is strict.
  await expectUnknownField(await t.op("PATCH", path, { fanSpeed: 3 }), "fanSpeed");
  // Not an object.
  const notObject = await t.op("PATCH", path, [{ targetTemperature: 21 }]);
  const notObjectCode = notObject.status === 400
    ? (await notObject.clone().json()).error?.code
    : "?";
  assert(["bad_request", "validation_failed"].includes(notObjectCode), `code ${notObjectCode}`);
  await expectError(notObject, 400, notObjectCode);
  // Unknown device.
  await expectError(
    await t.op("PATCH", "/api/v1/twins/ghost/desired", { mode: "off" }),
    404,
    "not_found",
  );
  assertEquals(await twinOf(t, "d1"), v2, "nothing was written to d1");

  // Oversize: a body over the patch limit, and a patch making desired larger than 32 KiB.
  const g = "/api/v1/twins/g1/desired";
  await expectError(
    await t.op("PATCH", g, { blob: "x".repeat(70 * 1024) }),
    413,
    "payload_too_large",
  );
  await expectError(
    await t.op("PATCH", g, { blob: "x".repeat(33 * 1024) }),
    413,
    "payload_too_large",
  );
  const g2 = await json(await t.op("PATCH", g, { a: "y".repeat(20 * 1024) }), 200);
  assertEquals(g2.version, 2);
  await expectError(
    await t.op("PATCH", g, { b: "z".repeat(20 * 1024) }),
    413,
    "payload_too_large",
  );
  const gTwin = await twinOf(t, "g1");
  assertEquals(gTwin.version, 2);
  assertEquals(Object.keys(gTwin.desired), ["a"]);
  // Replacing within the cap still works (the cap is on the result, not the sum of patches).
  const g3 = await json(await t.op("PATCH", g, { a: null, b: "z".repeat(20 * 1024) }), 200);
  assertEquals(Object.keys(g3.desired), ["b"]);
});

// ---------------------------------------------------------------------------------------------
// Commands

test("POST /devices/{id}/commands queues: 202 {id, status: queued}; GET list and one show it", async (t) => {
  await t.register({ id: "d1" });
  const before = Date.now();
  const res = await t.op("POST", "/api/v1/devices/d1/commands", {
    name: "reboot",
    payload: { delaySeconds: 5 },
    ttl: 600,
    timeout: 30,
  });
  const cmd = await json(res, 202);
  assert(typeof cmd.id === "string" && cmd.id.length > 0);
  assertEquals(cmd.status, "queued");

  const one = await json(await t.op("GET", `/api/v1/devices/d1/commands/${cmd.id}`), 200);
  assertEquals(one.id, cmd.id);
  assertEquals(one.name, "reboot");
  assertEquals(one.payload, { delaySeconds: 5 });
  assertEquals(one.status, "queued");
  assertMatch(one.createdAt, ISO);
  assertMatch(one.expiresAt, ISO);
  const ttlMs = Date.parse(one.expiresAt) - Date.parse(one.createdAt);
  assertEquals(ttlMs, 600_000);
  assert(Date.parse(one.createdAt) >= before - 1);

  // A second one without a payload; a kind's command without payload fields is allowed.
  const cmd2 = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", {
      name: "cool",
      payload: { targetTemperature: 18 },
    }),
    202,
  );
  const list = await json(await t.op("GET", "/api/v1/devices/d1/commands"), 200);
  assertEquals(list.cursor, null);
  assertEquals(list.items.map((c: { id: string }) => c.id).sort(), [cmd.id, cmd2.id].sort());
  assert(list.items.every((c: { status: string }) => c.status === "queued"));

  // Filter by status and page.
  const queued = await json(await t.op("GET", "/api/v1/devices/d1/commands?status=queued"), 200);
  assertEquals(queued.items.length, 2);
  const done = await json(await t.op("GET", "/api/v1/devices/d1/commands?status=succeeded"), 200);
  assertEquals(done.items, []);
  const cmd3 = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", { name: "reboot", payload: {} }),
    202,
  );
  const seen: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const page: { items: Array<{ id: string }>; cursor: string | null } = await json(
      await t.op(
        "GET",
        `/api/v1/devices/d1/commands?limit=2${
          cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""
        }`,
      ),
      200,
    );
    assert(page.items.length <= 2);
    seen.push(...page.items.map((c) => c.id));
    cursor = page.cursor;
    assert(++pages < 10);
  } while (cursor !== null);
  assertEquals(seen.sort(), [cmd.id, cmd2.id, cmd3.id].sort());

  // Unknown command and unknown device.
  await expectError(
    await t.op("GET", "/api/v1/devices/d1/commands/zz-deadbeef"),
    404,
    "not_found",
  );
  await expectError(await t.op("GET", "/api/v1/devices/d1/commands/nonsense"), 404, "not_found");
  await expectError(
    await t.op("GET", `/api/v1/devices/ghost/commands/${cmd.id}`),
    404,
    "not_found",
  );
  await expectError(await t.op("GET", "/api/v1/devices/ghost/commands"), 404, "not_found");
  await expectInvalid(await t.op("GET", "/api/v1/devices/d1/commands?limit=0"), "limit");
  await expectInvalid(await t.op("GET", "/api/v1/devices/d1/commands?status=bogus"), "status");
  await expectInvalid(
    await t.op("GET", "/api/v1/devices/d1/commands?cursor=not-a-cursor!!"),
    "cursor",
  );
});

test("command status moves queued → delivered → succeeded, with result and timestamps", async (t) => {
  const d = await t.register({ id: "d1" });
  const cmd = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", { name: "reboot", payload: {}, timeout: 30 }),
    202,
  );
  const polled = await json(await t.dev(d, "GET", "/device/v1/commands"), 200);
  assertEquals(polled.items.map((c: { id: string }) => c.id), [cmd.id]);
  const delivered = await json(await t.op("GET", `/api/v1/devices/d1/commands/${cmd.id}`), 200);
  assertEquals(delivered.status, "delivered");
  assertMatch(delivered.deliveredAt, ISO);
  assertMatch(delivered.timeoutAt, ISO);
  assertEquals(Date.parse(delivered.timeoutAt) - Date.parse(delivered.deliveredAt), 30_000);
  await json(
    await t.dev(d, "POST", `/device/v1/commands/${cmd.id}/result`, {
      status: "succeeded",
      result: { uptime: 0 },
    }),
    200,
  );
  const done = await json(await t.op("GET", `/api/v1/devices/d1/commands/${cmd.id}`), 200);
  assertEquals(done.status, "succeeded");
  assertEquals(done.result, { uptime: 0 });
  assertMatch(done.completedAt, ISO);
  assertEquals(
    done.history.map((h: { status: string }) => h.status),
    ["queued", "delivered", "succeeded"],
  );
});

test("Idempotency-Key returns the same command and creates only one, even after passivation", async (t) => {
  await t.register({ id: "d1" });
  const body = { name: "cool", payload: { targetTemperature: 20 } };
  const a = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", body, { "idempotency-key": "abc-1" }),
    202,
  );
  const b = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", body, { "idempotency-key": "abc-1" }),
    202,
  );
  assertEquals(b.id, a.id);
  assertEquals(b.status, "queued");
  assertEquals((await commandsOf(t, "d1")).length, 1);

  // Concurrent retries with one key still create one command.
  const many = await Promise.all(
    Array.from(
      { length: 5 },
      () =>
        t.op("POST", "/api/v1/devices/d1/commands", body, { "idempotency-key": "abc-2" })
          .then((r) => json(r, 202)),
    ),
  );
  assertEquals(new Set(many.map((c) => c.id)).size, 1);
  assertEquals((await commandsOf(t, "d1")).length, 2);

  // The key is durable: it survives the twin leaving memory.
  t.runtime.evict("d1");
  const c = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", body, { "idempotency-key": "abc-1" }),
    202,
  );
  assertEquals(c.id, a.id);
  assertEquals((await commandsOf(t, "d1")).length, 2);

  // Another key makes another command; no key makes one each time.
  const other = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", body, { "idempotency-key": "xyz" }),
    202,
  );
  assert(other.id !== a.id);
  await json(await t.op("POST", "/api/v1/devices/d1/commands", body), 202);
  await json(await t.op("POST", "/api/v1/devices/d1/commands", body), 202);
  assertEquals((await commandsOf(t, "d1")).length, 5);

  // A key that is too long is refused.
  await expectInvalid(
    await t.op("POST", "/api/v1/devices/d1/commands", body, {
      "idempotency-key": "k".repeat(129),
    }),
    "Idempotency-Key",
  );
  assertEquals((await commandsOf(t, "d1")).length, 5);
});

test("?wait=N returns the result when the device answers meanwhile", async (t) => {
  const d = await t.register({ id: "d1" });
  const started = Date.now();
  const [opRes, deviceSide] = await Promise.all([
    t.op("POST", "/api/v1/devices/d1/commands?wait=5", {
      name: "cool",
      payload: { targetTemperature: 19 },
    }),
    (async () => {
      const poll = await json(await t.dev(d, "GET", "/device/v1/commands?wait=5"), 200);
      assertEquals(poll.items.length, 1);
      assertEquals(poll.items[0].name, "cool");
      assertEquals(poll.items[0].payload, { targetTemperature: 19 });
      const res = await t.dev(d, "POST", `/device/v1/commands/${poll.items[0].id}/result`, {
        status: "succeeded",
        result: { reached: 19 },
      });
      return { id: poll.items[0].id, body: await json(res, 200) };
    })(),
  ]);
  const body = await json(opRes, 200);
  assertEquals(body.id, deviceSide.id);
  assertEquals(body.status, "succeeded");
  assertEquals(body.result, { reached: 19 });
  assert(Date.now() - started < 4_500, "the wait ended with the result, not the timeout");
  assertEquals(deviceSide.body, { id: deviceSide.id, status: "succeeded" });
});

test("?wait=N with no answer returns the command as it stands after N seconds", async (t) => {
  await t.register({ id: "d1" });
  const started = Date.now();
  const res = await t.op("POST", "/api/v1/devices/d1/commands?wait=1", {
    name: "reboot",
    payload: {},
  });
  const body = await json(res, 202);
  assertEquals(body.status, "queued");
  assert(Date.now() - started >= 900, "it waited");
});

test("POST /devices/{id}/commands refuses bad input with 400 naming the field, creating nothing", async (t) => {
  await t.register({ id: "d1" });
  const path = "/api/v1/devices/d1/commands";
  // A command name the kind does not declare.
  await expectInvalid(await t.op("POST", path, { name: "selfDestruct" }), "name");
  // Bad payloads name payload.field.
  await expectInvalid(
    await t.op("POST", path, { name: "cool", payload: { targetTemperature: "cold" } }),
    "payload.targetTemperature",
  );
  await expectInvalid(
    await t.op("POST", path, { name: "cool", payload: { targetTemperature: 100 } }),
    "payload.targetTemperature",
  );
  await expectInvalid(
    await t.op("POST", path, { name: "reboot", payload: { delaySeconds: 1.5 } }),
    "payload.delaySeconds",
  );
  const missing = await expectError(
    await t.op("POST", path, { name: "cool" }),
    400,
    "validation_failed",
  );
  assert(fields(missing).some((f) => f.startsWith("payload")), JSON.stringify(missing));
  await expectUnknownField(
    await t.op("POST", path, { name: "cool", payload: { targetTemperature: 20, force: true } }),
    "force",
  );
  // ttl and timeout out of range.
  for (const ttl of [0, -5, 604_801, 1.5, "60"]) {
    await expectInvalid(await t.op("POST", path, { name: "reboot", payload: {}, ttl }), "ttl")
      .catch((e) => {
        throw new Error(`ttl ${ttl}: ${e.message}`);
      });
  }
  for (const timeout of [0, 86_401]) {
    await expectInvalid(
      await t.op("POST", path, { name: "reboot", payload: {}, timeout }),
      "timeout",
    );
  }
  // Wrong types, unknown fields, missing name.
  await expectInvalid(await t.op("POST", path, { name: 42 }), "name");
  await expectInvalid(await t.op("POST", path, {}), "name");
  await expectInvalid(await t.op("POST", path, { name: "bad name!" }), "name");
  await expectUnknownField(
    await t.op("POST", path, { name: "reboot", payload: {}, priority: 1 }),
    "priority",
  );
  // Malformed JSON, bad query, too large.
  await expectError(await t.op("POST", path, '{"name": "reboot"'), 400, "invalid_json");
  for (const wait of ["999", "-1", "abc", "301"]) {
    await expectInvalid(
      await t.op("POST", `${path}?wait=${wait}`, { name: "reboot", payload: {} }),
      "wait",
    );
  }
  await expectError(
    await t.op("POST", path, { name: "reboot", payload: { junk: "x".repeat(40 * 1024) } }),
    413,
    "payload_too_large",
  );
  // Nothing was created by any of these.
  assertEquals(await commandsOf(t, "d1"), []);
  // Unknown device.
  await expectError(
    await t.op("POST", "/api/v1/devices/ghost/commands", { name: "reboot" }),
    404,
    "not_found",
  );
  // A permissive kind takes any command name and payload.
  await t.register({ id: "g1", kind: "generic" });
  const any = await json(
    await t.op("POST", "/api/v1/devices/g1/commands", { name: "blink", payload: [1, "two"] }),
    202,
  );
  assertEquals(any.status, "queued");
});

test("a command whose payload fields are all optional may omit the optional payload", async (t) => {
  // The contract makes `payload` optional; thermostat's `reboot` payload has only optional fields.
  await t.register({ id: "d1" });
  const cmd = await json(
    await t.op("POST", "/api/v1/devices/d1/commands", { name: "reboot" }),
    202,
  );
  assertEquals(cmd.status, "queued");
});

test("an unknown field is named in details.fields (strict operator body and thermostat desired)", async (t) => {
  // The contract: 400 bad input, "details name the field".
  await t.register({ id: "d1" });
  const body = await expectError(
    await t.op("POST", "/api/v1/devices", { id: "a", kind: "generic", colour: "red" }),
    400,
    "validation_failed",
  );
  assert(fields(body).includes("colour"), JSON.stringify(body.details));
  const desired = await expectError(
    await t.op("PATCH", "/api/v1/twins/d1/desired", { fanSpeed: 3 }),
    400,
    "validation_failed",
  );
  assert(fields(desired).includes("fanSpeed"), JSON.stringify(desired.details));
});

test("concurrent desired patches with one If-Match: exactly one wins, the rest get 412", async (t) => {
  await t.register({ id: "d1" });
  const results = await Promise.all(
    [18, 19, 20, 21, 22].map((targetTemperature) =>
      t.op("PATCH", "/api/v1/twins/d1/desired", { targetTemperature }, { "if-match": '"1"' })
    ),
  );
  const statuses = results.map((r) => r.status).sort();
  assertEquals(statuses, [200, 412, 412, 412, 412]);
  const winner = results.find((r) => r.status === 200)!;
  const body = await json(winner, 200);
  for (const r of results.filter((r) => r.status === 412)) {
    await expectError(r, 412, "precondition_failed");
  }
  const twin = await twinOf(t, "d1");
  assertEquals(twin.version, 2);
  assertEquals(twin.desired, body.desired);
});

test("concurrent registrations of one id: one 201, the rest 409", async (t) => {
  const results = await Promise.all(
    ["thermostat", "generic", "thermostat"].map((kind) =>
      t.op("POST", "/api/v1/devices", { id: "same", kind })
    ),
  );
  assertEquals(results.map((r) => r.status).sort(), [201, 409, 409]);
  const winner = await json(results.find((r) => r.status === 201)!, 201);
  for (const r of results.filter((r) => r.status === 409)) await expectError(r, 409, "conflict");
  assert(await keyWorks(t, { id: "same", key: winner.key }));
  const listed = await json(await t.op("GET", "/api/v1/devices"), 200);
  assertEquals(listed.items.map((i: { id: string }) => i.id), ["same"]);
  assertEquals(listed.items[0].kind, winner.kind);
});

test("a command payload over the payload cap is refused with 413, creating nothing", async (t) => {
  await t.register({ id: "g1", kind: "generic" });
  await expectError(
    await t.op("POST", "/api/v1/devices/g1/commands", {
      name: "upload",
      payload: { data: "x".repeat(20 * 1024) },
    }),
    413,
    "payload_too_large",
  );
  assertEquals(await commandsOf(t, "g1"), []);
});

test("sign-in: wrong tokens sent all at once are checked ten at most, the rest refused with 429", async (t) => {
  const form = await t.app.request("/login");
  const csrf = /name="_csrf" value="([^"]+)"/.exec(await form.text())?.[1];
  const cookie = form.headers.get("set-cookie")?.split(";")[0];
  assert(csrf && cookie);
  const attempts = await Promise.all(Array.from({ length: 30 }, async () => {
    const res = await t.app.request("/login", {
      method: "POST",
      headers: { cookie, "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ _csrf: csrf, token: "wrong-token" }).toString(),
    });
    await res.body?.cancel();
    return res.status;
  }));
  assertEquals(attempts.filter((s) => s === 401).length, 10);
  assertEquals(attempts.filter((s) => s === 429).length, 20);
});

Deno.test("sign-in: a dashboard session ends when the operator token is replaced", async () => {
  const kv = await Deno.openKv(":memory:");
  const build = (adminToken: string) =>
    createApp({
      kv,
      clock: { now: () => Date.now() },
      kinds: KINDS,
      secret: "test-secret-0123456789abcdef",
      adminToken,
      logger: silentLogger,
    });
  const before = await build(ADMIN_TOKEN);
  const after = await build("a-new-operator-token-0123456789");
  try {
    const form = await before.app.request("/login");
    const csrf = /name="_csrf" value="([^"]+)"/.exec(await form.text())?.[1];
    const loginCookie = form.headers.get("set-cookie")?.split(";")[0];
    assert(csrf && loginCookie);
    const signIn = await before.app.request("/login", {
      method: "POST",
      headers: { cookie: loginCookie, "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ _csrf: csrf, token: ADMIN_TOKEN }).toString(),
    });
    assertEquals(signIn.status, 303);
    const session = signIn.headers.getSetCookie().find((c) => c.startsWith("doppel_session="));
    const cookie = session!.split(";")[0];
    const list = (app: typeof before) =>
      app.app.request("/api/v1/devices", { headers: { cookie } });
    assertEquals((await list(before)).status, 200);
    // The process restarted with a new DOPPEL_ADMIN_TOKEN: sessions from the old one are over.
    const res = await list(after);
    await res.body?.cancel();
    assertEquals(res.status, 401);
  } finally {
    await before.close();
    await after.close();
    kv.close();
  }
});

/** An app as `DOPPEL_TRUST_PROXY` sets it up, for `fn`. */
async function withProxyApp(
  trustProxy: boolean,
  fn: (app: TestApp) => Promise<void>,
): Promise<void> {
  const app = await testApp({ trustProxy });
  try {
    await fn(app);
  } finally {
    await app.dispose();
  }
}

/** Signs in through `/login` with `headers` on both requests; returns the POST's answer. */
async function signIn(
  app: TestApp,
  headers: Record<string, string>,
  token = ADMIN_TOKEN,
): Promise<{ form: Response; answer: Response }> {
  const form = await app.app.request("/login", { headers });
  const csrf = /name="_csrf" value="([^"]+)"/.exec(await form.text())?.[1];
  const cookie = form.headers.get("set-cookie")?.split(";")[0];
  assert(csrf && cookie);
  const answer = await app.app.request("/login", {
    method: "POST",
    headers: { ...headers, cookie, "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ _csrf: csrf, token }).toString(),
  });
  await answer.body?.cancel();
  return { form, answer };
}

const BEHIND_TLS_PROXY = {
  "x-forwarded-proto": "https",
  "x-forwarded-host": "doppel.example.com",
  "x-forwarded-for": "203.0.113.7",
  origin: "https://doppel.example.com",
};

Deno.test("sign-in behind a TLS proxy: trusted (DOPPEL_TRUST_PROXY=1), the origin check passes and cookies are Secure; not trusted, its headers count for nothing", async () => {
  await withProxyApp(true, async (app) => {
    const { form, answer } = await signIn(app, BEHIND_TLS_PROXY);
    assertMatch(form.headers.get("set-cookie") ?? "", /; Secure/);
    assertEquals(answer.status, 303);
    const session = answer.headers.getSetCookie().find((c) => c.startsWith("doppel_session="));
    assertMatch(session ?? "", /; Secure/);
  });
  await withProxyApp(false, async (app) => {
    const { form, answer } = await signIn(app, BEHIND_TLS_PROXY);
    assert(!/Secure/.test(form.headers.get("set-cookie") ?? ""), "no Secure over plain HTTP");
    assertEquals(answer.status, 403, "the forwarded origin is not believed");
  });
});

Deno.test("sign-in behind a trusted proxy: the failure limit is per forwarded client address, so one client cannot lock every operator out", async () => {
  await withProxyApp(true, async (app) => {
    for (let i = 0; i < 10; i++) {
      assertEquals((await signIn(app, BEHIND_TLS_PROXY, "wrong-token")).answer.status, 401);
    }
    assertEquals((await signIn(app, BEHIND_TLS_PROXY)).answer.status, 429);
    const other = { ...BEHIND_TLS_PROXY, "x-forwarded-for": "198.51.100.1, 203.0.113.8" };
    assertEquals((await signIn(app, other)).answer.status, 303);
  });
});

test("every answer is nosniff and unframeable; /docs allows only its own style; pages are not cached", async (t) => {
  const docs = await t.app.request("/docs");
  await docs.body?.cancel();
  const csp = docs.headers.get("content-security-policy") ?? "";
  assertMatch(csp, /^default-src 'none'; style-src 'sha256-[A-Za-z0-9+/]+=*'/);
  const api = await t.op("GET", "/api/v1/devices");
  await api.body?.cancel();
  for (const res of [docs, api]) {
    assertEquals(res.headers.get("x-content-type-options"), "nosniff");
    assertEquals(res.headers.get("x-frame-options"), "DENY");
  }
  const login = await t.app.request("/login");
  await login.body?.cancel();
  assertEquals(login.headers.get("cache-control"), "no-store");
});
