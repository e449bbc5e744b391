/**
 * Loads twin kinds from a folder: every `.ts` or `.js` file's default export must be a kind made
 * with `defineTwin`. A broken file stops start-up with a message naming it.
 * @module
 */
import { isTwinKind, type TwinKind } from "./kind.ts";

/** Imports every kind file in `dir`; throws naming the first file that is not a valid kind. */
export async function loadKinds(dir: string): Promise<Map<string, TwinKind>> {
  const root = await Deno.realPath(dir).catch(() => {
    throw new Error(`Twin kinds folder ${dir} does not exist (set DOPPEL_TWINS).`);
  });
  const files: string[] = [];
  for await (const entry of Deno.readDir(root)) {
    if (
      entry.isFile && /\.(ts|js|mjs)$/.test(entry.name) &&
      !/(_test|\.test|\.d)\.(ts|js)$/.test(entry.name)
    ) {
      files.push(entry.name);
    }
  }
  files.sort();
  const kinds = new Map<string, TwinKind>();
  for (const name of files) {
    const path = `${root}/${name}`;
    let module: Record<string, unknown>;
    try {
      module = await import(new URL(`file://${path}`).href);
    } catch (error) {
      throw new Error(`Twin kind file ${path} failed to load: ${(error as Error).message}`);
    }
    const kind = module.default;
    if (!isTwinKind(kind)) {
      throw new Error(
        `Twin kind file ${path} must export default defineTwin({...}); its default export is ${typeof kind}.`,
      );
    }
    if (kinds.has(kind.kind)) {
      throw new Error(
        `Twin kind file ${path} defines kind "${kind.kind}", already defined by another file.`,
      );
    }
    kinds.set(kind.kind, kind);
  }
  if (kinds.size === 0) throw new Error(`Twin kinds folder ${root} has no kind files.`);
  return kinds;
}
