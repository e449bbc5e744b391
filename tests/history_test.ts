/**
 * Telemetry history: rollups (1m, 1h, 1d) and raw points checked against a brute-force
 * computation over thousands of random points (out of order, late, tied timestamps), paging with
 * cursors, and retention: data past it leaves queries and KV, and storage stays bounded when a
 * device writes for simulated days.
 * @module
 */
import { seededRandom } from "../src/simulator/physics.ts";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { headParts, loadTwin } from "../src/storage/twin_store.ts";
import { type TestApp, testApp } from "./helpers.ts";
import { ManualClock } from "../src/clock.ts";
import { defineTwin, z } from "../src/mod.ts";
import type { TwinKind } from "../src/twin/kind.ts";
import { metricView, upgradeHistory } from "../src/telemetry/history.ts";

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
const BUCKETS = { "1m": MIN, "1h": HOUR, "1d": DAY } as const;
type Level = keyof typeof BUCKETS;

function meterKind(retention?: Record<string, string>): Map<string, TwinKind> {
  const kind = defineTwin({
    kind: "meter",
    telemetry: z.object({ power: z.number(), extra: z.number().optional() }),
    desired: z.object({}),
    reported: z.object({}),
    ...(retention ? { retention } : {}),
  });
  return new Map([["meter", kind]]);
}

/** A point as sent, with its arrival position. */
interface Point {
  ts: number;
  value: number;
  seq: number;
}

interface ExpectedBucket {
  start: string;
  end: string;
  min: number;
  max: number;
  avg: number;
  count: number;
  last: number;
}

/** Brute force: every bucket of `level` over `points`. `last` is the value at the latest ts,
 * and among points of that same ts the one that arrived last (a resend corrects). */
function bruteBuckets(points: Point[], level: Level): ExpectedBucket[] {
  const len = BUCKETS[level];
  const groups = new Map<number, Point[]>();
  for (const p of points) {
    const start = Math.floor(p.ts / len) * len;
    const group = groups.get(start) ?? [];
    group.push(p);
    groups.set(start, group);
  }
  return [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([start, group]) => {
    let latest = group[0];
    let sum = 0;
    for (const p of group) {
      sum += p.value;
      if (p.ts > latest.ts || (p.ts === latest.ts && p.seq > latest.seq)) latest = p;
    }
    return {
      start: new Date(start).toISOString(),
      end: new Date(start + len).toISOString(),
      min: Math.min(...group.map((p) => p.value)),
      max: Math.max(...group.map((p) => p.value)),
      avg: sum / group.length,
      count: group.length,
      last: latest.value,
    };
  });
}

// deno-lint-ignore no-explicit-any
type Json = any;

async function getJson(app: TestApp, path: string): Promise<Json> {
  const res = await app.op("GET", path);
  const body = await res.json();
  assertEquals(res.status, 200, `GET ${path}: ${JSON.stringify(body)}`);
  return body;
}

/** Every page of a history query, following cursors; checks pages do not overlap. */
async function allPages(
  app: TestApp,
  id: string,
  params: Record<string, string>,
): Promise<{ items: Json[]; pages: number }> {
  const items: Json[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const query = new URLSearchParams({ ...params, ...(cursor ? { cursor } : {}) });
    const page = await getJson(app, `/api/v1/devices/${id}/telemetry?${query}`);
    if (items.length > 0 && page.items.length > 0) {
      const time = (item: Json) => Date.parse(item.ts ?? item.start);
      assert(
        time(page.items[0]) > time(items[items.length - 1]),
        `page ${pages + 1} starts after the previous page ended: ${
          JSON.stringify(page.items[0])
        } after ${JSON.stringify(items[items.length - 1])} (cursor ${cursor})`,
      );
    }
    items.push(...page.items);
    cursor = page.cursor;
    pages++;
    assert(pages < 10_000, "paging ends");
  } while (cursor !== null);
  return { items, pages };
}

