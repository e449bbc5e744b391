/**
 * Operator sign-in for the dashboard: the operator token is exchanged for a session kept in KV
 * (only a hash of its id is stored) and an HttpOnly, SameSite=Strict cookie. Every
 * state-changing request made with the cookie must carry the session's CSRF token, and come
 * from this origin.
 * @module
 */
import type { Context } from "hono";
import { getCookie } from "hono/cookie";
import { DoppelError } from "../errors.ts";
import { randomSecret, sha256, timingSafeEqual } from "../registry/secrets.ts";
import { BODY_LIMITS, readForm } from "./http.ts";
import { publicOrigin } from "./origin.ts";

/** The session cookie's name. */
export const SESSION_COOKIE = "doppel_session";
/** How long a session lasts (12 hours). */
export const SESSION_MS = 12 * 3_600_000;

/** A signed-in operator's session. */
export interface Session {
  /** The token forms and scripts send back (`_csrf` field or `X-CSRF-Token` header). */
  csrf: string;
  /** When it was created. */
  createdAt: string;
  /** The operator token it was signed in with (its hash): a new token ends older sessions. */
  token?: string;
}

/** Dashboard sessions in KV. */
export class Sessions {
  #kv: Deno.Kv;
  #token: () => string;
  /** Whether a reverse proxy in front says where browsers are (see `origin.ts`). */
  readonly trustProxy: boolean;

  /**
   * Keeps sessions in `kv`; `token` is the operator token's hash now; `trustProxy` trusts a
   * reverse proxy's forwarding headers.
   */
  constructor(kv: Deno.Kv, token: () => string, trustProxy = false) {
    this.#kv = kv;
    this.#token = token;
    this.trustProxy = trustProxy;
  }

  /** Creates a session; returns its id (for the cookie) and the session. */
  async create(): Promise<{ id: string; session: Session }> {
    const id = randomSecret(32);
    const session: Session = {
      csrf: randomSecret(24),
      createdAt: new Date().toISOString(),
      token: this.#token(),
    };
    await this.#kv.set(["sessions", await sha256(id)], session, { expireIn: SESSION_MS });
    return { id, session };
  }

  /** The session with this id, if it exists and has not expired. */
  async get(id: string): Promise<Session | null> {
    const entry = await this.#kv.get<Session>(["sessions", await sha256(id)]);
    if (!entry.value) return null;
    if (Date.parse(entry.value.createdAt) + SESSION_MS < Date.now()) return null;
    // Signed in with an operator token that has since been replaced: no longer valid.
    if (entry.value.token !== this.#token()) return null;
    return entry.value;
  }

  /** Ends a session. */
  async delete(id: string): Promise<void> {
    await this.#kv.delete(["sessions", await sha256(id)]);
  }

  /** The session of a request's cookie, if any. */
  async fromRequest(c: Context): Promise<{ id: string; session: Session } | null> {
    const id = getCookie(c, SESSION_COOKIE);
    if (!id || id.length > 100) return null;
    const session = await this.get(id);
    return session ? { id, session } : null;
  }
}

/** Methods that change state and so need the CSRF token. */
const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/**
 * Checks a cookie-authenticated request: state-changing methods must come from this origin and
 * carry the session's CSRF token (header `X-CSRF-Token`, or form field `_csrf`).
 */
export async function checkCsrf(
  c: Context,
  session: Session,
  trustProxy: boolean,
): Promise<void> {
  if (!UNSAFE.has(c.req.method)) return;
  const origin = c.req.header("origin");
  if (origin !== undefined && origin !== publicOrigin(c, trustProxy)) {
    throw new DoppelError("forbidden", `Requests from origin ${origin} are not allowed.`);
  }
  let token = c.req.header("x-csrf-token");
  if (token === undefined && /form/.test(c.req.header("content-type") ?? "")) {
    token = (await readForm(c.req.raw, BODY_LIMITS.default)).get("_csrf") ?? undefined;
  }
  if (!token || !timingSafeEqual(token, session.csrf)) {
    throw new DoppelError("forbidden", "The CSRF token is missing or wrong; reload the page.");
  }
}
