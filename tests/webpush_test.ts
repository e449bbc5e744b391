/**
 * Web push to a real receiver: the test subscribes as a browser would (a P-256 key pair and an
 * auth secret made with WebCrypto), serves the push endpoint on a local port, and decrypts the
 * aes128gcm body it receives (RFC 8291 / RFC 8188) to find the alarm; it checks the VAPID
 * signature too. Gone subscriptions (410) are removed, and a push endpoint that fails or hangs
 * never holds up a twin.
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import { type TestApp, testApp } from "./helpers.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

const encoder = new TextEncoder();

function b64url(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_")
    .replace(/=+$/, "");
}

function fromB64url(text: string): Uint8Array<ArrayBuffer> {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "=".repeat((4 - b64.length % 4) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** What a browser keeps for one push subscription. */
interface BrowserKeys {
  privateKey: CryptoKey;
  publicRaw: Uint8Array<ArrayBuffer>;
  auth: Uint8Array<ArrayBuffer>;
  /** As `PushSubscription.toJSON().keys`. */
  json: { p256dh: string; auth: string };
}

/** Makes subscription keys the way a browser does. */
async function browserKeys(): Promise<BrowserKeys> {
  const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
    "deriveBits",
  ]);
  const publicRaw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const auth = crypto.getRandomValues(new Uint8Array(16));
  return {
    privateKey: pair.privateKey,
    publicRaw,
    auth,
    json: { p256dh: b64url(publicRaw), auth: b64url(auth) },
  };
}

async function hkdf(
  salt: Uint8Array<ArrayBuffer>,
  ikm: Uint8Array<ArrayBuffer>,
  info: Uint8Array<ArrayBuffer>,
  bytes: number,
): Promise<Uint8Array<ArrayBuffer>> {
  const key = await crypto.subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(
    await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, key, bytes * 8),
  );
}

/** Decrypts an aes128gcm push message body (RFC 8291 over RFC 8188) as the browser would. */
async function decryptPush(body: Uint8Array<ArrayBuffer>, keys: BrowserKeys): Promise<string> {
  const salt = body.slice(0, 16);
  const rs = new DataView(body.buffer, body.byteOffset + 16, 4).getUint32(0);
  const idlen = body[20];
  assertEquals(idlen, 65, "the keyid is the sender's uncompressed P-256 public key");
  const senderPublic = body.slice(21, 21 + idlen);
  const record = body.slice(21 + idlen);
  assert(record.length <= rs, "one record");
  const sender = await crypto.subtle.importKey(
    "raw",
    senderPublic,
    { name: "ECDH", namedCurve: "P-256" },
    false,
    [],
  );
  const ecdh = new Uint8Array(
    await crypto.subtle.deriveBits({ name: "ECDH", public: sender }, keys.privateKey, 256),
  );
  const ikm = await hkdf(
    keys.auth,
    ecdh,
    concat(encoder.encode("WebPush: info\0"), keys.publicRaw, senderPublic),
    32,
  );
  const cek = await hkdf(salt, ikm, encoder.encode("Content-Encoding: aes128gcm\0"), 16);
  const nonce = await hkdf(salt, ikm, encoder.encode("Content-Encoding: nonce\0"), 12);
  const key = await crypto.subtle.importKey("raw", cek, "AES-GCM", false, ["decrypt"]);
  const padded = new Uint8Array(
    await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce }, key, record),
  );
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end--;
  assertEquals(padded[end], 2, "the last record ends with delimiter 0x02");
  return new TextDecoder().decode(padded.slice(0, end));
}

/** Checks the VAPID `Authorization: vapid t=<JWT>, k=<key>` header; returns the JWT claims. */
async function verifyVapid(header: string, publicKey: string): Promise<Json> {
  const match = /^vapid t=([^,\s]+),\s*k=([^,\s]+)$/.exec(header);
  assert(match, `VAPID authorization header: ${header}`);
  assertEquals(match[2], publicKey, "k is the server's VAPID public key");
  const [head, claims, signature] = match[1].split(".");
  const key = await crypto.subtle.importKey(
    "raw",
    fromB64url(publicKey),
    { name: "ECDSA", namedCurve: "P-256" },
    false,
    ["verify"],
  );
  const valid = await crypto.subtle.verify(
    { name: "ECDSA", hash: "SHA-256" },
    key,
    fromB64url(signature),
    encoder.encode(`${head}.${claims}`),
  );
  assert(valid, "the JWT is signed with the VAPID key");
  assertEquals(JSON.parse(new TextDecoder().decode(fromB64url(head))).alg, "ES256");
  return JSON.parse(new TextDecoder().decode(fromB64url(claims)));
}

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
