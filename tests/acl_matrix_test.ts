/**
 * The device ACL as a matrix: every transport (HTTP, WebSocket, MQTT) against every kind of
 * target — the device's own, another device's, a child's (as its gateway), a non-child's (as a
 * gateway), a disabled device, a wrong key — each cell one test with its expected outcome.
 * A denied cell also proves nothing was written to the target.
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import { type Creds, type TransportFixture, transportFixture } from "./transport_fixture.ts";
import { loadTwin } from "../src/storage/twin_store.ts";

/** What a cell must show. */
type Outcome =
  | "allow" // the operations succeed and are applied to the target
  | "forbidden" // authenticated, but not allowed for this target
  | "disabled" // the device is disabled: refused at the door
  | "unauthorized"; // bad credentials: refused at the door

type Transport = "HTTP" | "WebSocket" | "MQTT";

/** Who acts (and with which key) and on whose twin. */
interface Scenario {
  name: string;
  actor: "dev" | "gw" | "off";
  target: string;
  wrongKey?: boolean;
}

const SCENARIOS: Scenario[] = [
  { name: "own", actor: "dev", target: "dev" },
  { name: "another device's", actor: "dev", target: "other" },
  { name: "a child's (as gateway)", actor: "gw", target: "kid" },
  { name: "a non-child's (as gateway)", actor: "gw", target: "stranger" },
  { name: "a disabled device", actor: "off", target: "off" },
  { name: "a wrong key", actor: "dev", target: "dev", wrongKey: true },
];

/** The matrix: rows are transports, columns scenarios (in the order of SCENARIOS). */
const MATRIX: Record<Transport, Outcome[]> = {
  // Columns: own, another device's, a child's, a non-child's, a disabled device, a wrong key.
  HTTP: ["allow", "forbidden", "allow", "forbidden", "disabled", "unauthorized"],
  WebSocket: ["allow", "forbidden", "allow", "forbidden", "disabled", "unauthorized"],
  MQTT: ["allow", "forbidden", "allow", "forbidden", "disabled", "unauthorized"],
};

/** Registers the cast: two plain devices, a gateway with one child, a stranger, a disabled one. */
async function cast(f: TransportFixture): Promise<Record<string, Creds>> {
  const creds: Record<string, Creds> = {};
  for (
    const input of [
      { id: "dev" },
      { id: "other" },
      { id: "gw" },
      { id: "kid", parent: "gw" },
      { id: "stranger" },
      { id: "off" },
    ]
  ) {
    creds[input.id] = await f.register(input);
  }
  await f.setEnabled("off", false);
  return creds;
}

/** What a target's twin holds that an operation could change. */
async function snapshot(f: TransportFixture, id: string): Promise<string> {
  const state = (await loadTwin(f.kv, id))!.state;
  return JSON.stringify({
    telemetry: state.telemetry,
    reported: state.reported,
    version: state.version,
    connection: state.connection,
  });
}

/** Whether the allowed operations reached the target's twin. */
async function assertApplied(f: TransportFixture, target: string, temperature: number) {
  const state = (await loadTwin(f.kv, target))!.state;
  assertEquals(state.telemetry.last, { temperature }, "telemetry applied to the target");
  assertEquals(state.reported, { firmware: "acl" }, "reported applied to the target");
}

type Check = (
  f: TransportFixture,
  actor: Creds,
  target: string,
  outcome: Outcome,
) => Promise<void>;

