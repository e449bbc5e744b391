/**
 * Web push to a real receiver: the test subscribes as a browser would (a P-256 key pair and an
 * auth secret made with WebCrypto), serves the push endpoint on a local port, and decrypts the
 * aes128gcm body it receives (RFC 8291 / RFC 8188) to find the alarm; it checks the VAPID
 * signature too. Gone subscriptions (410) are removed, and a push endpoint that fails or hangs
 * never holds up a twin.
 * @module
 */
import { expectInvalid } from "./api_assertions.ts";
import { createApp } from "../src/app.ts";
import { silentLogger } from "../src/log.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { ADMIN_TOKEN, KINDS, type TestApp, testApp } from "./helpers.ts";
import {
  type BrowserKeys,
  browserKeys,
  decryptPush,
  fromB64url,
  verifyVapid,
} from "./push_receiver.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

/** One request a push endpoint received. */
interface PushRequest {
  path: string;
  headers: Headers;
  body: Uint8Array<ArrayBuffer>;
}

/**
 * A push service on a local port: records every request and answers by path (`/gone…` 410,
 * `/hang…` only once released, otherwise 201).
 */
class PushReceiver {
  readonly received: PushRequest[] = [];
  readonly server: Deno.HttpServer<Deno.NetAddr>;
  #release!: () => void;
  readonly #released = new Promise<void>((resolve) => this.#release = resolve);
  #waiters = new Set<() => void>();

  constructor() {
    this.server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
      const path = new URL(req.url).pathname;
      const body = new Uint8Array(await req.arrayBuffer());
      this.received.push({ path, headers: req.headers, body });
      for (const waiter of [...this.#waiters]) waiter();
      if (path.startsWith("/gone")) return new Response("gone", { status: 410 });
      if (path.startsWith("/hang")) await this.#released;
      return new Response(null, { status: 201 });
    });
  }

  get origin(): string {
    return `http://127.0.0.1:${this.server.addr.port}`;
  }

  on(path: string): PushRequest[] {
    return this.received.filter((r) => r.path === path);
  }

  /** Waits (event-driven, bounded) for a request on `path`. */
  async next(path: string, timeoutMs = 5_000): Promise<PushRequest> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let waiter: (() => void) | undefined;
    try {
      return await new Promise<PushRequest>((resolve, reject) => {
        waiter = () => {
          const found = this.on(path)[0];
          if (found) resolve(found);
        };
        this.#waiters.add(waiter);
        timer = setTimeout(() => reject(new Error(`no push on ${path}`)), timeoutMs);
        waiter();
      });
    } finally {
      clearTimeout(timer);
      if (waiter) this.#waiters.delete(waiter);
    }
  }

  release(): void {
    this.#release();
  }

  async close(): Promise<void> {
    this.#release();
    await this.server.shutdown();
    await this.server.finished;
  }
}

async function subscribe(
  app: TestApp,
  endpoint: string,
  keys: BrowserKeys,
  severities?: string[],
): Promise<string> {
  const res = await app.op("POST", "/api/v1/push/subscriptions", {
    endpoint,
    keys: keys.json,
    expirationTime: null,
    ...(severities ? { severities } : {}),
  });
  const body = await res.json();
  assertEquals(res.status, 201, JSON.stringify(body));
  return body.id;
}

/** Hot readings (34 °C) every 10 s of device time from `fromS` to `toS` seconds ago. */
function hotReadings(fromS = 40, toS = 0): Array<{ ts: number; temperature: number }> {
  const now = Date.now();
  const out = [];
  for (let s = fromS; s >= toS; s -= 10) out.push({ ts: now - s * 1000, temperature: 34 });
  return out;
}

