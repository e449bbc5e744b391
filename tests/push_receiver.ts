/**
 * A browser's side of web push, for tests: subscription keys made as a browser makes them, and
 * the decryption of an aes128gcm push body (RFC 8291 over RFC 8188) and of the VAPID header.
 * @module
 */
import { assert, assertEquals } from "./assert.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

const encoder = new TextEncoder();

/** Base64url without padding. */
export function b64url(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_")
    .replace(/=+$/, "");
}

/** Decodes base64url. */
export function fromB64url(text: string): Uint8Array<ArrayBuffer> {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "=".repeat((4 - b64.length % 4) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** Joins byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** What a browser keeps for one push subscription. */
export interface BrowserKeys {
  privateKey: CryptoKey;
  publicRaw: Uint8Array<ArrayBuffer>;
  auth: Uint8Array<ArrayBuffer>;
  /** As `PushSubscription.toJSON().keys`. */
  json: { p256dh: string; auth: string };
}

/** Makes subscription keys the way a browser does. */
export async function browserKeys(): Promise<BrowserKeys> {
  const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
    "deriveBits",
  ]);
  const publicRaw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const auth = crypto.getRandomValues(new Uint8Array(16));
  return {
    privateKey: pair.privateKey,
    publicRaw,
    auth,
    json: { p256dh: b64url(publicRaw), auth: b64url(auth) },
  };
}

/** HKDF-SHA256. */
export async function hkdf(
  salt: Uint8Array<ArrayBuffer>,
  ikm: Uint8Array<ArrayBuffer>,
  info: Uint8Array<ArrayBuffer>,
  bytes: number,
): Promise<Uint8Array<ArrayBuffer>> {
  const key = await crypto.subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(
    await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, key, bytes * 8),
  );
}

/** Decrypts an aes128gcm push message body (RFC 8291 over RFC 8188) as the browser would. */
export async function decryptPush(
  body: Uint8Array<ArrayBuffer>,
  keys: BrowserKeys,
): Promise<string> {
  const salt = body.slice(0, 16);
  const rs = new DataView(body.buffer, body.byteOffset + 16, 4).getUint32(0);
  const idlen = body[20];
  assertEquals(idlen, 65, "the keyid is the sender's uncompressed P-256 public key");
  const senderPublic = body.slice(21, 21 + idlen);
  const record = body.slice(21 + idlen);
  assert(record.length <= rs, "one record");
  const sender = await crypto.subtle.importKey(
    "raw",
    senderPublic,
    { name: "ECDH", namedCurve: "P-256" },
    false,
    [],
  );
  const ecdh = new Uint8Array(
    await crypto.subtle.deriveBits({ name: "ECDH", public: sender }, keys.privateKey, 256),
  );
  const ikm = await hkdf(
    keys.auth,
    ecdh,
    concat(encoder.encode("WebPush: info\0"), keys.publicRaw, senderPublic),
    32,
  );
  const cek = await hkdf(salt, ikm, encoder.encode("Content-Encoding: aes128gcm\0"), 16);
  const nonce = await hkdf(salt, ikm, encoder.encode("Content-Encoding: nonce\0"), 12);
  const key = await crypto.subtle.importKey("raw", cek, "AES-GCM", false, ["decrypt"]);
  const padded = new Uint8Array(
    await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce }, key, record),
  );
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end--;
  assertEquals(padded[end], 2, "the last record ends with delimiter 0x02");
  return new TextDecoder().decode(padded.slice(0, end));
}

/** Checks the VAPID `Authorization: vapid t=<JWT>, k=<key>` header; returns the JWT claims. */
export async function verifyVapid(header: string, publicKey: string): Promise<Json> {
  const match = /^vapid t=([^,\s]+),\s*k=([^,\s]+)$/.exec(header);
  assert(match, `VAPID authorization header: ${header}`);
  assertEquals(match[2], publicKey, "k is the server's VAPID public key");
  const [head, claims, signature] = match[1].split(".");
  const key = await crypto.subtle.importKey(
    "raw",
    fromB64url(publicKey),
    { name: "ECDSA", namedCurve: "P-256" },
    false,
    ["verify"],
  );
  const valid = await crypto.subtle.verify(
    { name: "ECDSA", hash: "SHA-256" },
    key,
    fromB64url(signature),
    encoder.encode(`${head}.${claims}`),
  );
  assert(valid, "the JWT is signed with the VAPID key");
  assertEquals(JSON.parse(new TextDecoder().decode(fromB64url(head))).alg, "ES256");
  return JSON.parse(new TextDecoder().decode(fromB64url(claims)));
}
