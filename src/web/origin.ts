/**
 * Where a browser's request comes from: the origin it was sent to and the client's address, as
 * this server sees them or, behind a reverse proxy it is told to trust (`DOPPEL_TRUST_PROXY=1`),
 * as the proxy says in `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Forwarded-For`. Without
 * that trust those headers are ignored: any client can send them.
 * @module
 */
import type { Context } from "hono";
import { getConnInfo } from "hono/deno";

/** The origin the browser sent the request to, such as `https://doppel.example.com`. */
export function publicOrigin(c: Context, trustProxy: boolean): string {
  const url = new URL(c.req.url);
  if (!trustProxy) return url.origin;
  const proto = lastHop(c.req.header("x-forwarded-proto"))?.toLowerCase();
  const host = lastHop(c.req.header("x-forwarded-host"));
  const scheme = proto === "http" || proto === "https" ? proto : url.protocol.slice(0, -1);
  return `${scheme}://${host && /^[A-Za-z0-9.:[\]-]{1,255}$/.test(host) ? host : url.host}`;
}

/** Whether the browser reached this server over TLS (so cookies must be `Secure`). */
export function isSecure(c: Context, trustProxy: boolean): boolean {
  return publicOrigin(c, trustProxy).startsWith("https:");
}

/** The client's address: the connection's peer, or the one the trusted proxy saw. */
export function clientAddress(c: Context, trustProxy: boolean): string {
  const forwarded = trustProxy ? lastHop(c.req.header("x-forwarded-for")) : undefined;
  if (forwarded) return forwarded;
  try {
    return getConnInfo(c).remote.address ?? "unknown";
  } catch {
    return "unknown"; // No connection (requests made in-process, as tests do).
  }
}

/**
 * The last entry of a comma-separated forwarding header: the one the nearest proxy added (what
 * the client put before it proves nothing).
 */
function lastHop(header: string | undefined): string | undefined {
  const hops = header?.split(",").map((hop) => hop.trim()).filter((hop) => hop !== "");
  return hops?.[hops.length - 1];
}
