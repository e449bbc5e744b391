import { assertEquals } from "./assert.ts";
import { testApp } from "./helpers.ts";
import { ROOT, startV8Flags } from "./bench/common.ts";

Deno.test("a device registers, reports telemetry, and its twin shows it", async () => {
  const t = await testApp();
  try {
    const d = await t.register({ id: "t1" });
    const res = await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 21.5 });
    assertEquals(res.status, 202);
    assertEquals(await res.json(), { accepted: 1, duplicates: 0 });
    const twin = await (await t.op("GET", "/api/v1/twins/t1")).json();
    assertEquals(twin.telemetry.last, { temperature: 21.5 });
  } finally {
    await t.dispose();
  }
});

Deno.test("the benchmark runs the runtime with the V8 flags `deno task start` runs it with", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
  const v8 = (task: string) => task.split(/\s+/).find((arg) => arg.startsWith("--v8-flags="));
  assertEquals(v8(config.tasks.bench), v8(config.tasks.start));
  assertEquals(startV8Flags(), v8(config.tasks.start));
});
