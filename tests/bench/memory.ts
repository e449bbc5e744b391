/**
 * Part 4: memory with 100,000 twins activated, measured in a child process (`memory_child.ts`)
 * so the figure is not mixed with the rest of the bench. The child seeds the devices and twins
 * itself (mode `both`), then activates them all.
 * @module
 */
import { removeDir, ROOT, startV8Flags, tempDir } from "./common.ts";
import type { MemoryChildResult } from "./memory_child.ts";

/** Settings for {@link activatedMemory}. */
export interface MemoryOptions {
  /** Twins to activate (default 100,000). */
  twins?: number;
  /** Concurrent activating sends (default 1,000). */
  concurrency?: number;
  /** Prints progress. */
  log?(line: string): void;
}

/** Runs the child and returns what it measured. */
export async function activatedMemory(options: MemoryOptions = {}): Promise<MemoryChildResult> {
  const dir = await tempDir("memory");
  try {
    const child = new URL("./memory_child.ts", import.meta.url).pathname;
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        // As `deno task start` runs the runtime, and able to collect garbage before each reading.
        startV8Flags(["--expose-gc"]),
        child,
        "both",
        `${dir}/memory.kv`,
        String(options.twins ?? 100_000),
        String(options.concurrency ?? 1_000),
      ],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(output.stdout);
    const line = stdout.split("\n").find((l) => l.startsWith("BENCH_RESULT "));
    if (!output.success || !line) {
      throw new Error(
        `The memory child failed (${output.code}):\n${stdout}\n${
          new TextDecoder().decode(output.stderr)
        }`,
      );
    }
    return JSON.parse(line.slice("BENCH_RESULT ".length));
  } finally {
    await removeDir(dir);
  }
}
