/**
 * Web push to operators: VAPID keys (from the environment, or generated at first start and kept
 * in KV with the private key sealed), push subscriptions registered through the API, and a
 * notifier that pushes new alarms of the chosen severities once they have committed. A
 * subscription the push service reports gone (404 or 410) is removed; a failed push is logged
 * and never holds up a twin.
 * @module
 */
import webpush from "web-push";
import type { EventBus } from "../events/bus.ts";
import type { Logger } from "../log.ts";
import type { KeyVault } from "../registry/secrets.ts";
import { sha256 } from "../registry/secrets.ts";
import type { Severity } from "../rules/alarms.ts";
import { keys } from "../storage/keys.ts";
import type { Notice } from "../twin/turn.ts";

/** A browser's push subscription, as `PushSubscription.toJSON()` gives it. */
export interface PushSubscriptionJson {
  /** The push service URL. */
  endpoint: string;
  /** The browser's keys. */
  keys: { p256dh: string; auth: string };
}

/** A stored subscription. */
export interface StoredSubscription extends PushSubscriptionJson {
  /** Its id (a hash of the endpoint). */
  id: string;
  /** Severities it wants; all configured ones when absent. */
  severities?: Severity[];
  /** When it was registered. */
  createdAt: string;
}

/** VAPID details. */
export interface Vapid {
  /** Public key (base64url), for the browser's `applicationServerKey`. */
  publicKey: string;
  /** Private key (base64url). */
  privateKey: string;
  /** Contact, `mailto:` or `https:`. */
  subject: string;
}

/** Push outcomes since start, for metrics. */
export interface PushStats {
  /** Delivered to the push service (2xx). */
  sent: number;
  /** Refused or failed. */
  failed: number;
  /** Subscriptions removed because the service said they are gone. */
  removed: number;
}

/** Loads VAPID keys from `configured`, or from KV, generating and keeping them on first start. */
export async function loadVapid(
  kv: Deno.Kv,
  vault: KeyVault,
  configured: Partial<Vapid>,
): Promise<Vapid> {
  const subject = configured.subject || "mailto:operators@doppel.invalid";
  // Web push needs a contact the push services accept: checked here, or every push would fail.
  if (!/^(mailto:\S+@\S+|https:\/\/\S+)$/.test(subject)) {
    throw new Error(
      `The VAPID subject ${
        JSON.stringify(subject)
      } is invalid: use a mailto: address or an https: URL.`,
    );
  }
  if (configured.publicKey && configured.privateKey) {
    return { publicKey: configured.publicKey, privateKey: configured.privateKey, subject };
  }
  const stored = await kv.get<{ publicKey: string; sealedPrivateKey: string }>(keys.vapid());
  if (stored.value) {
    return {
      publicKey: stored.value.publicKey,
      privateKey: await vault.open(stored.value.sealedPrivateKey),
      subject,
    };
  }
  const generated = webpush.generateVAPIDKeys();
  const value = {
    publicKey: generated.publicKey,
    sealedPrivateKey: await vault.seal(generated.privateKey),
  };
  const result = await kv.atomic().check(stored).set(keys.vapid(), value).commit();
  if (!result.ok) return loadVapid(kv, vault, configured); // Another instance made them first.
  return { ...generated, subject };
}

/** Registers, lists and removes subscriptions, and pushes alarms to them. */
export class PushNotifier {
  #kv: Deno.Kv;
  #vapid: Vapid;
  #logger: Logger;
  #severities: ReadonlySet<Severity>;
  #fetch: typeof fetch;
  #inFlight = new Set<Promise<void>>();
  #unsubscribe: (() => void) | undefined;
  /** Push outcomes since start. */
  readonly stats: PushStats = { sent: 0, failed: 0, removed: 0 };

  /** Creates a notifier; {@link listen} starts it. */
  constructor(deps: {
    kv: Deno.Kv;
    vapid: Vapid;
    logger: Logger;
    severities: Iterable<Severity>;
    fetch?: typeof fetch;
  }) {
    this.#kv = deps.kv;
    this.#vapid = deps.vapid;
    this.#logger = deps.logger;
    this.#severities = new Set(deps.severities);
    this.#fetch = deps.fetch ?? fetch;
  }

  /** The VAPID public key browsers subscribe with. */
  get publicKey(): string {
    return this.#vapid.publicKey;
  }

  /** Pushes new alarms of the configured severities as they commit. */
  listen(bus: EventBus): void {
    this.#unsubscribe = bus.subscribe("*", (notice) => this.#onNotice(notice));
  }

  /** Stores a subscription (the same endpoint again replaces it). */
  async subscribe(
    subscription: PushSubscriptionJson,
    severities?: Severity[],
  ): Promise<StoredSubscription> {
    const id = (await sha256(subscription.endpoint)).slice(0, 22);
    const stored: StoredSubscription = {
      id,
      endpoint: subscription.endpoint,
      keys: { p256dh: subscription.keys.p256dh, auth: subscription.keys.auth },
      ...(severities ? { severities } : {}),
      createdAt: new Date().toISOString(),
    };
    await this.#kv.set(keys.pushSubscription(id), stored);
    return stored;
  }

