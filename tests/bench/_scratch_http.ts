import { httpThroughput } from "./http.ts";
for (const c of [25, 50, 100, 200]) {
  const r = await httpThroughput({ connections: c, seconds: 6 });
  if ("skipped" in r) break;
  console.log(
    c,
    "conns:",
    Math.round(r.requestsPerSec),
    "req/s",
    r.latency,
    "non2xx",
    r.non2xx,
    JSON.stringify(r.serverCpu),
    "wrk",
    r.wrkCpu?.toFixed(0),
    "machine",
    r.machineBusy?.toFixed(0),
  );
}