const checks: Record<Transport, Check> = {
  async HTTP(f, actor, target, outcome) {
    const query = target === actor.id ? "" : `?device=${target}`;
    const operations: Array<[string, string, unknown, number]> = [
      ["POST", "/device/v1/telemetry", { temperature: 31.5 }, 202],
      ["PATCH", "/device/v1/twin/reported", { firmware: "acl" }, 200],
      ["GET", "/device/v1/twin", undefined, 200],
      ["GET", "/device/v1/commands", undefined, 200],
    ];
    const expected = { forbidden: 403, disabled: 403, unauthorized: 401 } as const;
    const codes = { forbidden: "forbidden", disabled: "forbidden", unauthorized: "unauthorized" };
    for (const [method, path, body, ok] of operations) {
      const res = await f.dev(actor, method, path + query, body);
      const json = await res.json();
      if (outcome === "allow") {
        assertEquals(res.status, ok, `${method} ${path}: ${JSON.stringify(json)}`);
      } else {
        assertEquals(res.status, expected[outcome], `${method} ${path}: ${JSON.stringify(json)}`);
        assertEquals(json.error.code, codes[outcome], `${method} ${path}`);
      }
    }
    if (outcome === "allow") await assertApplied(f, target, 31.5);
  },

  async WebSocket(f, actor, target, outcome) {
    if (outcome === "disabled" || outcome === "unauthorized") {
      assertEquals(await f.wsUpgradeStatus(actor), outcome === "disabled" ? 403 : 401);
      return;
    }
    const ws = await f.ws(actor);
    const device = target === actor.id ? {} : { device: target };
    for (
      const frame of [
        { type: "telemetry", data: { temperature: 32.5 } },
        { type: "reported", patch: { firmware: "acl" } },
        { type: "twin.get" },
      ]
    ) {
      const answer = await ws.request({ ...frame, ...device });
      if (outcome === "allow") {
        assertEquals(answer.type, "result", `${frame.type}: ${JSON.stringify(answer)}`);
      } else {
        assertEquals(answer.type, "error", frame.type);
        assertEquals((answer.error as { code: string }).code, "forbidden", frame.type);
      }
    }
    assert(ws.open, "the socket stays open");
    await ws.close();
    if (outcome === "allow") await assertApplied(f, target, 32.5);
  },

  async MQTT(f, actor, target, outcome) {
    if (outcome === "disabled" || outcome === "unauthorized") {
      const code = await f.mqttReturnCode({
        clientId: actor.id,
        username: actor.id,
        password: actor.key,
      });
      assertEquals(code, outcome === "disabled" ? 5 : 4, "CONNACK return code");
      return;
    }
    const c = await f.mqtt(actor);
    const topic = (rest: string) => `devices/${target}/${rest}`;
    if (outcome === "allow") {
      const granted = await c.client.subscribeAsync(topic("commands/+"), { qos: 1 });
      assertEquals(granted.map((g) => g.qos), [1], "subscription granted");
      await c.client.publishAsync(topic("telemetry"), JSON.stringify({ temperature: 33.5 }), {
        qos: 1,
      });
      await c.client.publishAsync(topic("twin/reported"), JSON.stringify({ firmware: "acl" }), {
        qos: 1,
      });
      await assertApplied(f, target, 33.5);
      assert(c.client.connected);
      await c.end();
      return;
    }
    for (const filter of [topic("commands/+"), topic("twin/desired"), topic("#")]) {
      const error = await c.client.subscribeAsync(filter, { qos: 1 })
        .then(() => null, (e) => e as { packet?: { granted?: number[] } });
      assertEquals(error?.packet?.granted, [128], `subscription to ${filter}`);
    }
    assert(c.client.connected, "a refused subscription keeps the connection");
    c.client.publish(topic("telemetry"), JSON.stringify({ temperature: 33.5 }), { qos: 0 });
    await c.whenClosed();
  },
};

for (const transport of ["HTTP", "WebSocket", "MQTT"] as const) {
  SCENARIOS.forEach((scenario, column) => {
    const outcome = MATRIX[transport][column];
    Deno.test(`acl matrix: ${transport} × ${scenario.name} → ${outcome}`, async () => {
      const f = await transportFixture({ http: transport === "WebSocket" });
      try {
        const creds = await cast(f);
        const actor = scenario.wrongKey
          ? { id: creds[scenario.actor].id, key: "not-the-key" }
          : creds[scenario.actor];
        const before = await snapshot(f, scenario.target);
        await checks[transport](f, actor, scenario.target, outcome);
        if (outcome !== "allow") {
          assertEquals(await snapshot(f, scenario.target), before, "nothing reached the target");
        }
      } finally {
        await f.close();
      }
    });
  });
}
