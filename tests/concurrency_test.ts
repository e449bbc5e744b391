/**
 * Two runtimes on one KV file, each with its own `Deno.openKv` handle, as two server processes
 * on one store would be: both hammer the same few twins with desired and reported patches at
 * once. No update may be lost, and versions must go up by exactly one per applied patch.
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import { type TestApp, testApp } from "./helpers.ts";

/** Twins both runtimes write to. */
const TWINS = 5;
/** Desired patches, and as many reported patches, per twin from each runtime. */
const PATCHES = 25;

/** Commit outcomes seen through one KV handle. */
interface Contention {
  committed: number;
  conflicts: number;
  locked: number;
}

/** Wraps a KV handle to count commits, check failures and thrown commits (`database is locked`). */
function counting(kv: Deno.Kv, seen: Contention): Deno.Kv {
  return new Proxy(kv, {
    get(target, property) {
      if (property === "atomic") {
        return () => {
          const atomic = target.atomic();
          const commit = atomic.commit.bind(atomic);
          atomic.commit = async () => {
            try {
              const result = await commit();
              if (result.ok) seen.committed++;
              else seen.conflicts++;
              return result;
            } catch (error) {
              seen.locked++;
              throw error;
            }
          };
          return atomic;
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** One patch as sent: which twin, which part and property, and the reply. */
interface Sent {
  twin: string;
  part: "desired" | "reported";
  property: string;
  status: number;
  version?: number;
  body: unknown;
}

async function desiredPatch(app: TestApp, twin: string, property: string): Promise<Sent> {
  const res = await app.op("PATCH", `/api/v1/twins/${twin}/desired`, { [property]: property });
  const body = await res.json();
  return { twin, part: "desired", property, status: res.status, version: body.version, body };
}

async function reportedPatch(
  app: TestApp,
  device: { id: string; key: string },
  property: string,
): Promise<Sent> {
  const res = await app.dev(device, "PATCH", "/device/v1/twin/reported", {
    [property]: property,
  });
  const body = await res.json();
  return {
    twin: device.id,
    part: "reported",
    property,
    status: res.status,
    version: body.version,
    body,
  };
}

/** Two apps on one fresh KV file (a handle each) with TWINS generic devices; cleans up after. */
async function withTwoRuntimes(
  body: (
    a: TestApp,
    b: TestApp,
    devices: Array<{ id: string; key: string }>,
    contention: Contention,
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "doppel_concurrency_test_" });
  const path = `${dir}/doppel.kv`;
  const apps: TestApp[] = [];
  const contention: Contention = { committed: 0, conflicts: 0, locked: 0 };
  try {
    for (let i = 0; i < 2; i++) {
      const kv = await Deno.openKv(path);
      try {
        apps.push(await testApp({ kv: counting(kv, contention) }));
      } catch (error) {
        kv.close();
        throw error;
      }
    }
    const [a, b] = apps;
    const devices: Array<{ id: string; key: string }> = [];
    for (let i = 0; i < TWINS; i++) {
      devices.push(await (i % 2 === 0 ? a : b).register({ id: `c${i}`, kind: "generic" }));
    }
    for (const device of devices) {
      const twin = await (await b.op("GET", `/api/v1/twins/${device.id}`)).json();
      assertEquals(twin.version, 1, `${device.id} starts at version 1`);
    }
    await body(a, b, devices, contention);
    assert(apps.every((app) => app.runtime.activations > 0), "both runtimes did the work");
  } finally {
    for (const app of apps) await app.dispose();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("two runtimes on one KV file: no lost update, one version per patch", async () => {
  await withTwoRuntimes(async (a, b, devices, contention) => {
    const apps = [a, b];

    // Each (runtime, twin, part) is a sender of PATCHES patches one after another, each setting
    // its own property; all senders run at once, so both runtimes keep contending for every
    // twin with small turns (one big batch each would hardly conflict).
    const sent: Sent[] = [];
    const senders: Promise<void>[] = [];
    for (const device of devices) {
      for (const [name, app] of [["a", a], ["b", b]] as const) {
        senders.push((async () => {
          for (let i = 0; i < PATCHES; i++) {
            sent.push(await desiredPatch(app, device.id, `${name}_d${i}`));
          }
        })());
        senders.push((async () => {
          for (let i = 0; i < PATCHES; i++) {
            sent.push(await reportedPatch(app, device, `${name}_r${i}`));
          }
        })());
      }
    }
    await Promise.all(senders);

    const failed = sent.filter((s) => s.status !== 200);
    assertEquals(
      failed.map((s) => `${s.twin} ${s.part} ${s.property}: ${s.status} ${JSON.stringify(s.body)}`),
      [],
      "every patch succeeded",
    );

    for (const device of devices) {
      const mine = sent.filter((s) => s.twin === device.id);
      assertEquals(mine.length, 4 * PATCHES);
      // Versions in replies: one per patch, distinct, exactly 2 .. 1 + patches.
      const versions = mine.map((s) => s.version).sort((x, y) => x! - y!);
      assertEquals(
        versions,
        Array.from({ length: mine.length }, (_, i) => i + 2),
        `${device.id}: reply versions are distinct and consecutive`,
      );

      // Read back through each runtime (both read KV): nothing lost, one version per patch.
      for (const app of apps) {
        const res = await app.op("GET", `/api/v1/twins/${device.id}`);
        const twin = await res.json();
        assertEquals(res.status, 200);
        assertEquals(twin.version, 1 + mine.length, `${device.id}: final version`);
        assertEquals(res.headers.get("etag"), `"${twin.version}"`);
        const lost = mine.filter((s) => twin[s.part][s.property] !== s.property);
        assertEquals(lost.map((s) => `${s.part}.${s.property}`), [], `${device.id}: lost updates`);
        assertEquals(
          Object.keys(twin.desired).length + Object.keys(twin.reported).length,
          mine.length,
          `${device.id}: nothing but the patched properties`,
        );
        // Each property's metadata names the version its patch replied with.
        for (const s of mine) {
          assertEquals(
            twin.metadata[s.part][s.property]?.version,
            s.version,
            `${device.id}: metadata version of ${s.part}.${s.property}`,
          );
        }
      }

      // Both runtimes go on from the stored version, whichever wrote last.
      const next = await desiredPatch(a, device.id, "after_a");
      assertEquals([next.status, next.version], [200, 2 + mine.length]);
      const last = await reportedPatch(b, device, "after_b");
      assertEquals([last.status, last.version], [200, 3 + mine.length]);
    }
    // Last, so that a failure of correctness is what gets reported.
    assert(
      contention.conflicts + contention.locked > 0,
      `the runtimes never contended (${JSON.stringify(contention)}): the test proves nothing`,
    );
  });
});

Deno.test("two runtimes on one KV file: a telemetry id sent to both is applied once", async () => {
  await withTwoRuntimes(async (a, b, devices, contention) => {
    const IDS = 60;
    // Both runtimes send every id of every twin, one request after another per (runtime, twin),
    // b in the reverse order of a so they meet in the middle.
    const replies: Array<{ twin: string; id: string; status: number; body: unknown }> = [];
    await Promise.all(
      devices.flatMap((device) =>
        ([[a, false], [b, true]] as const).map(async ([app, reverse]) => {
          for (let n = 0; n < IDS; n++) {
            const id = `m${reverse ? IDS - 1 - n : n}`;
            const res = await app.dev(device, "POST", "/device/v1/telemetry", { id, value: n });
            replies.push({ twin: device.id, id, status: res.status, body: await res.json() });
          }
        })
      ),
    );
    const bad = replies.filter((r) => r.status !== 202);
    assertEquals(bad, [], "every telemetry post was accepted");
    for (const device of devices) {
      for (let n = 0; n < IDS; n++) {
        const mine = replies.filter((r) => r.twin === device.id && r.id === `m${n}`);
        assertEquals(
          mine.map((r) => r.body as { accepted: number; duplicates: number })
            .map((body) => body.accepted).sort(),
          [0, 1],
          `${device.id} m${n}: applied by exactly one runtime (${JSON.stringify(mine)})`,
        );
      }
    }
    // Last, so that a failure of correctness is what gets reported.
    assert(
      contention.conflicts + contention.locked > 0,
      `the runtimes never contended (${JSON.stringify(contention)}): the test proves nothing`,
    );
  });
});