Deno.test("web push: a major alarm reaches a real receiver, encrypted (aes128gcm) and VAPID-signed", async () => {
  const receiver = new PushReceiver();
  const app = await testApp();
  try {
    const keys = await browserKeys();
    const criticalOnly = await browserKeys();
    const vapid = await (await app.op("GET", "/api/v1/push/vapid-public-key")).json();
    assertEquals(fromB64url(vapid.publicKey).length, 65, "an uncompressed P-256 public key");
    const subId = await subscribe(app, `${receiver.origin}/push/abc`, keys);
    await subscribe(app, `${receiver.origin}/push/critical`, criticalOnly, ["critical"]);
    const listed = await (await app.op("GET", "/api/v1/push/subscriptions")).json();
    assertEquals(
      listed.items.map((s: Json) => [s.endpoint, s.severities]).sort(),
      [
        [`${receiver.origin}/push/abc`, null],
        [`${receiver.origin}/push/critical`, ["critical"]],
      ],
    );
    assert(listed.items.some((s: Json) => s.id === subId));

    const t = await app.register({ id: "t1", kind: "thermostat" });
    // Hot for 20 s of device time, not yet 30: no alarm, no push.
    const early = hotReadings(60, 40);
    assertEquals((await app.dev(t, "POST", "/device/v1/telemetry", early)).status, 202);
    await app.push.drain();
    assertEquals(receiver.received.length, 0, "nothing pushed before the alarm");
    // Hot on until 60 s: the overheat alarm (major) is raised and pushed.
    const res = await app.dev(t, "POST", "/device/v1/telemetry", hotReadings(30, 0));
    assertEquals(res.status, 202);
    await app.push.drain();
    const [push] = receiver.on("/push/abc");
    assert(push, `a push arrived: ${JSON.stringify(receiver.received.map((r) => r.path))}`);
    assertEquals(receiver.on("/push/abc").length, 1, "pushed once");
    assertEquals(receiver.on("/push/critical").length, 0, "not to a critical-only subscription");
    assertEquals(push.headers.get("content-encoding"), "aes128gcm");
    assertEquals(push.headers.get("urgency"), "high");
    assert(Number(push.headers.get("ttl")) > 0, "a TTL");
    const claims = await verifyVapid(push.headers.get("authorization") ?? "", vapid.publicKey);
    assertEquals(claims.aud, receiver.origin, "aud is the push service's origin");
    assert(claims.exp * 1000 > Date.now(), "not expired");
    assert(/^(mailto:|https:)/.test(claims.sub), `sub ${claims.sub}`);

    const payload = JSON.parse(await decryptPush(push.body, keys));
    const [alarm] = (await (await app.op("GET", "/api/v1/alarms?device=t1")).json()).items;
    assertEquals(payload.alarm.id, alarm.id);
    assertEquals(
      [payload.alarm.type, payload.alarm.severity, payload.alarm.deviceId, payload.alarm.state],
      ["overheat", "major", "t1", "active"],
    );
    assert(String(payload.title).includes("overheat"), payload.title);
    assertEquals(app.push.stats.sent, 1);

    // More hot readings repeat the open alarm: no second push.
    await app.dev(t, "POST", "/device/v1/telemetry", { temperature: 35 });
    await app.push.drain();
    assertEquals(receiver.on("/push/abc").length, 1, "a repeat is not pushed again");
  } finally {
    receiver.release(); // a hanging push must not hold up the app's close
    await app.dispose();
    await receiver.close();
  }
});

Deno.test("web push: a subscription whose endpoint answers 410 is removed", async () => {
  const receiver = new PushReceiver();
  const app = await testApp();
  try {
    await subscribe(app, `${receiver.origin}/gone/1`, await browserKeys());
    const kept = await subscribe(app, `${receiver.origin}/push/ok`, await browserKeys());
    const t = await app.register({ id: "t2", kind: "thermostat" });
    assertEquals((await app.dev(t, "POST", "/device/v1/telemetry", hotReadings())).status, 202);
    await app.push.drain();
    assertEquals(receiver.on("/gone/1").length, 1, "the gone endpoint was tried");
    assertEquals(receiver.on("/push/ok").length, 1);
    const listed = await (await app.op("GET", "/api/v1/push/subscriptions")).json();
    assertEquals(listed.items.map((s: Json) => s.id), [kept], "only the live subscription is left");
    assertEquals(app.push.stats.removed, 1);
  } finally {
    receiver.release(); // a hanging push must not hold up the app's close
    await app.dispose();
    await receiver.close();
  }
});

