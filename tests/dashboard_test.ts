/**
 * Dashboard tests in real Chromium against an in-process app served over HTTP: sign-in, live
 * overview, live charts, desired editing with conflict detection, commands, alarms, CSRF and
 * CSP, and screenshots. Every wait is a condition written as a selector (`waitFor`, see the
 * fixture for why not `waitForFunction`), never a sleep.
 * @module
 */
import type { Page } from "playwright-core";
import { CONTENT_SECURITY_POLICY } from "../src/web/dashboard/routes.tsx";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { ADMIN_TOKEN } from "./helpers.ts";
import {
  type Creds,
  type DashboardFixture,
  dashboardFixture,
  js,
  waitFor,
  waitLive,
} from "./dashboard_fixture.ts";

const OUTPUT = new URL("./output/", import.meta.url).pathname;

/** Runs `fn` with a fresh fixture and checks no page had problems. */
async function withDashboard(
  fn: (f: DashboardFixture) => Promise<void>,
  expectedProblems: RegExp[] = [],
): Promise<void> {
  const f = await dashboardFixture();
  try {
    await fn(f);
    const unexpected = f.problems.filter((p) => !expectedProblems.some((re) => re.test(p)));
    assertEquals(unexpected, [], "pages logged errors, threw, violated the CSP or alerted");
  } finally {
    await f.close();
  }
}

/** Telemetry items every `stepMs` ending at now, with `temperature` from `value(i)`. */
function series(
  n: number,
  stepMs: number,
  value: (i: number) => Record<string, number>,
): Array<Record<string, number>> {
  const now = Date.now();
  return Array.from({ length: n }, (_, i) => ({ ts: now - (n - 1 - i) * stepMs, ...value(i) }));
}

/** Waits until the chart of `metric` has plotted exactly `n` points. */
async function waitPoints(page: Page, metric: string, n: number): Promise<void> {
  await waitFor(page, `.chart[data-metric=${js(metric)}][data-points="${n}"]`);
}

/** Waits until the element's whole text is `expected`. */
async function waitText(page: Page, selector: string, expected: string): Promise<void> {
  await waitFor(page, `${selector}:text-is(${js(expected)})`);
}

/** A number with one decimal, as the overview shows messages per second. */
const RATE = `#rate:text-matches("^[0-9]+[.][0-9]$")`;
/** The same, above zero. */
const POSITIVE_RATE = `#rate:text-matches("^(0[.][1-9]|[1-9][0-9]*[.][0-9])$")`;

async function openDevice(f: DashboardFixture, page: Page, id: string): Promise<void> {
  const res = await page.goto(`${f.base}/devices/${encodeURIComponent(id)}`);
  assertEquals(res?.status(), 200);
  await waitLive(page);
}

/** Raises the thermostat's overheat alarm: above 30 °C over 40 s of readings. */
async function overheat(f: DashboardFixture, creds: Creds): Promise<string> {
  await f.telemetry(creds, series(5, 10_000, (i) => ({ temperature: 34 + i * 0.5 })));
  const alarms = await f.op("GET", `/api/v1/alarms?device=${creds.id}`);
  assertEquals(alarms.status, 200);
  const overheat = alarms.body.items.find((a: { type: string }) => a.type === "overheat");
  assert(overheat, `no overheat alarm: ${JSON.stringify(alarms.body)}`);
  assertEquals(overheat.state, "active");
  return overheat.id;
}

