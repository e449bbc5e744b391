import { runtimeThroughput } from "./bench/runtime.ts";
for (const history of [false, true]) {
  const r = await runtimeThroughput({ history, seconds: 4 });
  console.log(history ? "history on " : "history off", Math.round(r.messagesPerSec), "batch", r.meanBatch.toFixed(1), "commitMs", r.meanCommitMs.toFixed(2));
}
