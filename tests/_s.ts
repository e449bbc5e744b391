import { sseThroughput } from "./bench/sse.ts";
const r = await sseThroughput(console.log);
console.log(r.ratio, r.clients, r.events);