Deno.test("dashboard: sign-in refuses a wrong token, then shows the live overview", async () => {
  await withDashboard(async (f) => {
    const online = await f.register({ id: "t-online" });
    await f.register({ id: "t-idle" });
    await f.register({ id: "g-1", kind: "generic" });
    await f.telemetry(online, { temperature: 21 });

    const page = await f.page();
    // Without a session, pages send you to the sign-in form.
    await page.goto(`${f.base}/`);
    assertEquals(new URL(page.url()).pathname, "/login");
    assertEquals(await page.evaluate("document.body.dataset.page"), "login");

    await page.fill('input[name="token"]', "not-the-token-at-all-0000");
    const [refused] = await Promise.all([
      page.waitForResponse((r) =>
        r.request().method() === "POST" && new URL(r.url()).pathname === "/login"
      ),
      page.click('button[type="submit"]'),
    ]);
    assertEquals(refused.status(), 401);
    await page.waitForSelector("p.error");
    assertMatch(await page.textContent("p.error") ?? "", /not the operator token/);
    assertEquals(await page.evaluate("document.body.dataset.page"), "login");

    // The form after a failure carries a fresh CSRF token: the right token now works.
    await page.fill('input[name="token"]', ADMIN_TOKEN);
    await Promise.all([page.waitForURL(`${f.base}/`), page.click('button[type="submit"]')]);
    assertEquals(await page.evaluate("document.body.dataset.page"), "overview");
    assertEquals((await page.textContent("#count-total"))?.trim(), "3");
    assertEquals(await page.textContent('#by-status [data-status="online"] b'), "1");
    assertEquals(await page.textContent('#by-status [data-status="never"] b'), "2");

    // Live: the stream says hello, stats arrive, and traffic shows as messages per second.
    await waitLive(page);
    await waitFor(page, RATE);
    await waitFor(page, `#active-twins:text-matches("^[0-9]+$")`);
    for (let i = 0; i < 5; i++) await f.telemetry(online, { temperature: 21 + i });
    await waitFor(page, POSITIVE_RATE);
    await page.close();
  }, [/^console error on \/login: .*status of 401/]);
});

Deno.test("dashboard: a device's chart gains points live from telemetry", async () => {
  await withDashboard(async (f) => {
    const t = await f.register({ id: "chart-1" });
    await f.telemetry(t, series(3, 1_000, (i) => ({ temperature: 20 + i })));
    const page = await f.page();
    await f.signIn(page);
    await openDevice(f, page, t.id);
    await waitPoints(page, "temperature", 3);

    await f.telemetry(t, [{ temperature: 23.5 }, { temperature: 24 }]);
    await waitPoints(page, "temperature", 5);
    await f.telemetry(t, { temperature: 24.5 });
    await waitPoints(page, "temperature", 6);
    // One chart per metric, and no stray duplicates from re-renders.
    assertEquals(await page.locator('.chart[data-metric="temperature"]').count(), 1);
    await page.close();
  });
});

Deno.test("dashboard: a device's first readings create one chart per metric", async () => {
  await withDashboard(async (f) => {
    const t = await f.register({ id: "chart-2" });
    const page = await f.page();
    await f.signIn(page);
    await openDevice(f, page, t.id);
    assertEquals(await page.locator(".chart").count(), 0);

    await f.telemetry(t, { temperature: 21, humidity: 40 });
    await waitPoints(page, "temperature", 1);
    await waitPoints(page, "humidity", 1);
    // Both charts are drawn once the twin refresh has loaded them; wait for the page to settle
    // on a live point, then count.
    await f.telemetry(t, { temperature: 21.5, humidity: 41 });
    await waitPoints(page, "temperature", 2);
    await waitPoints(page, "humidity", 2);
    const charts = await page.locator(".chart").evaluateAll((nodes) =>
      nodes.map((node) => node.getAttribute("data-metric"))
    );
    assertEquals(charts, ["humidity", "temperature"]);
    await page.close();
  });
});

Deno.test("dashboard: editing desired saves with If-Match and shows the delta", async () => {
  await withDashboard(async (f) => {
    const t = await f.register({ id: "desired-1" });
    const page = await f.page();
    await f.signIn(page);
    await openDevice(f, page, t.id);

    await page.fill('#desired-form textarea[name="desired"]', '{"targetTemperature": 19}');
    await page.click('#desired-form button[type="submit"]');
    await waitFor(page, "#desired-status.ok");
    assertMatch(await page.textContent("#desired-status") ?? "", /Saved: version 2/);
    const deltaCell = `#twin-state table.state[data-part="delta"] tbody tr`;
    await waitFor(
      page,
      `${deltaCell}:has(th:text-is("targetTemperature")):has(code:text-is("19"))`,
    );
    const twin = await f.op("GET", `/api/v1/twins/${t.id}`);
    assertEquals(twin.body.desired, { targetTemperature: 19 });
    assertEquals(twin.body.delta, { targetTemperature: 19 });

    // The device catches up: the delta empties live.
    const reported = await f.dev(t, "PATCH", "/device/v1/twin/reported", {
      targetTemperature: 19,
    });
    assertEquals(reported.status, 200);
    await waitText(page, `${deltaCell} td.muted`, "(empty)");
    await waitText(page, "#twin-version", "3");
    await page.close();
  });
});

