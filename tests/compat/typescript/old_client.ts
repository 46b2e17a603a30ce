// A small client written against the old service's generated types: `./api` is what
// openapi-typescript made of a document. It must type-check against the old document's types
// and, unchanged, against ours.
import type { components, operations } from "./api";

type Json<Answer> = Answer extends { content: { "application/json": infer Body } } ? Body : never;

type ListOperation = operations["get__api_configs"];
type GetOperation = operations["get__api_configs_{mac_address}"];
type PutOperation = operations["put__api_configs_{mac_address}"];
type DeleteOperation = operations["delete__api_configs_{mac_address}"];

type ConfigList = Json<ListOperation["responses"][200]>;
type Config = Json<GetOperation["responses"][200]>;
type Summary = components["schemas"]["ConfigListResponseSchema.6be28b6.ConfigSummarySchema"];
type SaveRequest = NonNullable<PutOperation["requestBody"]>["content"]["application/json"];
// The web UI sends allow_overwrite beside the content (the old document did not list it).
type SaveWithOverwrite = SaveRequest & { allow_overwrite?: boolean };
type ErrorBody = components["schemas"]["ErrorResponseSchema.8c5cd6b"];
type NotFound = Json<GetOperation["responses"][404]>;
type BadRequest = Json<PutOperation["responses"][400]>;

declare function send(method: string, url: string, body?: unknown): Promise<unknown>;

function configUrl(path: DeleteOperation["parameters"]["path"]): string {
  return `/api/configs/${encodeURIComponent(path.mac_address)}`;
}

export async function listDevices(): Promise<string[]> {
  const list = (await send("GET", "/api/configs")) as ConfigList;
  const count: number = list.count;
  return list.configs.map((summary: Summary): string => {
    const name: string | null | undefined = summary.device_name;
    const entity: string | null | undefined = summary.device_entity_id;
    const ota: boolean | null | undefined = summary.enable_ota;
    return `${summary.mac_address} ${name ?? ""} ${entity ?? ""} ${String(ota)} of ${count}`;
  });
}

export async function getConfig(
  mac: GetOperation["parameters"]["path"]["mac_address"],
): Promise<Record<string, unknown>> {
  const config = (await send("GET", configUrl({ mac_address: mac }))) as Config;
  const mac_address: string = config.mac_address;
  return { ...config.content, mac_address };
}

export async function createConfig(mac: string, content: Record<string, unknown>): Promise<Config> {
  const body: SaveWithOverwrite = { content, allow_overwrite: false };
  return (await send("PUT", configUrl({ mac_address: mac }), body)) as Config;
}

export async function deleteConfig(mac: string): Promise<void> {
  await send("DELETE", configUrl({ mac_address: mac }));
}

export function describeError(error: ErrorBody | NotFound | BadRequest): string {
  const message: string = error.error;
  const code: string | null | undefined = error.code;
  const correlation: string | null | undefined = error.correlationId;
  const details: { [key: string]: unknown } | null | undefined = error.details;
  return `${message} [${code ?? "?"}] (${correlation ?? "-"}) ${JSON.stringify(details)}`;
}
