/**
 * Zod schemas of the API's request bodies: what validates requests is also what will document
 * them.
 * @module
 */
import { z } from "zod";
import { COMMAND_LIMITS } from "../commands/model.ts";
import { DeviceId, TagName, TagsSchema } from "../registry/devices.ts";
import type { Json } from "../twin/json.ts";

/** JSON values. */
export const JsonValue: z.ZodType<Json> = z.json() as z.ZodType<Json>;

/** `POST /api/v1/devices`. */
export const RegisterDevice = z.strictObject({
  id: DeviceId.optional(),
  kind: z.string().min(1),
  tags: TagsSchema.optional(),
  parent: DeviceId.nullable().optional(),
});

/** `PATCH /api/v1/devices/{id}`: tags are a merge patch (a null removes one). */
export const UpdateDevice = z.strictObject({
  tags: z.record(TagName, z.string().max(256).nullable()).optional()
    .describe("a merge patch: at most 32 tags once applied"),
  enabled: z.boolean().optional(),
}).refine((body) => body.tags !== undefined || body.enabled !== undefined, {
  message: "give tags or enabled",
}).describe("give tags, enabled or both");

/** `POST /api/v1/devices/{id}/commands`. */
export const CreateCommand = z.strictObject({
  name: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.-]+$/, "use A-Z a-z 0-9 _ . -"),
  payload: JsonValue.optional(),
  ttl: z.number().int().min(1).max(COMMAND_LIMITS.maxTtl).optional(),
  timeout: z.number().int().min(1).max(COMMAND_LIMITS.maxTimeout).optional(),
});

/** `POST /device/v1/commands/{commandId}/result`. */
export const CommandResult = z.strictObject({
  status: z.enum(["succeeded", "failed"]),
  result: JsonValue.optional(),
});
