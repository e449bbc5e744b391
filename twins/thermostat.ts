/**
 * A thermostat: reports temperature and humidity, is told a target temperature, and looks after
 * itself. Running hot for half a minute raises a `major` alarm (pushed to operators) and commands
 * the device to cool; once it has been back under 28 °C for half a minute the alarm clears by
 * itself. A reading far too hot commands cooling at once, without waiting.
 * @module
 */
import { anomaly, defineTwin, noData, threshold, z } from "doppel";

/** Above this many °C a reading is far too hot, unless desired sets `maxTemperature`. */
const DEFAULT_MAX_TEMPERATURE = 40;
/** An emergency cooling command is sent at most this often (ms). */
const COOL_INTERVAL_MS = 60_000;

export default defineTwin({
  kind: "thermostat",
  description: "A room thermostat with a cooling mode.",

  telemetry: z.strictObject({
    temperature: z.number().min(-50).max(150),
    humidity: z.number().min(0).max(100).optional(),
  }),

  desired: z.strictObject({
    targetTemperature: z.number().min(5).max(35).optional(),
    maxTemperature: z.number().min(10).max(100).optional(),
    mode: z.enum(["heat", "cool", "auto", "off"]).optional(),
  }),

  reported: z.strictObject({
    targetTemperature: z.number().optional(),
    maxTemperature: z.number().optional(),
    mode: z.enum(["heat", "cool", "auto", "off"]).optional(),
    firmware: z.string().max(32).optional(),
  }),

  commands: {
    cool: z.strictObject({ targetTemperature: z.number().min(5).max(35) }),
    reboot: z.strictObject({ delaySeconds: z.number().int().min(0).max(3600).optional() }),
  },

  rules: [
    threshold({
      name: "overheat",
      metric: "temperature",
      above: 30,
      for: "30s",
      clear: { below: 28, for: "30s" },
      alarm: { severity: "major", message: "Running hot: above 30 °C for 30 s." },
      onRaise: [{ command: "cool", payload: { targetTemperature: 22 }, ttl: 300, timeout: 60 }],
    }),
    anomaly({
      name: "temperature-anomaly",
      metric: "temperature",
      z: 4,
      warmup: 30,
      // The sensor's noise floor: after a steady spell, a jump of 2 °C or more still counts.
      minStd: 0.5,
      alarm: { severity: "minor", message: "Temperature unlike its recent readings." },
    }),
    noData({
      name: "silent",
      for: "15m",
      alarm: { severity: "warning", message: "No telemetry for 15 minutes." },
    }),
  ],

  retention: { raw: "7d", "1m": "35d", "1h": "400d", "1d": "5y" },

  handlers: {
    onTelemetry(ctx, reading) {
      const max = (ctx.desired.maxTemperature as number | undefined) ?? DEFAULT_MAX_TEMPERATURE;
      if (reading.temperature <= max) return;
      const lastCoolAt = (ctx.memory.lastCoolAt as number | undefined) ?? 0;
      if (ctx.now - lastCoolAt < COOL_INTERVAL_MS) return;
      const target = (ctx.desired.targetTemperature as number | undefined) ?? 22;
      ctx.sendCommand("cool", { targetTemperature: Math.min(35, Math.max(5, target)) }, {
        ttl: 300,
        timeout: 60,
      });
      ctx.recordEvent("overheat", { temperature: reading.temperature, max });
      ctx.setMemory({ ...ctx.memory, lastCoolAt: ctx.now });
    },
  },
});