/** Buckets compared with avg to a relative tolerance (sums add up in another order). */
function assertBuckets(actual: Json[], expected: ExpectedBucket[], what: string): void {
  assertEquals(actual.length, expected.length, `${what}: number of buckets`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    const label = `${what} bucket ${e.start}`;
    // (`end` is checked on its own, in the bucket shape test.)
    assertEquals(
      { start: a.start, min: a.min, max: a.max, count: a.count, last: a.last },
      { start: e.start, min: e.min, max: e.max, count: e.count, last: e.last },
      label,
    );
    assert(
      Math.abs(a.avg - e.avg) <= 1e-9 * Math.max(1, Math.abs(e.avg)),
      `${label}: avg ${a.avg} vs ${e.avg}`,
    );
  }
}

function sortPoints(points: Array<{ ts: number; value: number }>) {
  return points.map(({ ts, value }) => ({ ts, value })).sort((a, b) =>
    a.ts - b.ts || a.value - b.value
  );
}

Deno.test("history: rollups and raw points equal a brute-force computation over random, late and out-of-order points", async () => {
  const seed = 20261126;
  const random = seededRandom(seed);
  // Seven hours across midnight UTC, so the day level has two buckets.
  const t0 = Date.parse("2026-11-26T20:47:13.250Z");
  const span = 7 * HOUR;
  const clock = new ManualClock(t0);
  const app = await testApp({ clock, kinds: meterKind() });
  try {
    const dev = await app.register({ id: "m1", kind: "meter" });
    const points: Point[] = [];
    const extras: Array<{ ts: number; value: number }> = [];
    const total = 4000;
    let cursor = t0;
    let seq = 0;
    let viaHttp = false;
    while (seq < total) {
      const batch: Array<Record<string, number>> = [];
      const size = 1 + Math.floor(random() * 40);
      for (let i = 0; i < size && seq < total; i++) {
        cursor = Math.min(t0 + span, cursor + Math.floor(random() * 12_000));
        let ts: number;
        const r = random();
        if (r < 0.08 && points.length > 0) {
          ts = t0 + Math.floor(random() * (cursor - t0 + 1)); // late, by up to hours
        } else if (r < 0.11 && points.length > 0) {
          ts = points[Math.floor(random() * points.length)].ts; // same ts as an earlier point
        } else if (r < 0.14) {
          ts = cursor - Math.floor(random() * 90_000); // a little out of order
        } else {
          ts = cursor;
        }
        ts = Math.max(t0, ts);
        const value = Math.round((random() * 200 - 100) * 100) / 100;
        const item: Record<string, number> = { ts, power: value };
        if (random() < 0.3) {
          item.extra = Math.round(random() * 1000);
          extras.push({ ts, value: item.extra });
        }
        batch.push(item);
        points.push({ ts, value, seq: seq++ });
      }
      clock.advance(Math.max(0, cursor - clock.now())); // the device's clock is the server's
      // Half of the batches over the HTTP device API, half straight into the runtime.
      viaHttp = !viaHttp;
      if (viaHttp) {
        const res = await app.dev(dev, "POST", "/device/v1/telemetry", batch);
        assertEquals(res.status, 202, await res.text());
      } else {
        assertEquals(await app.runtime.telemetry("m1", batch), {
          accepted: batch.length,
          duplicates: 0,
        });
      }
    }
    const range = { metric: "power", from: String(t0), to: String(t0 + span), limit: "100000" };

    // Raw: the exact multiset of points, in time order.
    const raw = await getJson(app, `/api/v1/devices/m1/telemetry?${new URLSearchParams(range)}`);
    assertEquals(raw.bucket, "raw");
    assertEquals(raw.cursor, null);
    assertEquals(raw.items.length, total, `raw points (seed ${seed})`);
    const rawPoints = raw.items.map((p: Json) => ({ ts: Date.parse(p.ts), value: p.value }));
    for (let i = 1; i < rawPoints.length; i++) {
      assert(rawPoints[i].ts >= rawPoints[i - 1].ts, "raw points come in time order");
    }
    assertEquals(sortPoints(rawPoints), sortPoints(points), "raw points as sent");

    // Each level against brute force.
    for (const level of ["1m", "1h", "1d"] as const) {
      const body = await getJson(
        app,
        `/api/v1/devices/m1/telemetry?${new URLSearchParams({ ...range, bucket: level })}`,
      );
      assertEquals(body.bucket, level);
      assertBuckets(body.items, bruteBuckets(points, level), `${level} (seed ${seed})`);
    }
    // A second metric of the same items is kept apart.
    const extra = await getJson(
      app,
      `/api/v1/devices/m1/telemetry?${new URLSearchParams({
        ...range,
        metric: "extra",
        bucket: "1h",
      })}`,
    );
    assertBuckets(
      extra.items,
      bruteBuckets(extras.map((p, i) => ({ ...p, seq: i })), "1h"),
      "extra 1h",
    );

    // A sub-range: raw points inside [from, to] only, buckets overlapping it whole.
    for (let k = 0; k < 5; k++) {
      const a = t0 + Math.floor(random() * span);
      const b = Math.min(t0 + span, a + Math.floor(random() * 2 * HOUR));
      const body = await getJson(
        app,
        `/api/v1/devices/m1/telemetry?${new URLSearchParams({
          metric: "power",
          from: String(a),
          to: String(b),
          limit: "100000",
        })}`,
      );
      assertEquals(
        sortPoints(body.items.map((p: Json) => ({ ts: Date.parse(p.ts), value: p.value }))),
        sortPoints(points.filter((p) => p.ts >= a && p.ts <= b)),
        `raw points in [${a}, ${b}]`,
      );
      const minutes = await getJson(
        app,
        `/api/v1/devices/m1/telemetry?${new URLSearchParams({
          metric: "power",
          from: String(a),
          to: String(b),
          bucket: "1m",
        })}`,
      );
      const expected = bruteBuckets(points, "1m").filter((e) =>
        Date.parse(e.start) <= b && Date.parse(e.end) > a
      );
      assertBuckets(minutes.items, expected, `1m buckets overlapping [${a}, ${b}]`);
    }

    // The twin's own record stays small: history lives in chunks, not in the record.
    const { json } = headParts(
      (await app.kv.get<Parameters<typeof headParts>[0]>(["twins", "m1"])).value!,
    );
    assert(json.length < 30_000, `twin record is ${json.length} characters`);

    // Paging: each point and bucket exactly once, across many pages.
    const paged = await allPages(app, "m1", { ...range, limit: "97" });
    assert(paged.pages >= total / 100, `raw paging took ${paged.pages} pages`);
    assertEquals(
      sortPoints(paged.items.map((p: Json) => ({ ts: Date.parse(p.ts), value: p.value }))),
      sortPoints(points),
      "raw points over all pages",
    );
    const pagedMinutes = await allPages(app, "m1", { ...range, bucket: "1m", limit: "37" });
    assert(pagedMinutes.pages > 5, `1m paging took ${pagedMinutes.pages} pages`);
    assertBuckets(pagedMinutes.items, bruteBuckets(points, "1m"), "1m over all pages");
  } finally {
    await app.dispose();
  }
});

