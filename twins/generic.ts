/**
 * A permissive kind for devices without a schema yet: any JSON object as telemetry, desired or
 * reported state, and any command.
 * @module
 */
import { defineTwin, z } from "doppel";

export default defineTwin({
  kind: "generic",
  description: "Any device: every JSON object is accepted.",
  telemetry: z.record(z.string(), z.json()),
  desired: z.record(z.string(), z.json()),
  reported: z.record(z.string(), z.json()),
});