  /** Every subscription. */
  async list(): Promise<StoredSubscription[]> {
    const out: StoredSubscription[] = [];
    for await (
      const entry of this.#kv.list<StoredSubscription>({ prefix: ["push_subscriptions"] })
    ) {
      out.push(entry.value);
    }
    return out;
  }

  /** Removes a subscription; whether it existed. */
  async unsubscribe(id: string): Promise<boolean> {
    const entry = await this.#kv.get(keys.pushSubscription(id));
    if (entry.versionstamp === null) return false;
    await this.#kv.delete(keys.pushSubscription(id));
    return true;
  }

  /** Sends one notification to every subscription that wants `severity`; resolves when done. */
  async push(payload: Record<string, unknown>, severity: Severity): Promise<void> {
    const subscriptions = await this.list();
    await Promise.all(
      subscriptions
        .filter((s) => !s.severities || s.severities.includes(severity))
        .map((s) => this.#send(s, payload)),
    );
  }

  /** Waits for pushes under way (for shutdown and tests). */
  async drain(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all(this.#inFlight);
  }

  /** Stops listening and waits for pushes under way. */
  async close(): Promise<void> {
    this.#unsubscribe?.();
    await this.drain();
  }

  #onNotice(notice: Notice): void {
    if (notice.type !== "alarm.changed" || notice.change !== "raised") return;
    const alarm = notice.alarm;
    if (!this.#severities.has(alarm.severity)) return;
    const payload = {
      title: `${alarm.severity.toUpperCase()}: ${alarm.type} on ${alarm.deviceId}`,
      body: alarm.message,
      alarm,
      url: `/devices/${encodeURIComponent(alarm.deviceId)}`,
    };
    // Fire and forget: the twin has committed already, and a push must never hold it up.
    const run = this.push(payload, alarm.severity).catch((error) =>
      this.#logger.log("error", "push", `Pushing alarm ${alarm.id} failed: ${error}`, {
        deviceId: alarm.deviceId,
      })
    );
    this.#inFlight.add(run);
    run.finally(() => this.#inFlight.delete(run));
  }

  async #send(subscription: StoredSubscription, payload: Record<string, unknown>): Promise<void> {
    let response: Response;
    let details: ReturnType<typeof webpush.generateRequestDetails>;
    try {
      details = webpush.generateRequestDetails(subscription, JSON.stringify(payload), {
        vapidDetails: this.#vapid,
        TTL: 3600,
        urgency: "high",
      });
    } catch (error) {
      if (usableKeys(subscription.keys)) {
        // Not the subscription's fault (say, the VAPID settings): it stays; this push failed.
        this.stats.failed++;
        this.#logger.log("error", "push", `A push could not be prepared: ${error}`);
        return;
      }
      // Nothing can ever be encrypted to this subscription (its keys are unusable): it goes,
      // rather than failing on every alarm.
      this.stats.removed++;
      await this.#kv.delete(keys.pushSubscription(subscription.id));
      this.#logger.log(
        "warn",
        "push",
        `Subscription ${subscription.id} cannot be sent to (${error}); removed it.`,
      );
      return;
    }
    try {
      response = await this.#fetch(details.endpoint, {
        method: details.method,
        headers: details.headers as Record<string, string>,
        body: details.body as unknown as BodyInit,
        signal: AbortSignal.timeout(10_000),
      });
      await response.body?.cancel();
    } catch (error) {
      this.stats.failed++;
      this.#logger.log(
        "warn",
        "push",
        `Push to ${new URL(subscription.endpoint).host} failed: ${error}`,
      );
      return;
    }
    if (response.ok) {
      this.stats.sent++;
    } else if (response.status === 404 || response.status === 410) {
      this.stats.removed++;
      await this.#kv.delete(keys.pushSubscription(subscription.id));
      this.#logger.log("info", "push", `Subscription ${subscription.id} is gone; removed it.`);
    } else {
      this.stats.failed++;
      this.#logger.log(
        "warn",
        "push",
        `Push service ${new URL(subscription.endpoint).host} answered ${response.status}.`,
      );
    }
  }
}

/** Whether a subscription's keys are a P-256 public key and a 16-byte secret, base64url. */
export function usableKeys(keys: { p256dh: string; auth: string }): boolean {
  return isP256PublicKey(keys.p256dh) && isAuthSecret(keys.auth);
}

/** Whether `text` is a base64url P-256 public key, uncompressed (65 bytes, the first 0x04). */
export function isP256PublicKey(text: string): boolean {
  const bytes = base64urlBytes(text);
  return bytes?.length === 65 && bytes[0] === 4;
}

/** Whether `text` is a base64url 16-byte secret (a subscription's `auth`). */
export function isAuthSecret(text: string): boolean {
  return base64urlBytes(text)?.length === 16;
}

/** The bytes of base64url `text` (padding optional), or `null` if it is not base64url. */
function base64urlBytes(text: string): Uint8Array | null {
  if (!/^[A-Za-z0-9_-]*={0,2}$/.test(text)) return null;
  try {
    const binary = atob(text.replace(/=+$/, "").replaceAll("-", "+").replaceAll("_", "/"));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}