Deno.test("history: a paging cursor never splits points of the same time", async () => {
  const clock = new ManualClock();
  const app = await testApp({ clock, kinds: meterKind() });
  try {
    await app.register({ id: "m2", kind: "meter" });
    const t = clock.now() - 10 * MIN;
    // Ten points at each of five times.
    const items = [];
    for (let i = 0; i < 5; i++) {
      for (let j = 0; j < 10; j++) items.push({ ts: t + i * 1000, power: i * 10 + j });
    }
    await app.runtime.telemetry("m2", items);
    const { items: got } = await allPages(app, "m2", {
      metric: "power",
      from: String(t),
      to: String(clock.now()),
      limit: "3",
    });
    assertEquals(
      sortPoints(got.map((p: Json) => ({ ts: Date.parse(p.ts), value: p.value }))),
      sortPoints(items.map((p) => ({ ts: p.ts, value: p.power }))),
    );
  } finally {
    await app.dispose();
  }
});

Deno.test("history: bucket items have the documented shape {start, end, min, max, avg, count, last}", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T10:00:30.000Z"));
  const app = await testApp({ clock, kinds: meterKind() });
  try {
    await app.register({ id: "m3", kind: "meter" });
    const t = Date.parse("2026-11-26T09:58:10.000Z");
    // Two closed minutes (stored) and an open one (held by the twin).
    await app.runtime.telemetry("m3", [
      { ts: t, power: 1 },
      { ts: t + 20_000, power: 3 },
      { ts: t + 60_000, power: 5 },
      { ts: t + 120_000, power: 7 },
    ]);
    for (const [bucket, len] of [["1m", MIN], ["1h", HOUR], ["1d", DAY]] as const) {
      const body = await getJson(
        app,
        `/api/v1/devices/m3/telemetry?${new URLSearchParams({
          metric: "power",
          bucket,
          from: String(t),
          to: String(clock.now()),
        })}`,
      );
      for (const item of body.items) {
        assertEquals(
          Object.keys(item).sort(),
          ["avg", "count", "end", "last", "max", "min", "start"],
          `${bucket} bucket fields: ${JSON.stringify(item)}`,
        );
        assertEquals(item.end, new Date(Date.parse(item.start) + len).toISOString());
      }
    }
  } finally {
    await app.dispose();
  }
});