Deno.test("dashboard: saving desired after a change the page has not seen is refused (412)", async () => {
  await withDashboard(async (f) => {
    const t = await f.register({ id: "conflict-1" });
    const page = await f.page();
    // A live stream that says hello and then goes quiet: the page misses the change below.
    await page.route("**/api/v1/stream*", (route) =>
      route.fulfill({
        status: 200,
        headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
        body: 'retry: 600000\nevent: hello\ndata: {"device":null}\n\n',
      }));
    await f.signIn(page);
    await openDevice(f, page, t.id);

    await page.fill('#desired-form textarea[name="desired"]', '{"targetTemperature": 21}');
    const behind = await f.op("PATCH", `/api/v1/twins/${t.id}/desired`, { mode: "cool" });
    assertEquals(behind.status, 200);
    assertEquals(behind.body.version, 2);

    await page.click('#desired-form button[type="submit"]');
    await waitFor(page, "#desired-status.error");
    assertMatch(await page.textContent("#desired-status") ?? "", /changed this twin meanwhile/);
    // The page reloaded the twin: the editor shows what is stored now.
    await waitText(page, "#twin-version", "2");
    // refreshTwin sets the version and the editor in one go.
    assertEquals(
      JSON.parse(await page.inputValue('#desired-form textarea[name="desired"]')),
      { mode: "cool" },
    );
    let twin = await f.op("GET", `/api/v1/twins/${t.id}`);
    assertEquals(twin.body.desired, { mode: "cool" });

    // Saving again on top of the fresh version works.
    await page.fill(
      '#desired-form textarea[name="desired"]',
      '{"mode": "cool", "targetTemperature": 21}',
    );
    await page.click('#desired-form button[type="submit"]');
    await waitFor(page, "#desired-status.ok");
    twin = await f.op("GET", `/api/v1/twins/${t.id}`);
    assertEquals(twin.body.desired, { mode: "cool", targetTemperature: 21 });
    await page.close();
  }, [/^console error on \/devices\/conflict-1: .*status of 412/]);
});

Deno.test("dashboard: a change made while the operator is editing is not silently overwritten", async () => {
  await withDashboard(async (f) => {
    const t = await f.register({ id: "conflict-2" });
    const page = await f.page();
    await f.signIn(page);
    await openDevice(f, page, t.id);

    // The operator is typing (the textarea has focus) when someone else sets the same property.
    await page.fill('#desired-form textarea[name="desired"]', '{"targetTemperature": 21}');
    const other = await f.op("PATCH", `/api/v1/twins/${t.id}/desired`, { targetTemperature: 25 });
    assertEquals(other.status, 200);
    // The live stream shows the change on the page; the editor keeps the operator's text.
    await waitFor(
      page,
      `#twin-state table.state[data-part="desired"] tr:has(th:text-is("targetTemperature")):has(code:text-is("25"))`,
    );
    assertEquals(
      await page.inputValue('#desired-form textarea[name="desired"]'),
      '{"targetTemperature": 21}',
    );

    await page.click('#desired-form button[type="submit"]');
    await waitFor(page, "#desired-status:not(:empty)");
    const status = await page.textContent("#desired-status") ?? "";
    const twin = await f.op("GET", `/api/v1/twins/${t.id}`);
    assertEquals(
      { status, desired: twin.body.desired },
      {
        status: "Someone changed this twin meanwhile; it was reloaded. Review and save again.",
        desired: { targetTemperature: 25 },
      },
      "the edit was based on version 1, so saving it must be refused (412), not overwrite 25",
    );
    await page.close();
  }, [/^console error on \/devices\/conflict-2: .*status of 412/]);
});

