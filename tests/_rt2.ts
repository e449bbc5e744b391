import { runtimeThroughput } from "./bench/runtime.ts";
const r = await runtimeThroughput({ history: false, seconds: 5 });
console.log("history off", Math.round(r.messagesPerSec), r.meanCommitMs);