/** Counts KV entries under a prefix. */
async function count(kv: Deno.Kv, prefix: Deno.KvKey): Promise<number> {
  let n = 0;
  for await (const _ of kv.list({ prefix })) n++;
  return n;
}

/** Counts `["expiries", …]` entries pointing under `prefix`. */
async function countExpiries(kv: Deno.Kv, prefix: Deno.KvKey): Promise<number> {
  let n = 0;
  for await (const entry of kv.list({ prefix: ["expiries"] })) {
    const target = entry.key.slice(2);
    if (prefix.every((part, i) => target[i] === part)) n++;
  }
  return n;
}

Deno.test("history retention: data past retention leaves KV and queries after sweepExpired", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T10:00:00.000Z"));
  const app = await testApp({ clock, kinds: meterKind({ raw: "10m", "1m": "1h" }) });
  try {
    await app.register({ id: "r1", kind: "meter" });
    const start = clock.now();
    // One point every 30 s for an hour, as it happens.
    for (let i = 0; i < 120; i++) {
      await app.runtime.telemetry("r1", [{ ts: clock.now(), power: i }]);
      clock.advance(30_000);
    }
    const end = clock.now();
    const q = (bucket?: string) =>
      `/api/v1/devices/r1/telemetry?${new URLSearchParams({
        metric: "power",
        from: String(start - HOUR),
        to: String(end + HOUR),
        limit: "100000",
        ...(bucket ? { bucket } : {}),
      })}`;
    // Only the last 10 minutes are served, swept or not: the last point came 30 s before `end`,
    // so the 19 points after end - 10 min.
    assertEquals((await getJson(app, q())).items.length, 19, "raw points within retention");
    assert((await count(app.kv, ["telemetry", "r1"])) > 0, "raw chunks were written");
    await app.runtime.sweepExpired();
    assertEquals(
      (await getJson(app, q())).items.length,
      19,
      "raw points older than the 10 min retention are not served",
    );

    // Two days later (past the 1m level's chunk span plus its retention), with the device silent.
    clock.advance(2 * DAY);
    const removed = await app.runtime.sweepExpired();
    assert(removed > 0, "the sweep removed entries");
    assertEquals(await count(app.kv, ["telemetry", "r1"]), 0, "raw chunks left in KV");
    assertEquals(await count(app.kv, ["rollups", "r1", "power", "1m"]), 0, "1m chunks left in KV");
    assertEquals(await countExpiries(app.kv, ["telemetry", "r1"]), 0, "raw expiry entries left");
    assertEquals(
      await countExpiries(app.kv, ["rollups", "r1", "power", "1m"]),
      0,
      "1m expiry entries left",
    );
    // The levels with long retention are kept (each stored chunk with its expiry entry).
    assertEquals(
      await countExpiries(app.kv, ["rollups", "r1"]),
      await count(app.kv, ["rollups", "r1"]),
    );
    const hours = (await getJson(app, q("1h"))).items;
    assertEquals(hours.reduce((n: number, b: Json) => n + b.count, 0), 120, "1h rollups kept");

    // Queries: nothing past retention, including what the twin still held unflushed.
    const rawLeft = (await getJson(app, q())).items;
    const minutesLeft = (await getJson(app, q("1m"))).items;
    assertEquals(
      { raw: rawLeft.length, "1m": minutesLeft.length },
      { raw: 0, "1m": 0 },
      `served two days after retention (raw 10 min, 1m 1 h): raw ${
        rawLeft.map((p: Json) => p.ts.slice(11, 19)).join(" ")
      }; 1m ${minutesLeft.map((b: Json) => b.start.slice(11, 16)).join(" ")}`,
    );
  } finally {
    await app.dispose();
  }
});

