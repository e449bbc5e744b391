/**
 * Secrets: random device keys, their encryption at rest under the server secret (AES-GCM, so
 * signed tokens derived from a key can be verified later), hashing, and constant-time comparison.
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Base64url without padding. */
export function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** Decodes base64url (with or without padding). */
export function fromBase64url(text: string): Uint8Array {
  const base64 = text.replaceAll("-", "+").replaceAll("_", "/");
  const binary = atob(base64 + "=".repeat((4 - base64.length % 4) % 4));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** A new random secret of `bytes` bytes, base64url. */
export function randomSecret(bytes = 32): string {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

/** Compares two strings in time that depends only on their lengths. */
export function timingSafeEqual(a: string, b: string): boolean {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/** SHA-256 of a string, base64url. */
export async function sha256(text: string): Promise<string> {
  return base64url(new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text))));
}

/** Encrypts and decrypts device keys under a key derived from the server secret. */
export class KeyVault {
  #key: CryptoKey;
  // Decrypted keys by ciphertext: authentication is on every request, decryption need not be.
  #cache = new Map<string, string>();

  private constructor(key: CryptoKey) {
    this.#key = key;
  }

  /** Derives the vault's AES-256-GCM key from the server secret with HKDF-SHA256. */
  static async fromSecret(secret: string): Promise<KeyVault> {
    if (secret.length < 16) {
      throw new Error("DOPPEL_SECRET must be at least 16 characters long.");
    }
    const material = await crypto.subtle.importKey("raw", encoder.encode(secret), "HKDF", false, [
      "deriveKey",
    ]);
    const key = await crypto.subtle.deriveKey(
      {
        name: "HKDF",
        hash: "SHA-256",
        salt: encoder.encode("doppel"),
        info: encoder.encode("device-keys-v1"),
      },
      material,
      { name: "AES-GCM", length: 256 },
      false,
      ["encrypt", "decrypt"],
    );
    return new KeyVault(key);
  }

  /** Encrypts a device key; the result is `iv.ciphertext`, base64url. */
  async seal(plain: string): Promise<string> {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const sealed = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv },
      this.#key,
      encoder.encode(plain),
    );
    const text = `${base64url(iv)}.${base64url(new Uint8Array(sealed))}`;
    this.#cache.set(text, plain);
    return text;
  }

  /** Decrypts what {@link seal} made. Throws if it was sealed under another secret. */
  async open(sealed: string): Promise<string> {
    const cached = this.#cache.get(sealed);
    if (cached !== undefined) return cached;
    const [iv, data] = sealed.split(".");
    const plain = decoder.decode(
      await crypto.subtle.decrypt(
        { name: "AES-GCM", iv: fromBase64url(iv) as Uint8Array<ArrayBuffer> },
        this.#key,
        fromBase64url(data) as Uint8Array<ArrayBuffer>,
      ),
    );
    if (this.#cache.size > 100_000) this.#cache.clear();
    this.#cache.set(sealed, plain);
    return plain;
  }
}
