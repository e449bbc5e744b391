import { assert, assertEquals } from "./assert.ts";
import { ADMIN_TOKEN, testApp } from "./helpers.ts";

/** One sample of the exposition: name, labels and value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parses the Prometheus text format (0.0.4) strictly: every line is a comment (`# HELP`,
 * `# TYPE`) or a sample `name{label="value",…} number`; samples follow their family's TYPE.
 */
function parseExposition(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  const name = "[a-zA-Z_:][a-zA-Z0-9_:]*";
  const sample = new RegExp(`^(${name})(?:\\{(.*)\\})? (-?(?:[0-9.eE+-]+|NaN|\\+Inf|-Inf))$`);
  const label = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\\]|\\\\.)*)"(?:,|$)/;
  assert(text.endsWith("\n"), "the exposition ends with a newline");
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("# HELP ")) continue;
    if (line.startsWith("# TYPE ")) {
      const [, , family, type] = line.split(" ");
      assert(["counter", "gauge", "histogram", "summary", "untyped"].includes(type), line);
      assert(!types.has(family), `TYPE given twice for ${family}`);
      types.set(family, type);
      continue;
    }
    const match = sample.exec(line);
    assert(match, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    let rest = match[2] ?? "";
    while (rest) {
      const l = label.exec(rest);
      assert(l, `bad labels in ${JSON.stringify(line)}`);
      labels[l[1]] = l[2];
      rest = rest.slice(l[0].length);
    }
    const family = match[1].replace(/_(bucket|sum|count)$/, "");
    assert(types.has(match[1]) || types.has(family), `sample before its TYPE: ${line}`);
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return { types, samples };
}

Deno.test("/metrics is the Prometheus text format and counts what happened", async () => {
  const t = await testApp();
  try {
    const d = await t.register({ id: "m1" });
    for (let i = 0; i < 3; i++) {
      assertEquals(
        (await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 20 + i, id: "x" })).status,
        202,
      );
    }
    assertEquals(
      (await t.dev(d, "POST", "/device/v1/telemetry", { temperature: "hot" })).status,
      400,
    );
    assertEquals(
      (await t.op("POST", "/api/v1/devices/m1/commands", { name: "reboot" })).status,
      202,
    );

    const res = await t.app.request("/metrics", {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    assertEquals(res.status, 200);
    assert(res.headers.get("content-type")?.startsWith("text/plain; version=0.0.4"));
    const { types, samples } = parseExposition(await res.text());
    const value = (name: string, labels: Record<string, string> = {}) =>
      samples.find((s) =>
        s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)
      )?.value;

    assertEquals(types.get("doppel_messages_total"), "counter");
    assertEquals(
      value("doppel_messages_total", { transport: "http", type: "telemetry", outcome: "ok" }),
      3,
    );
    assertEquals(
      value("doppel_messages_total", {
        transport: "http",
        type: "telemetry",
        outcome: "validation_failed",
      }),
      1,
    );
    // The same id three times: one point accepted, two duplicates.
    assertEquals(value("doppel_telemetry_points_total", { result: "accepted" }), 1);
    assertEquals(value("doppel_telemetry_points_total", { result: "duplicate" }), 2);
    assertEquals(value("doppel_commands_total", { status: "queued" }), 1);
    assertEquals(value("doppel_twins_active"), 1);
    assert((value("doppel_process_resident_memory_bytes") ?? 0) > 0);
    for (
      const gauge of [
        "doppel_devices_connected",
        "doppel_push_results_total",
        "doppel_streams_open",
      ]
    ) {
      assertEquals(types.get(gauge), "gauge");
    }

    // Histograms: cumulative buckets ending in +Inf, which equals _count.
    for (const family of ["doppel_commit_batch_size", "doppel_commit_duration_seconds"]) {
      assertEquals(types.get(family), "histogram");
      const buckets = samples.filter((s) => s.name === `${family}_bucket`);
      assert(buckets.length > 1, `${family} has buckets`);
      for (let i = 1; i < buckets.length; i++) assert(buckets[i].value >= buckets[i - 1].value);
      assertEquals(buckets.at(-1)!.labels.le, "+Inf");
      assertEquals(buckets.at(-1)!.value, value(`${family}_count`));
      assert((value(`${family}_count`) ?? 0) >= 4, "every commit was observed");
    }
  } finally {
    await t.dispose();
  }
});

Deno.test("/metrics needs the operator token (or the metrics token)", async () => {
  const t = await testApp();
  try {
    const none = await t.app.request("/metrics");
    assertEquals(none.status, 401);
    // The challenge names the scheme that works: a bearer token, not a password.
    assertEquals(none.headers.get("www-authenticate"), 'Bearer realm="doppel"');
    const wrong = await t.app.request("/metrics", { headers: { authorization: "Bearer nope" } });
    assertEquals(wrong.status, 401);
    assertEquals((await wrong.json()).error.code, "unauthorized");
  } finally {
    await t.dispose();
  }
});

Deno.test("/metrics labels a session by its transport, never by the device that opened it", async () => {
  const t = await testApp();
  try {
    const device = await t.registry.get((await t.register({ id: "sensor-label-1" })).id);
    assert(device);
    const session = await t.sessions.open(device, {
      transport: "ws",
      ready: () => true,
      pushDesired: () => Promise.resolve(true),
      pushCommand: () => Promise.resolve(true),
      kick() {},
    });
    const res = await t.app.request("/metrics", {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const text = await res.text();
    assert(text.includes('transport="ws",type="session.open"'), "the session's transport");
    assert(!text.includes("sensor-label-1"), "no device id among the labels");
    await session.close("test over");
  } finally {
    await t.dispose();
  }
});