Deno.test("history retention: storage stays bounded while a device writes for simulated days", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T00:00:00.000Z"));
  const app = await testApp({ clock, kinds: meterKind({ raw: "10m", "1m": "1h" }) });
  try {
    await app.register({ id: "b1", kind: "meter" });
    const begin = clock.now();
    const counts: Array<{ hour: number; raw: number; rollups: number; expiries: number }> = [];
    const hours = 72;
    for (let hour = 0; hour < hours; hour++) {
      // An hour of minutes in one batch, then the clock moves on and the sweep runs.
      const base = clock.now();
      const items = Array.from({ length: 60 }, (_, i) => ({ ts: base + i * MIN, power: i }));
      clock.advance(HOUR);
      await app.runtime.telemetry("b1", items);
      await app.runtime.sweepExpired();
      counts.push({
        hour,
        raw: await count(app.kv, ["telemetry", "b1"]),
        rollups: await count(app.kv, ["rollups", "b1"]),
        expiries: await count(app.kv, ["expiries"]),
      });
    }
    const after = counts.slice(12);
    const maxRaw = Math.max(...after.map((c) => c.raw));
    const maxRollups = Math.max(...after.map((c) => c.rollups));
    // Raw: 10 minutes of 15-minute chunks; 1m: a 6 h chunk plus an hour; 1h, 1d: one or two.
    assert(maxRaw <= 3, `raw chunks stay bounded: ${JSON.stringify(counts.map((c) => c.raw))}`);
    assert(
      maxRollups <= 8,
      `rollup chunks stay bounded: ${JSON.stringify(counts.map((c) => c.rollups))}`,
    );
    for (const c of counts) {
      assertEquals(c.expiries, c.raw + c.rollups, `hour ${c.hour}: one expiry entry per chunk`);
    }
    const head = (await app.kv.get<Parameters<typeof headParts>[0]>(["twins", "b1"])).value!;
    assert(headParts(head).json.length < 30_000, "the twin record stays small");
    // What is kept is still right: every hour bucket counts its 60 points.
    const body = await getJson(
      app,
      `/api/v1/devices/b1/telemetry?${new URLSearchParams({
        metric: "power",
        bucket: "1h",
        from: String(begin),
        to: String(clock.now()),
        limit: "1000",
      })}`,
    );
    assertEquals(body.items.length, hours);
    for (const b of body.items) {
      assertEquals([b.count, b.min, b.max, b.last], [60, 0, 59, 59], `hour ${b.start}`);
    }
  } finally {
    await app.dispose();
  }
});

Deno.test("history: a kind that lists its history fields keeps history for those only", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T10:00:30.000Z"));
  const kind = defineTwin({
    kind: "meter",
    telemetry: z.object({ power: z.number(), extra: z.number().optional() }),
    desired: z.object({}),
    reported: z.object({}),
    history: ["power"],
  });
  const app = await testApp({ clock, kinds: new Map([["meter", kind]]) });
  try {
    await app.register({ id: "m4", kind: "meter" });
    const t = Date.parse("2026-11-26T09:58:10.000Z");
    await app.runtime.telemetry("m4", [
      { ts: t, power: 1, extra: 10 },
      { ts: t + 60_000, power: 2, extra: 20 },
      { ts: t + 120_000, power: 3, extra: 30 },
    ]);
    const query = (metric: string) =>
      getJson(
        app,
        `/api/v1/devices/m4/telemetry?${new URLSearchParams({
          metric,
          bucket: "1m",
          from: String(t),
          to: String(clock.now()),
        })}`,
      );
    assertEquals((await query("power")).items.map((b: { count: number }) => b.count), [1, 1, 1]);
    assertEquals((await query("extra")).items, [], "no history for a field not listed");
    // Both fields are still the twin's last values.
    const twin = await getJson(app, "/api/v1/twins/m4");
    assertEquals(twin.telemetry.last, { power: 3, extra: 30 });
    const stored = headParts(
      (await app.kv.get<Parameters<typeof headParts>[0]>(["twins", "m4"])).value!,
    );
    assert(!stored.json.includes('"extra":['), `no history kept for extra: ${stored.json}`);
  } finally {
    await app.dispose();
  }
});