Deno.test("dashboard: a command sent from the page turns succeeded live", async () => {
  await withDashboard(async (f) => {
    const t = await f.register({ id: "cmd-1" });
    const page = await f.page();
    await f.signIn(page);
    await openDevice(f, page, t.id);

    // The device long-polls for commands.
    const poll = f.dev(t, "GET", "/device/v1/commands?wait=10");
    await page.selectOption('#command-form select[name="name"]', "cool");
    await page.fill('#command-form textarea[name="payload"]', '{"targetTemperature": 20}');
    await page.click('#command-form button[type="submit"]');
    await waitFor(page, "#command-status.ok");
    const queued = (await page.textContent("#command-status")) ?? "";
    const commandId = /Queued (\S+)\./.exec(queued)?.[1];
    assert(commandId, `status: ${queued}`);
    const row = `#commands tr[data-command=${js(commandId)}]`;
    await page.waitForSelector(row);
    assertEquals(await page.textContent(`${row} td:first-child`), "cool");

    const delivered = await poll;
    assertEquals(delivered.status, 200);
    assertEquals(delivered.body.items.length, 1);
    assertEquals(delivered.body.items[0].id, commandId);
    assertEquals(delivered.body.items[0].payload, { targetTemperature: 20 });

    const result = await f.dev(t, "POST", `/device/v1/commands/${commandId}/result`, {
      status: "succeeded",
      result: { reached: 20 },
    });
    assertEquals(result.status, 200);
    await waitText(page, `${row} .status-cell`, "succeeded");
    assertEquals(await page.textContent(`${row} td:nth-child(3)`), '{"reached":20}');
    assertEquals(await page.locator("#commands tr[data-command]").count(), 1);
    await page.close();
  });
});

Deno.test("dashboard: a late answer to the send does not turn a delivered command back to queued", async () => {
  await withDashboard(async (f) => {
    const t = await f.register({ id: "cmd-2" });
    const page = await f.page();
    await f.signIn(page);
    await openDevice(f, page, t.id);

    // Hold the answer to the page's POST until the live stream has shown the command delivered
    // (what happens by chance on a busy machine: the device is quicker than the page).
    let release = () => {};
    const held = new Promise<void>((resolve) => release = resolve);
    await page.route("**/api/v1/devices/*/commands", async (route) => {
      if (route.request().method() !== "POST") return await route.fallback();
      const response = await route.fetch();
      await held;
      await route.fulfill({ response });
    });
    try {
      const poll = f.dev(t, "GET", "/device/v1/commands?wait=10");
      await page.fill('#command-form textarea[name="payload"]', '{"targetTemperature": 20}');
      await page.click('#command-form button[type="submit"]');
      const delivered = await poll;
      assertEquals(delivered.body.items.length, 1);
      const row = `#commands tr[data-command=${js(delivered.body.items[0].id)}]`;
      await waitText(page, `${row} .status-cell`, "delivered");

      release();
      await waitFor(page, "#command-status.ok");
      assertEquals(
        await page.textContent(`${row} .status-cell`),
        "delivered",
        "the POST's 202 body (queued) must not overwrite the newer status from the stream",
      );
    } finally {
      release();
    }
    await page.close();
  });
});

