/**
 * What twin kind files import: `import { defineTwin, z } from "doppel";`.
 * @module
 */
export { z } from "zod";
export { defineTwin } from "./twin/kind.ts";
export { anomaly, noData, rateOfChange, threshold } from "./rules/rules.ts";
export type { Action, Rule } from "./rules/rules.ts";
export type { Severity } from "./rules/alarms.ts";
export type { CommandOptions, TwinContext, TwinDefinition, TwinKind } from "./twin/kind.ts";
export type { Json, JsonObject } from "./twin/json.ts";
