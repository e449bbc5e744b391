/**
 * The operator's bearer token: taken from `DOPPEL_ADMIN_TOKEN`, or generated on first start,
 * shown once, and kept only as a hash in KV.
 * @module
 */
import { keys } from "../storage/keys.ts";
import { randomSecret, sha256, timingSafeEqual } from "./secrets.ts";

/** Checks operator tokens. */
export class AdminAuth {
  #hash: string;

  /** The token's hash (what KV keeps): sessions signed in with it name it. */
  get tokenHash(): string {
    return this.#hash;
  }

  private constructor(hash: string) {
    this.#hash = hash;
  }

  /**
   * Sets up operator auth. With `configured`, that token is the one; otherwise the hash kept in
   * KV is used, and on first start a token is generated and returned once as `created`.
   */
  static async init(
    kv: Deno.Kv,
    configured?: string,
  ): Promise<{ auth: AdminAuth; created?: string }> {
    if (configured !== undefined && configured !== "") {
      if (configured.length < 16) {
        throw new Error("DOPPEL_ADMIN_TOKEN must be at least 16 characters long.");
      }
      return { auth: new AdminAuth(await sha256(configured)) };
    }
    const stored = await kv.get<string>(keys.adminToken());
    if (stored.value !== null) return { auth: new AdminAuth(stored.value) };
    const token = `doppel_${randomSecret(24)}`;
    const hash = await sha256(token);
    const result = await kv.atomic().check(stored).set(keys.adminToken(), hash).commit();
    if (!result.ok) {
      // Another instance created one first: use theirs.
      const again = await kv.get<string>(keys.adminToken());
      return { auth: new AdminAuth(again.value!) };
    }
    return { auth: new AdminAuth(hash), created: token };
  }

  /** Whether `token` is the operator token. */
  async verify(token: string): Promise<boolean> {
    return timingSafeEqual(await sha256(token), this.#hash);
  }
}