Deno.test("web push: a subscription with keys nothing can be encrypted to is refused, naming them", async () => {
  const app = await testApp();
  try {
    const good = (await browserKeys()).json;
    for (
      const [keys, field] of [
        [{ ...good, p256dh: "x" }, "keys.p256dh"],
        [{ ...good, p256dh: good.auth }, "keys.p256dh"],
        [{ ...good, auth: "not base64url!" }, "keys.auth"],
      ] as const
    ) {
      const res = await app.op("POST", "/api/v1/push/subscriptions", {
        endpoint: "https://push.example/x",
        keys,
      });
      await expectInvalid(res, field);
    }
    const listed = await (await app.op("GET", "/api/v1/push/subscriptions")).json();
    assertEquals(listed.items, []);
  } finally {
    await app.dispose();
  }
});

Deno.test("web push: an endpoint that hangs or refuses never delays the twin", async () => {
  const receiver = new PushReceiver();
  // A port nothing listens on: connection refused.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = listener.addr.port;
  listener.close();
  const app = await testApp();
  try {
    await subscribe(app, `${receiver.origin}/hang/1`, await browserKeys());
    await subscribe(app, `http://127.0.0.1:${deadPort}/push/x`, await browserKeys());
    const t = await app.register({ id: "t3", kind: "thermostat" });
    const started = performance.now();
    const res = await app.dev(t, "POST", "/device/v1/telemetry", hotReadings());
    const took = performance.now() - started;
    assertEquals(res.status, 202);
    assert(took < 1_000, `telemetry took ${took.toFixed(0)} ms`);
    // The push is under way and hanging…
    await receiver.next("/hang/1");
    // …while the twin goes on: more telemetry, the alarm, a command, all at once.
    const again = performance.now();
    assertEquals(
      (await app.dev(t, "POST", "/device/v1/telemetry", { temperature: 20 })).status,
      202,
    );
    const alarms = (await (await app.op("GET", "/api/v1/alarms?device=t3")).json()).items;
    assertEquals(alarms.map((a: Json) => [a.type, a.state]), [["overheat", "active"]]);
    const commands = (await (await app.op("GET", "/api/v1/devices/t3/commands")).json()).items;
    assertEquals(commands.map((c: Json) => c.name), ["cool"], "the rule's cool command");
    assert(performance.now() - again < 1_000, "the twin answered while the push hung");
    // The hanging push finishes once its endpoint answers; the refused one was counted failed.
    receiver.release();
    await app.push.drain();
    assertEquals(app.push.stats.sent, 1);
    assertEquals(app.push.stats.failed, 1);
    const listed = await (await app.op("GET", "/api/v1/push/subscriptions")).json();
    assertEquals(listed.items.length, 2, "a failed push does not remove its subscription");
  } finally {
    receiver.release(); // a hanging push must not hold up the app's close
    await app.dispose();
    await receiver.close();
  }
});

Deno.test("web push: a VAPID subject push services would refuse stops start-up, naming it", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const error = await assertRejects(() =>
      createApp({
        kv,
        clock: { now: () => Date.now() },
        kinds: KINDS,
        secret: "test-secret-0123456789abcdef",
        adminToken: ADMIN_TOKEN,
        logger: silentLogger,
        push: { vapid: { subject: "operators@example.com" } },
      })
    );
    assert(String(error).includes('"operators@example.com"'), String(error));
  } finally {
    kv.close();
  }
});

Deno.test("web push: a subscription may not point Doppel at plain http beyond this machine (a cloud's metadata address, say)", async () => {
  const app = await testApp();
  try {
    const keys = await browserKeys();
    for (const endpoint of ["http://169.254.169.254/latest/meta-data", "http://10.0.0.5/push"]) {
      const res = await app.op("POST", "/api/v1/push/subscriptions", { endpoint, keys: keys.json });
      const body = await res.json();
      assertEquals([res.status, body.error.details.fields[0].field], [400, "endpoint"], endpoint);
    }
    assertEquals((await (await app.op("GET", "/api/v1/push/subscriptions")).json()).items, []);
  } finally {
    await app.dispose();
  }
});