Deno.test("dashboard: alarms are acknowledged and cleared from the alarms and device pages", async () => {
  await withDashboard(async (f) => {
    const a = await f.register({ id: "hot-a" });
    const b = await f.register({ id: "hot-b" });
    const alarmA = await overheat(f, a);
    const alarmB = await overheat(f, b);
    const page = await f.page();
    await f.signIn(page);

    // The alarms page.
    await page.goto(`${f.base}/alarms`);
    await waitLive(page);
    const rowA = `tr[data-alarm=${js(alarmA)}]`;
    await waitText(page, `${rowA} .state`, "active");
    await page.click(`${rowA} [data-action=acknowledge]`);
    // The row is redrawn from the action's answer and again from the live notice; wait for the
    // state and the buttons that go with it together rather than for the first redraw.
    await waitText(page, `${rowA}:not(:has([data-action=acknowledge])) .state`, "acknowledged");
    await page.click(`${rowA} [data-action=clear]`);
    await waitText(page, `${rowA}:not(:has(button)) .state`, "cleared");
    assertEquals(
      (await f.op("GET", `/api/v1/alarms/${alarmA}`)).body.state,
      "cleared",
    );

    // The device page.
    await openDevice(f, page, b.id);
    const rowB = `#device-alarms tr[data-alarm=${js(alarmB)}]`;
    await waitText(page, `${rowB} .state`, "active");
    await page.click(`${rowB} [data-action=acknowledge]`);
    await waitText(page, `${rowB}:not(:has([data-action=acknowledge])) .state`, "acknowledged");
    await page.click(`${rowB} [data-action=clear]`);
    await waitText(page, `${rowB}:not(:has(button)) .state`, "cleared");
    assertEquals((await f.op("GET", `/api/v1/alarms/${alarmB}`)).body.state, "cleared");
    await page.close();
  });
});