Deno.test("history: a history field the telemetry schema lacks stops the kind, naming it", () => {
  let refused: unknown;
  try {
    defineTwin({
      kind: "meter",
      telemetry: z.object({ power: z.number() }),
      desired: z.object({}),
      reported: z.object({}),
      history: ["power", "voltage"],
    });
  } catch (error) {
    refused = error;
  }
  assert(refused instanceof Error, "defineTwin refuses the kind");
  assertMatch(refused.message, /history for "voltage", which its telemetry schema does not have/);
});

Deno.test("history: a record stored before history was kept packed loads with its points and open buckets", () => {
  const bucket = { start: 60_000, min: 1, max: 2, sum: 3, count: 2, last: 2, lastTs: 62_000 };
  const legacy = {
    metrics: { t: { buffer: [[61_000, 1], [62_000, 2]], open: { "1m": bucket } } },
    chunkSeq: 3,
  };
  const history = upgradeHistory(legacy as unknown as Parameters<typeof upgradeHistory>[0]);
  assertEquals(history.s, 3);
  assertEquals(metricView(history, "t"), {
    buffer: [[61_000, 1], [62_000, 2]],
    open: { "1m": bucket },
  });
});

Deno.test("history: a record stored with history as nested arrays loads with its points and open buckets", () => {
  // [buffer as t0, v0, dt1, v1; 1m, 1h and 1d buckets as start, min, max, sum, count, last, dt]
  const nested = {
    p: { t: [[61_000, 1, 1_000, 2], [60_000, 1, 2, 3, 2, 2, 2_000], 0, 0] },
    s: 4,
  };
  const history = upgradeHistory(nested as unknown as Parameters<typeof upgradeHistory>[0]);
  assertEquals(history.s, 4);
  assertEquals(metricView(history, "t"), {
    buffer: [[61_000, 1], [62_000, 2]],
    open: { "1m": { start: 60_000, min: 1, max: 2, sum: 3, count: 2, last: 2, lastTs: 62_000 } },
  });
});

Deno.test("history: an open bucket's sum that would overflow stays the largest double, the same in memory and in KV", async () => {
  const t = await testApp();
  try {
    const d = await t.register({ id: "big1", kind: "generic" });
    for (const v of [1e308, 1e308]) {
      assertEquals((await t.dev(d, "POST", "/device/v1/telemetry", { v })).status, 202);
    }
    const inMemory = t.runtime.peek("big1")!.state!.history;
    const stored = (await loadTwin(t.kv, "big1"))!.state.history;
    assertEquals(metricView(stored, "v")?.open["1m"]?.sum, Number.MAX_VALUE);
    assertEquals(metricView(inMemory, "v"), metricView(stored, "v"));
  } finally {
    await t.dispose();
  }
});

/** Every item of a query, page by page with `limit`. */
async function allItems(app: TestApp, id: string, query: Record<string, string>): Promise<Json[]> {
  const items: Json[] = [];
  let cursor: string | null = null;
  do {
    const params = new URLSearchParams({ ...query, ...(cursor ? { cursor } : {}) });
    const res = await app.op("GET", `/api/v1/devices/${id}/telemetry?${params}`);
    const page = await res.json();
    assertEquals(res.status, 200, JSON.stringify(page));
    items.push(...page.items);
    cursor = page.cursor;
  } while (cursor);
  return items;
}

Deno.test("history: points stamped with fractions of a millisecond are all paged through", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T10:00:00Z"));
  const app = await testApp({ clock, kinds: meterKind() });
  try {
    await app.register({ id: "frac", kind: "meter" });
    const t = clock.now() - MIN;
    const batch = [0.25, 0.75, 1.5, 2.0].map((dt, i) => ({ ts: t + dt, power: i + 1 }));
    await app.runtime.telemetry("frac", batch);
    const range = { metric: "power", from: String(t - 1000), to: String(t + 1000) };
    const paged = await allItems(app, "frac", { ...range, limit: "1" });
    assertEquals(paged.map((p) => p.value), [1, 2, 3, 4]);
  } finally {
    await app.dispose();
  }
});

