/**
 * A thermostat: reports temperature and humidity, is told a target temperature, and is commanded
 * to cool down when it runs hot.
 * @module
 */
import { defineTwin, z } from "doppel";

/** Above this many °C a reading counts as hot, unless desired sets `maxTemperature`. */
const DEFAULT_MAX_TEMPERATURE = 30;
/** A new cooling command is sent at most this often (ms) while it stays hot. */
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

  handlers: {
    onTelemetry(ctx, reading) {
      const max = (ctx.desired.maxTemperature as number | undefined) ??
        DEFAULT_MAX_TEMPERATURE;
      if (reading.temperature <= max) return;
      const lastCoolAt = (ctx.memory.lastCoolAt as number | undefined) ?? 0;
      if (ctx.now - lastCoolAt < COOL_INTERVAL_MS) return;
      const target = (ctx.desired.targetTemperature as number | undefined) ?? max - 5;
      ctx.sendCommand("cool", { targetTemperature: Math.min(35, Math.max(5, target)) }, {
        ttl: 300,
        timeout: 60,
      });
      ctx.recordEvent("overheat", { temperature: reading.temperature, max });
      ctx.setMemory({ ...ctx.memory, lastCoolAt: ctx.now });
    },
  },
});
