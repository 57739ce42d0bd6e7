/**
 * The package name and version, from `deno.json`, so `GET /`, logs and
 * compiled binaries all report the same.
 *
 * @module
 */

import denoJson from "../../deno.json" with { type: "json" };

/** Product name. */
export const NAME = "holepunch";

/** Version from `deno.json`. */
export const VERSION: string = denoJson.version;