Deno.test("history: a late point merged into a stored bucket keeps its average finite", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T10:00:00Z"));
  const app = await testApp({ clock, kinds: meterKind() });
  try {
    await app.register({ id: "ovf", kind: "meter" });
    const t = clock.now();
    await app.runtime.telemetry("ovf", [{ ts: t, power: 1e308 }, { ts: t + 1, power: 1e308 }]);
    clock.advance(MIN);
    await app.runtime.telemetry("ovf", [{ ts: t + MIN, power: 1 }]); // closes minute 0
    await app.runtime.telemetry("ovf", [{ ts: t + 2, power: 1e308 }]); // late, into minute 0
    const query = { metric: "power", from: String(t), to: String(t + MIN), bucket: "1m" };
    const [bucket] = await allItems(app, "ovf", query);
    assertEquals(bucket.count, 3);
    assert(Number.isFinite(bucket.avg), `avg ${bucket.avg}`);
  } finally {
    await app.dispose();
  }
});

Deno.test("history retention: a bucket past its level's retention is not served, though its chunk is still kept", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T00:00:00.000Z"));
  const app = await testApp({ clock, kinds: meterKind({ "1m": "1h" }) });
  try {
    await app.register({ id: "r5", kind: "meter" });
    const start = clock.now();
    for (let i = 0; i < 10; i++) {
      await app.runtime.telemetry("r5", [{ ts: clock.now(), power: i }]);
      clock.advance(MIN);
    }
    // Three hours on: the minutes ended over an hour ago, though their chunk (6 h) is not due.
    clock.advance(3 * HOUR);
    await app.runtime.telemetry("r5", [{ ts: clock.now(), power: 99 }]);
    await app.runtime.sweepExpired();
    assert((await count(app.kv, ["rollups", "r5", "power", "1m"])) > 0, "the chunk is kept");
    const params = new URLSearchParams({
      metric: "power",
      bucket: "1m",
      from: String(start),
      to: String(clock.now()),
    });
    const minutes = (await getJson(app, `/api/v1/devices/r5/telemetry?${params}`)).items;
    assertEquals(minutes.map((b: Json) => b.count), [1], "only the minute within the hour");
  } finally {
    await app.dispose();
  }
});

Deno.test("history: a raw page reads the chunks it needs, not the whole range", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T00:00:00.000Z"));
  let listed = 0;
  const kv = await Deno.openKv(":memory:");
  const counting = new Proxy(kv, {
    get(target, name) {
      if (name !== "list") {
        const value = Reflect.get(target, name, target);
        return typeof value === "function" ? value.bind(target) : value;
      }
      return (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
        const inner = target.list(selector, options);
        return (async function* () {
          for await (const entry of inner) {
            if (entry.key[0] === "telemetry") listed++;
            yield entry;
          }
        })();
      };
    },
  });
  const app = await testApp({ clock, kinds: meterKind(), kv: counting });
  try {
    await app.register({ id: "r6", kind: "meter" });
    // 2,000 points, 10 s apart, sent now as a backlog: 100 raw chunks.
    const start = clock.now() - 2000 * 10_000;
    for (let i = 0; i < 100; i++) {
      const items = Array.from(
        { length: 20 },
        (_, j) => ({ ts: start + (i * 20 + j) * 10_000, power: i * 20 + j }),
      );
      await app.runtime.telemetry("r6", items);
    }
    const query = { metric: "power", from: String(start), to: String(clock.now()) };
    listed = 0;
    const first = await getJson(
      app,
      `/api/v1/devices/r6/telemetry?${new URLSearchParams({ ...query, limit: "5" })}`,
    );
    assertEquals(first.items.map((p: Json) => p.value), [0, 1, 2, 3, 4]);
    assert(listed <= 3, `read ${listed} chunks for one page of 5`);
    // Paged through in pages of 7, every point comes once, in order.
    const all = await allItems(app, "r6", { ...query, limit: "7" });
    assertEquals(all.map((p: Json) => p.value), Array.from({ length: 2000 }, (_, i) => i));
  } finally {
    await app.dispose(); // Closes the KV too.
  }
});
