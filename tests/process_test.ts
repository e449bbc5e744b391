/**
 * Crash test of the real server process: telemetry with message ids is streamed over HTTP from
 * several concurrent senders, the process is killed with SIGKILL mid-stream and restarted on the
 * same KV file, and every message acknowledged with a 202 must have been applied exactly once.
 * @module
 */
import { COUNTER_KIND, DoppelProcess, ROOT } from "./real_process.ts";
import { serverArgs } from "./bench/common.ts";
import { assert, assertEquals } from "./assert.ts";

const TOKEN = "process-test-admin-token-0123456789";
/** Messages in all (desired holds one `mN` key per message: keep it well under 32 KiB). */
const TOTAL = 1200;
/** Acknowledged messages after which the server is killed. */
const KILL_AFTER = 300;
/** Concurrent senders. */
const SENDERS = 8;

/** What one HTTP telemetry post came to. */
type Outcome =
  | { kind: "accepted"; body: { accepted: number; duplicates: number } }
  | { kind: "status"; status: number; text: string }
  | { kind: "failed"; error: string };

async function postTelemetry(
  base: string,
  auth: string,
  seq: number,
): Promise<Outcome> {
  try {
    const res = await fetch(`${base}/device/v1/telemetry`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: auth },
      body: JSON.stringify({ id: `m${seq}`, seq }),
    });
    if (res.status === 202) return { kind: "accepted", body: await res.json() };
    return { kind: "status", status: res.status, text: await res.text() };
  } catch (error) {
    return { kind: "failed", error: String(error) };
  }
}

