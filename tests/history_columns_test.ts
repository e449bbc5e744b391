import { assertEquals } from "./assert.ts";
import { ManualClock } from "../src/clock.ts";
import { testApp } from "./helpers.ts";

Deno.test("history: format=columns carries the same points and buckets as items", async () => {
  const clock = new ManualClock(Date.parse("2026-11-26T10:00:00.000Z"));
  const t = await testApp({ clock });
  try {
    await t.register({ id: "c1" });
    const start = clock.now();
    for (let i = 0; i < 200; i++) {
      await t.runtime.telemetry("c1", [{ ts: clock.now(), temperature: 20 + (i % 7) / 2 }]);
      clock.advance(20_000);
    }
    const base = `/api/v1/devices/c1/telemetry?metric=temperature&from=${start}&to=${clock.now()}`;
    for (const bucket of ["", "&bucket=1m", "&bucket=1h"]) {
      const items = await (await t.op("GET", `${base}${bucket}`)).json();
      const columns = await (await t.op("GET", `${base}${bucket}&format=columns`)).json();
      assertEquals(columns.bucket, items.bucket);
      if (!bucket) {
        assertEquals(columns.columns.ts, items.items.map((p: { ts: string }) => Date.parse(p.ts)));
        assertEquals(columns.columns.value, items.items.map((p: { value: number }) => p.value));
      } else {
        for (const field of ["min", "max", "avg", "count", "last"]) {
          assertEquals(
            columns.columns[field],
            items.items.map((b: Record<string, number>) => b[field]),
            `${bucket} ${field}`,
          );
        }
        assertEquals(
          columns.columns.start,
          items.items.map((b: { start: string }) => Date.parse(b.start)),
        );
      }
    }
    const bad = await t.op("GET", `${base}&format=csv`);
    assertEquals(bad.status, 400);
    assertEquals((await bad.json()).error.details.fields[0].field, "format");
  } finally {
    await t.dispose();
  }
});
