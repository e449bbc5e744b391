/**
 * Keeps Mosquitto's dynamic-security plugin in step with the registry when Doppel bridges to an
 * external broker: every device is a broker client (username and client id = device id, password =
 * its current key) with a role allowing only its own `devices/{id}/#`; a gateway also holds its
 * children's roles. Commands go to `$CONTROL/dynamic-security/v1`; each waits for its response.
 *
 * Mosquitto keeps one password per client, so after a key rotation only the newest key works at
 * the broker (the HTTP and embedded endpoints accept the previous one until the next rotation).
 * @module
 */
import type { MqttClient } from "mqtt";
import type { Logger } from "../log.ts";
import type { DeviceRecord, Registry, RegistryEvent } from "../registry/devices.ts";

const CONTROL = "$CONTROL/dynamic-security/v1";
const RESPONSE = `${CONTROL}/response`;
/** How long one dynsec command may take (ms). */
const COMMAND_TIMEOUT_MS = 10_000;

type Command = Record<string, unknown> & { command: string };

/** One response on `$CONTROL/dynamic-security/v1/response`. */
interface DynsecResponse {
  correlationData?: string;
  error?: string;
  data?: unknown;
}

/** The role that lets one device use its own topics. */
export function deviceRole(id: string): string {
  return `doppel-device-${id}`;
}

/** Sends dynamic-security commands over a connected MQTT client with admin rights. */
export class DynsecSync {
  #client: MqttClient;
  #registry: Registry;
  #logger: Logger;
  #pending = new Map<string, (response: DynsecResponse) => void>();
  #seq = 0;
  #subscribed: Promise<unknown> | undefined;
  // The last change under way per device, so changes to one device apply in order.
  #queues = new Map<string, Promise<void>>();

  /** Uses `client` (connected as a dynsec admin). */
  constructor(client: MqttClient, registry: Registry, logger: Logger) {
    this.#client = client;
    this.#registry = registry;
    this.#logger = logger;
    client.on("message", (topic, payload) => {
      if (topic !== RESPONSE) return;
      try {
        const body = JSON.parse(payload.toString()) as { responses?: DynsecResponse[] };
        for (const response of body.responses ?? []) {
          const id = response.correlationData;
          if (id) this.#pending.get(id)?.(response);
        }
      } catch (error) {
        this.#logger.log("warn", "dynsec", `Unreadable dynsec response: ${error}`);
      }
    });
  }

