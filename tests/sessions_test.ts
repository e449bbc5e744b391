/**
 * Device sessions against the runtime with a scripted downlink, for orderings real transports
 * only hit now and then: here a desired change that commits while a session's catch-up read is
 * still in flight.
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import { acceptingDownlink, testApp } from "./helpers.ts";
import { until } from "./transport_fixture.ts";
import type { Downlink } from "../src/transports/sessions.ts";
import type { DesiredUpdate } from "../src/twin/presence.ts";

/**
 * A KV that can hold back the answer to a read of a twin head: after `skip` such reads, the next
 * one is made at once but answers (with what it read then) only once released.
 */
async function stallingKv(): Promise<
  { kv: Deno.Kv; stallTwinRead(skip: number): StalledRead }
> {
  const real = await Deno.openKv(":memory:");
  let pending: StalledRead | undefined;
  let skipping = 0;
  const kv = new Proxy(real, {
    get(target, name) {
      if (name === "get") {
        return (key: Deno.KvKey, options?: { consistency?: Deno.KvConsistencyLevel }) => {
          const result = target.get(key, options);
          const stall = key[0] === "twins" ? pending : undefined;
          if (!stall) return result;
          if (skipping > 0) {
            skipping--;
            return result;
          }
          pending = undefined;
          stall.started();
          return stall.released.then(() => result);
        };
      }
      const value = Reflect.get(target, name, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return {
    kv,
    stallTwinRead(skip) {
      skipping = skip;
      let started!: () => void;
      let release!: () => void;
      const read: StalledRead = {
        reading: new Promise<void>((resolve) => started = resolve),
        released: new Promise<void>((resolve) => release = resolve),
        started: () => started(),
        release: () => release(),
      };
      pending = read;
      return read;
    },
  };
}

interface StalledRead {
  /** Resolves once the read was made (its answer is held). */
  reading: Promise<void>;
  /** Lets the answer through. */
  release(): void;
  /** @internal */
  released: Promise<void>;
  /** @internal */
  started(): void;
}

Deno.test("sessions: a desired change that commits while a catch-up read is in flight is still pushed", async () => {
  const { kv, stallTwinRead } = await stallingKv();
  const app = await testApp({ kv });
  try {
    const { id } = await app.register({ id: "s1" });
    // The device has seen desired up to version 2.
    await app.runtime.patchDesired(id, { targetTemperature: 20 });
    await app.runtime.send(id, { type: "desired.ack", version: 2 });

    const pushes: DesiredUpdate[] = [];
    const downlink: Downlink = {
      transport: "ws",
      ready: () => true,
      pushDesired: (_deviceId, update) => {
        pushes.push(update);
        return Promise.resolve(true);
      },
      pushCommand: () => Promise.resolve(true),
      kick() {},
    };
    const device = await app.registry.get(id);
    assert(device);
    const session = await app.sessions.open(device, downlink);
    assertEquals(pushes, [], "nothing new to catch up on");

    // A flush (as after an MQTT subscribe) first asks the twin for queued commands (a read-only
    // turn, which reads the twin's head to check it is current), then reads the twin for the
    // catch-up. That second read is held while desired changes and commits: it answers with the
    // twin from before the change.
    const stalled = stallTwinRead(1);
    const flushed = session.flush(id);
    await stalled.reading;
    await app.runtime.patchDesired(id, { targetTemperature: 23 });
    stalled.release();
    await flushed;

    await until(() => pushes.length > 0, "the desired push");
    assertEquals(pushes.at(-1), { patch: { targetTemperature: 23 }, version: 3 });
    await session.close("test over");
  } finally {
    await app.dispose();
  }
});

Deno.test("sessions: a device disabled between its authentication and its session opening is kicked at once", async () => {
  const app = await testApp();
  try {
    const { id } = await app.register({ id: "s2" });
    const kicked: string[] = [];
    const downlink: Downlink = {
      transport: "ws",
      ready: () => true,
      pushDesired: () => Promise.resolve(true),
      pushCommand: () => Promise.resolve(true),
      kick: (reason) => kicked.push(reason),
    };
    // Authenticated (the record read), then disabled before the session is registered.
    const device = await app.registry.get(id);
    assert(device);
    await app.registry.update(id, { enabled: false });
    const session = await app.sessions.open(device, downlink);
    assertEquals(kicked, ["disabled"]);
    await session.close("test over");
  } finally {
    await app.dispose();
  }
});

Deno.test("sessions: a renewal that finds the session ended elsewhere (another bridge instance) drops it here and says so", async () => {
  const app = await testApp();
  try {
    const { id } = await app.register({ id: "s3" });
    const downlink = acceptingDownlink("bridge");
    const device = await app.registry.get(id);
    assert(device);
    let lapsed = 0;
    const session = await app.sessions.open(device, downlink, {
      id: "bridge:s3",
      onLapsed: () => lapsed++,
    });
    assertEquals(app.sessions.counts(), { bridge: 1 });
    // Another process applies the device's offline announcement: the twin ends the session.
    await app.runtime.send(id, { type: "session.close", sessionId: "bridge:s3", reason: "x" });
    session.renew();
    await until(() => lapsed === 1, "the lapse to be noticed");
    assertEquals(app.sessions.counts(), {});
  } finally {
    await app.dispose();
  }
});
