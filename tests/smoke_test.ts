import { assertEquals } from "./assert.ts";
import { testApp } from "./helpers.ts";

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
