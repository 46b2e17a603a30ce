// What our document adds for clients regenerated from it: the error body's status.
import type { components } from "./api";

type ErrorBody = components["schemas"]["ErrorResponseSchema.8c5cd6b"];

export function retryCanHelp(error: ErrorBody): boolean {
  const status: number = error.status;
  const code: string = error.code;
  return status >= 500 && code !== "NOT_SUPPORTED_BY_STORE";
}