async function readDesired(base: string, id: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${base}/api/v1/twins/${id}`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  const body = await res.json();
  assertEquals(res.status, 200, `GET twin: ${JSON.stringify(body)}`);
  return body.desired;
}

/** The `mN` keys of desired as numbers, and `n`. */
function applied(desired: Record<string, unknown>): { seqs: Set<number>; n: number } {
  const seqs = new Set<number>();
  for (const key of Object.keys(desired)) {
    const match = /^m(\d+)$/.exec(key);
    if (match) seqs.add(Number(match[1]));
  }
  return { seqs, n: typeof desired.n === "number" ? desired.n : 0 };
}

/** Runs `send` over seqs from `queue` with `senders` concurrent workers until `stop()` is true. */
async function stream(
  queue: number[],
  senders: number,
  send: (seq: number) => Promise<void>,
  stop: () => boolean = () => false,
): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: senders }, async () => {
    while (!stop() && next < queue.length) await send(queue[next++]);
  }));
}

/**
 * Runs `fn` with a temp folder holding the counter kind, a way to start servers on one KV file
 * there (all stopped afterwards), and a way to register a counter device (its Basic auth).
 */
async function withCounterServers(
  fn: (
    start: () => Promise<DoppelProcess>,
    register: (base: string, id: string) => Promise<string>,
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "doppel_process_test_" });
  const servers: DoppelProcess[] = [];
  const start = async () => {
    const server = await DoppelProcess.start({
      MQTT_PORT: "0",
      DOPPEL_KV: `${dir}/data/doppel.kv`,
      DOPPEL_TWINS: `${dir}/kinds`,
      DOPPEL_ADMIN_TOKEN: TOKEN,
    });
    servers.push(server);
    return server;
  };
  const register = async (base: string, id: string) => {
    const reg = await fetch(`${base}/api/v1/devices`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify({ id, kind: "counter" }),
    });
    const device = await reg.json();
    assertEquals(reg.status, 201, `register: ${JSON.stringify(device)}`);
    return `Basic ${btoa(`${id}:${device.key}`)}`;
  };
  try {
    await Deno.mkdir(`${dir}/kinds`);
    await Deno.writeTextFile(`${dir}/kinds/counter.ts`, COUNTER_KIND);
    await fn(start, register);
  } finally {
    for (const server of servers) await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("SIGKILL mid-stream: every acknowledged telemetry message is applied exactly once", async () => {
  await withCounterServers(async (start, register) => {
    // First run: register, then stream until KILL_AFTER messages are acknowledged, and kill.
    let server = await start();
    const auth = await register(server.base, "c1");

    const seqs = Array.from({ length: TOTAL }, (_, i) => i + 1);
    const acked = new Set<number>();
    const refused: string[] = [];
    const run: { killed: Promise<Deno.CommandStatus> | null } = { killed: null };
    const first = server;
    await stream(seqs, SENDERS, async (seq) => {
      const outcome = await postTelemetry(first.base, auth, seq);
      if (outcome.kind === "accepted") {
        assertEquals(outcome.body, { accepted: 1, duplicates: 0 }, `m${seq} on first run`);
        acked.add(seq);
        if (acked.size >= KILL_AFTER && run.killed === null) run.killed = first.stop();
      } else if (outcome.kind === "status" && run.killed === null) {
        refused.push(`m${seq}: ${outcome.status} ${outcome.text}`);
      }
    }, () => run.killed !== null);
    assert(run.killed !== null, `the stream ended before ${KILL_AFTER} acks (${acked.size})`);
    const status = await run.killed;
    assertEquals(status.signal, "SIGKILL", "the first server was killed, not exited");
    assertEquals(refused, [], "no telemetry was refused before the kill");

    // Second run on the same KV: acked messages are there exactly once.
    server = await start();
    const afterCrash = applied(await readDesired(server.base, "c1"));
    const missing = [...acked].filter((seq) => !afterCrash.seqs.has(seq));
    assertEquals(missing, [], "every acknowledged message survived the crash");
    assertEquals(
      afterCrash.n,
      afterCrash.seqs.size,
      "desired.n equals the distinct messages applied (none applied twice)",
    );
    for (const seq of afterCrash.seqs) assert(seq >= 1 && seq <= TOTAL, `m${seq} was never sent`);

    // Resend everything with the same ids: applied ones are duplicates, the rest apply once.
    const wrong: string[] = [];
    await stream(seqs, SENDERS, async (seq) => {
      const outcome = await postTelemetry(server.base, auth, seq);
      const expected = afterCrash.seqs.has(seq)
        ? { accepted: 0, duplicates: 1 }
        : { accepted: 1, duplicates: 0 };
      if (outcome.kind !== "accepted") {
        wrong.push(`m${seq}: ${JSON.stringify(outcome)}`);
      } else if (JSON.stringify(outcome.body) !== JSON.stringify(expected)) {
        wrong.push(
          `m${seq}: got ${JSON.stringify(outcome.body)}, want ${JSON.stringify(expected)}`,
        );
      }
    });
    assertEquals(wrong, [], "resends answer duplicate exactly for the messages already applied");
    const resent = applied(await readDesired(server.base, "c1"));
    assertEquals(resent.seqs.size, TOTAL, "every message is applied after the resend");
    assertEquals(resent.n, TOTAL, "and each exactly once");

    // Kill again without warning: what the second run acknowledged is durable too.
    const second = await server.stop();
    assertEquals(second.signal, "SIGKILL");
    server = await start();
    const final = applied(await readDesired(server.base, "c1"));
    assertEquals(final.seqs.size, TOTAL, "everything acknowledged survives a second crash");
    assertEquals(final.n, TOTAL, "and is still applied exactly once");
    assertEquals(await postTelemetry(server.base, auth, 1), {
      kind: "accepted",
      body: { accepted: 0, duplicates: 1 },
    });
  });
});

Deno.test("SIGTERM mid-stream: the server exits cleanly, and every message it applied was answered 202", async () => {
  await withCounterServers(async (start, register) => {
    const first = await start();
    const auth = await register(first.base, "c2");
    const acked = new Set<number>();
    const run: { stopped: Promise<Deno.CommandStatus> | null } = { stopped: null };
    await stream(Array.from({ length: TOTAL }, (_, i) => i + 1), SENDERS, async (seq) => {
      const outcome = await postTelemetry(first.base, auth, seq);
      if (outcome.kind === "accepted") {
        acked.add(seq);
        if (acked.size >= KILL_AFTER && run.stopped === null) run.stopped = first.stop("SIGTERM");
      }
    }, () => run.stopped !== null && acked.size >= KILL_AFTER + 200);
    assert(run.stopped !== null, `the stream ended before ${KILL_AFTER} acks (${acked.size})`);
    const status = await run.stopped;
    assertEquals(status.code, 0, "the server exited cleanly on SIGTERM");

    // Whatever the server committed, it answered: requests under way were let finish.
    const server = await start();
    const after = applied(await readDesired(server.base, "c2"));
    const unanswered = [...after.seqs].filter((seq) => !acked.has(seq));
    assertEquals(unanswered, [], "applied but never answered 202");
    assertEquals([...acked].filter((seq) => !after.seqs.has(seq)), [], "answered but not applied");
  });
});

Deno.test("start-up refuses bad settings with a message naming them, and never prints the broker password", async () => {
  const dir = await Deno.makeTempDir({ prefix: "doppel_process_test_" });
  const startWith = async (env: Record<string, string>) => {
    const output = await new Deno.Command(Deno.execPath(), {
      args: serverArgs(),
      cwd: ROOT,
      env: { PORT: "0", MQTT_PORT: "0", DOPPEL_KV: `${dir}/doppel.kv`, NO_COLOR: "1", ...env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      code: output.code,
      text: new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr),
    };
  };
  try {
    const url = await startWith({ MQTT_URL: "mqtt://doppel-admin:S3cr/etPw@broker:1883" });
    assertEquals(url.code, 1);
    assert(url.text.includes("MQTT_URL is not a valid URL"), url.text);
    assert(!url.text.includes("S3cr"), "the password is not printed");
    const connections = await startWith({
      MQTT_URL: "mqtt://127.0.0.1:1",
      MQTT_BRIDGE_CONNECTIONS: "four",
    });
    assertEquals(connections.code, 1);
    assert(connections.text.includes('MQTT_BRIDGE_CONNECTIONS "four"'), connections.text);
    const subject = await startWith({ DOPPEL_VAPID_SUBJECT: "operators@example.com" });
    assertEquals(subject.code, 1);
    assert(subject.text.includes('"operators@example.com"'), subject.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