  /** Gives the bridge's own user the right to publish to device topics. */
  async grantBridge(username: string): Promise<void> {
    await this.#run([{
      command: "createRole",
      rolename: "doppel-bridge",
      acls: [
        { acltype: "publishClientSend", topic: "devices/#", allow: true },
        { acltype: "subscribePattern", topic: "devices/#", allow: true },
        { acltype: "publishClientReceive", topic: "devices/#", allow: true },
      ],
    }], ["Role already exists"]);
    await this.#addRole(username, "doppel-bridge");
  }

  /**
   * Adds a role to a client unless it has it (Mosquitto 2.0 answers a repeated addClientRole with
   * "Internal error", and kicks a client whose roles change).
   */
  async #addRole(username: string, rolename: string): Promise<void> {
    const [found] = await this.#run([{ command: "getClient", username }]);
    const roles = (found.data as { client?: { roles?: Array<{ rolename: string }> } } | undefined)
      ?.client?.roles ?? [];
    if (roles.some((role) => role.rolename === rolename)) return;
    await this.#run([{ command: "addClientRole", username, rolename }]);
  }

  /**
   * Follows one registry change. Changes to one device are applied in the order they happened
   * (a disable right after a registration must not be overtaken by it); `timeoutMs` bounds the
   * wait, not the work.
   */
  apply(event: RegistryEvent, timeoutMs = 10_000): Promise<void> {
    const id = event.device.id;
    const previous = this.#queues.get(id) ?? Promise.resolve();
    const run = previous.catch(() => {}).then(() => this.#apply(event));
    this.#queues.set(id, run);
    run.finally(() => {
      if (this.#queues.get(id) === run) this.#queues.delete(id);
    }).catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the broker did not confirm within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    return Promise.race([run, timeout]).finally(() => clearTimeout(timer));
  }

  async #apply(event: RegistryEvent): Promise<void> {
    const device = event.device;
    switch (event.type) {
      case "registered":
        await this.#ensure(device, event.key);
        break;
      case "key_rotated":
        await this.#run([{
          command: "setClientPassword",
          username: device.id,
          password: event.key,
        }]);
        break;
      case "updated":
        await this.#run([{
          command: device.enabled ? "enableClient" : "disableClient",
          username: device.id,
        }]);
        break;
      case "deleted":
        await this.#remove(device.id);
        break;
    }
  }

  /**
   * Makes the broker agree with the registry for every device (on each bridge connect): every
   * device's client and role first, then gateways' roles over their children (a child may be
   * listed before its gateway), and last the broker clients of devices the registry no longer
   * has (deleted while the broker was away).
   */
  async reconcile(): Promise<number> {
    // A subscription is checked once, when made, but outlives the role that allowed it (a
    // gateway's over a child since deleted): nothing is delivered to a client unless one of its
    // roles still allows it. (Devices' and the bridge's roles allow their own topics.)
    await this.#run([{
      command: "setDefaultACLAccess",
      acls: [{ acltype: "publishClientReceive", allow: false }],
    }]);
    let count = 0;
    const ids = new Set<string>();
    const children: DeviceRecord[] = [];
    for await (const device of this.#registry.all()) {
      const alone = { ...device, parent: null };
      await this.apply({ type: "registered", device: alone, key: "" }, 30_000).catch(async () => {
        // A key is needed only to create a missing client: fetch it then.
        const [key] = await this.#registry.plainKeys(device);
        await this.apply({ type: "registered", device: alone, key }, 30_000);
      });
      ids.add(device.id);
      if (device.parent) children.push(device);
      count++;
    }
    for (const child of children) await this.#addRole(child.parent!, deviceRole(child.id));
    const [listed] = await this.#run([{ command: "listClients", verbose: true }]);
    const clients = (listed.data as {
      clients?: Array<{ username: string; roles?: Array<{ rolename: string }> }>;
    } | undefined)?.clients ?? [];
    for (const client of clients) {
      // Only clients made for devices (they hold their own device role), never other users.
      const own = (client.roles ?? []).some((r) => r.rolename === deviceRole(client.username));
      if (own && !ids.has(client.username)) await this.#remove(client.username);
    }
    return count;
  }

  /** Removes a device's broker client and role, if they are there. */
  async #remove(id: string): Promise<void> {
    await this.#run([
      { command: "deleteClient", username: id },
      { command: "deleteRole", rolename: deviceRole(id) },
    ], ["Client not found", "Role not found"]);
  }

  /**
   * Creates the device's role and client if missing, and brings an existing one in step (enabled
   * state, roles) without touching its password: Mosquitto disconnects a client whose password is
   * set, so a reconcile must not knock the fleet off.
   */
  async #ensure(device: DeviceRecord, key: string): Promise<void> {
    const id = device.id;
    await this.#run([{
      command: "createRole",
      rolename: deviceRole(id),
      acls: [
        { acltype: "publishClientSend", topic: `devices/${id}/#`, allow: true },
        { acltype: "subscribePattern", topic: `devices/${id}/#`, allow: true },
        { acltype: "publishClientReceive", topic: `devices/${id}/#`, allow: true },
      ],
    }], ["Role already exists"]);
    const found = await this.#brokerClient(id);
    if (!found) {
      if (!key) throw new Error(`Device ${id} has no broker client yet and needs its key.`);
      await this.#run([{
        command: "createClient",
        username: id,
        password: key,
        clientid: id,
        roles: [{ rolename: deviceRole(id) }],
      }]);
      if (!device.enabled) await this.#run([{ command: "disableClient", username: id }]);
    } else {
      if (found.disabled === device.enabled) {
        await this.#run([{
          command: device.enabled ? "enableClient" : "disableClient",
          username: id,
        }]);
      }
      if (!found.roles.includes(deviceRole(id))) await this.#addRole(id, deviceRole(id));
    }
    if (device.parent) await this.#addRole(device.parent, deviceRole(id));
  }

  /** A broker client's state, or `null` if there is none. */
  async #brokerClient(username: string): Promise<{ disabled: boolean; roles: string[] } | null> {
    const [found] = await this.#run([{ command: "getClient", username }], ["Client not found"]);
    const client = (found.data as {
      client?: { disabled?: boolean; roles?: Array<{ rolename: string }> };
    } | undefined)?.client;
    if (!client) return null;
    return {
      disabled: client.disabled === true,
      roles: (client.roles ?? []).map((role) => role.rolename),
    };
  }

  /** Runs commands; an error response fails unless its text is one of `tolerated`. */
  async #run(commands: Command[], tolerated: string[] = []): Promise<DynsecResponse[]> {
    this.#subscribed ??= this.#client.subscribeAsync(RESPONSE, { qos: 1 });
    await this.#subscribed;
    const waits = commands.map((command) => {
      const id = `doppel-${++this.#seq}`;
      command.correlationData = id;
      return new Promise<DynsecResponse>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new Error(`Dynsec command ${command.command} got no response.`));
        }, COMMAND_TIMEOUT_MS);
        this.#pending.set(id, (response) => {
          clearTimeout(timer);
          this.#pending.delete(id);
          if (response.error && !tolerated.includes(response.error)) {
            reject(new Error(`Dynsec command ${command.command} failed: ${response.error}`));
          } else resolve(response);
        });
      });
    });
    const answers = Promise.all(waits);
    // While the broker is away, publishing waits and the answers may time out first: their
    // failure is this call's, not an unhandled rejection that would end the process.
    answers.catch(() => {});
    await this.#client.publishAsync(CONTROL, JSON.stringify({ commands }), { qos: 1 });
    return await answers;
  }
}