Deno.test("dashboard: CSRF and origin checks refuse forged requests; pages carry the CSP", async () => {
  await withDashboard(async (f) => {
    const t = await f.register({ id: "csrf-1" });
    const page = await f.page();
    const login = await page.goto(`${f.base}/login`);
    assertEquals(login?.headers()["content-security-policy"], CONTENT_SECURITY_POLICY);
    await f.signIn(page);
    const session = (await f.context.cookies()).find((c) => c.name === "doppel_session");
    assert(session, "no session cookie");
    assert(session.httpOnly, "the session cookie is HttpOnly");
    assertEquals(session.sameSite, "Strict");
    const cookie = `doppel_session=${session.value}`;

    // Every page (and asset) carries the policy; it allows no inline script.
    for (const path of ["/", "/devices", `/devices/${t.id}`, "/alarms", "/assets/app.js"]) {
      const res = await f.http(path, { headers: { cookie } });
      assertEquals(res.status, 200, path);
      assertEquals(res.headers.get("content-security-policy"), CONTENT_SECURITY_POLICY, path);
    }
    assert(!CONTENT_SECURITY_POLICY.includes("unsafe-inline"));
    const devicePage = await page.goto(`${f.base}/devices/${t.id}`);
    assertEquals(devicePage?.headers()["content-security-policy"], CONTENT_SECURITY_POLICY);
    await waitLive(page);
    const csrf = await page.getAttribute('meta[name="csrf-token"]', "content");
    assert(csrf, "the page carries its CSRF token");

    const patch = (headers: Record<string, string>, body: unknown) =>
      f.http(`/api/v1/twins/${t.id}/desired`, {
        method: "PATCH",
        headers: { cookie, "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      });
    const noToken = await patch({}, { targetTemperature: 18 });
    assertEquals(noToken.status, 403);
    assertEquals(noToken.body.error.code, "forbidden");
    assertEquals((await patch({ "x-csrf-token": "x".repeat(32) }, { mode: "off" })).status, 403);
    const crossOrigin = await patch(
      { "x-csrf-token": csrf, origin: "http://evil.example" },
      { mode: "off" },
    );
    assertEquals(crossOrigin.status, 403);
    // None of them changed anything; with the token from this origin it works.
    assertEquals((await f.op("GET", `/api/v1/twins/${t.id}`)).body.version, 1);
    const good = await patch({ "x-csrf-token": csrf, origin: f.base }, { targetTemperature: 18 });
    assertEquals(good.status, 200);
    assertEquals(good.body.desired, { targetTemperature: 18 });

    // A command without the token is refused too.
    const command = await f.http(`/api/v1/devices/${t.id}/commands`, {
      method: "POST",
      headers: { cookie, "content-type": "application/json" },
      body: JSON.stringify({ name: "reboot" }),
    });
    assertEquals(command.status, 403);

    // Sign-out needs the token; without it the session survives.
    const logout = await f.http("/logout", {
      method: "POST",
      headers: { cookie, "content-type": "application/x-www-form-urlencoded" },
      body: "",
    });
    assertEquals(logout.status, 403);
    const wrongLogout = await f.http("/logout", {
      method: "POST",
      headers: { cookie, "content-type": "application/x-www-form-urlencoded" },
      body: "_csrf=nope",
    });
    assertEquals(wrongLogout.status, 403);
    assertEquals((await f.http("/", { headers: { cookie } })).status, 200);

    // Sign-in from another origin is refused before the token is even looked at.
    const loginForm = await f.http("/login");
    const loginCsrf = /name="_csrf" value="([^"]+)"/.exec(String(loginForm.body))?.[1];
    const loginCookie = loginForm.headers.get("set-cookie")?.split(";")[0];
    assert(loginCsrf && loginCookie);
    const foreign = await f.http("/login", {
      method: "POST",
      headers: {
        cookie: loginCookie,
        origin: "http://evil.example",
        "content-type": "application/x-www-form-urlencoded",
      },
      body: new URLSearchParams({ _csrf: loginCsrf, token: ADMIN_TOKEN }).toString(),
    });
    assertEquals(foreign.status, 403);
    assertEquals(foreign.headers.get("set-cookie"), null);
    // The open sign-in route reads at most a few KiB of form, whatever the body claims.
    const huge = await f.http("/login", {
      method: "POST",
      headers: { cookie: loginCookie, "content-type": "application/x-www-form-urlencoded" },
      body: `_csrf=${loginCsrf}&token=${"x".repeat(64 * 1024)}`,
    });
    assertEquals(huge.status, 413);
    assertEquals(huge.headers.get("set-cookie"), null);
    // A form posted to a JSON route with the session and its token is bad input, not a 500.
    const form = await f.http(`/api/v1/devices/${t.id}/commands`, {
      method: "POST",
      headers: { cookie, "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ _csrf: csrf, name: "reboot" }).toString(),
    });
    assertEquals(form.status, 400);

    // The page's own sign-out button works, and the old cookie is dead afterwards.
    await Promise.all([
      page.waitForURL(`${f.base}/login`),
      page.click('form[action="/logout"] button[type="submit"]'),
    ]);
    const after = await f.http("/", { headers: { cookie } });
    assertEquals(after.status, 303);
    assertEquals(after.headers.get("location"), "/login");
    await page.close();
  });
});

Deno.test("dashboard: screenshots of the overview and a device page", async () => {
  await Deno.mkdir(OUTPUT, { recursive: true });
  await withDashboard(async (f) => {
    const t1 = await f.register({ id: "lab-thermostat-1", tags: { site: "lab" } });
    const t2 = await f.register({ id: "lab-thermostat-2", tags: { site: "lab" } });
    const t3 = await f.register({ id: "office-thermostat", tags: { site: "office" } });
    await f.register({ id: "gateway-1", kind: "generic", tags: { site: "lab" } });
    await f.telemetry(
      t1,
      series(60, 50_000, (i) => ({
        temperature: Math.round((21 + 2 * Math.sin(i / 6) + (i % 7) * 0.1) * 10) / 10,
        humidity: Math.round(45 + 8 * Math.cos(i / 9)),
      })),
    );
    await f.telemetry(t3, { temperature: 22.5, humidity: 40 });
    await overheat(f, t2);

    const page = await f.page();
    await f.signIn(page);
    await waitLive(page);
    assertEquals((await page.textContent("#count-total"))?.trim(), "4");
    assertEquals(await page.textContent('#alarms-by-severity [data-severity="major"] b'), "1");
    await waitFor(page, RATE);
    await f.telemetry(t3, { temperature: 22.7, humidity: 41 });
    await waitFor(page, POSITIVE_RATE);
    await page.screenshot({ path: `${OUTPUT}overview.png`, fullPage: true });

    await openDevice(f, page, t1.id);
    await waitPoints(page, "temperature", 60);
    await waitPoints(page, "humidity", 60);
    await page.screenshot({ path: `${OUTPUT}device.png`, fullPage: true });

    const size = (png: Uint8Array) => new DataView(png.buffer).getUint32(16);
    for (const name of ["overview.png", "device.png"]) {
      assertEquals(size(await Deno.readFile(`${OUTPUT}${name}`)), 1280, `${name} width`);
    }
    await page.close();
  });
});
