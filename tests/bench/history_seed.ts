/**
 * Seeds stored rollups for the history benchmarks, laid out exactly as the runtime writes them.
 * @module
 */
import { rollupKey } from "../../src/telemetry/history.ts";
import {
  type Bucket,
  BUCKET_MS,
  CHUNK_MS,
  chunkStart,
  type RollupChunk,
  toChunk,
} from "../../src/telemetry/rollup.ts";

/**
 * Writes one-minute buckets of `metric` for `deviceId` from `from` to `to`, in the chunks of 360
 * buckets the runtime keeps (without expiry: the benchmark measures reading them). Returns how
 * many buckets were written.
 */
export async function seedMinuteRollups(
  kv: Deno.Kv,
  deviceId: string,
  metric: string,
  from: number,
  to: number,
): Promise<number> {
  const minute = BUCKET_MS["1m"];
  let written = 0;
  for (let start = chunkStart("1m", from); start <= to; start += CHUNK_MS["1m"]) {
    const buckets: Bucket[] = [];
    for (let t = start; t < start + CHUNK_MS["1m"] && t <= to; t += minute) {
      if (t < from - minute) continue;
      const value = 20 + 5 * Math.sin(t / 3_600_000);
      buckets.push({
        start: t,
        min: value - 0.5,
        max: value + 0.5,
        sum: value * 6,
        count: 6,
        last: value,
        lastTs: t + 50_000,
      });
    }
    const chunk: RollupChunk = toChunk(buckets);
    await kv.set(rollupKey(deviceId, metric, "1m", start), chunk);
    written += buckets.length;
  }
  return written;
}
