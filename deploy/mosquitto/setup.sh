#!/usr/bin/env bash
# Creates Mosquitto's dynamic-security file with the admin user Doppel's bridge connects as.
# Usage: deploy/mosquitto/setup.sh <admin-password> [dynsec-file]
set -euo pipefail
password=${1:?usage: setup.sh <admin-password> [dynsec-file]}
file=${2:-/var/lib/mosquitto/dynamic-security.json}
mosquitto_ctrl dynsec init "$file" doppel-admin "$password"
# Give the admin user the bridge's role now: Mosquitto disconnects a client whose roles change,
# so the bridge granting it to itself at run time would drop its own connections once.
deno eval --quiet '
  const [file] = Deno.args;
  const config = JSON.parse(Deno.readTextFileSync(file));
  config.roles.push({
    rolename: "doppel-bridge",
    acls: [
      { acltype: "publishClientSend", topic: "devices/#", allow: true },
      { acltype: "subscribePattern", topic: "devices/#", allow: true },
      { acltype: "publishClientReceive", topic: "devices/#", allow: true },
    ],
  });
  config.clients.find((c) => c.username === "doppel-admin").roles.push({ rolename: "doppel-bridge" });
  Deno.writeTextFileSync(file, JSON.stringify(config, null, 2));
' "$file"
# Mosquitto started as root switches to user mosquitto, which must read the file.
if id mosquitto >/dev/null 2>&1; then chown mosquitto: "$file"; fi
chmod 600 "$file"
echo "Now start Doppel with MQTT_URL=mqtt://doppel-admin:<password>@<host>:1883 MQTT_DYNSEC=1"
