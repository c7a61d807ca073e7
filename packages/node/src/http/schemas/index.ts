/**
 * Pieces the routes' OpenAPI schemas share (see ../openapi.ts for how they are used).
 *
 * The JSON bodies themselves are defined once in @kvstore/protocol (src/api.ts), where the
 * SDK's types come from; this module only adds what the HTTP description needs around them:
 * path parameters, query strings, raw (non-JSON) bodies and the error body's shared name.
 */
import { errorBodySchema } from '@kvstore/protocol'

/** The name of the shared error body in the document (`#/components/schemas/KvError`). */
export const errorSchemaId = 'KvError'

/** `{ "error": { "code", "message", ...details } }`, registered once with `app.addSchema`. */
export const errorSchema: Record<string, unknown> = {
  $id: errorSchemaId,
  title: errorSchemaId,
  ...errorBodySchema,
}

/** A response whose body is not JSON, described by its media type. */
export function rawBody(
  mediaType: string,
  description: string,
  schema: Record<string, unknown> = { type: 'string' },
) {
  return { description, content: { [mediaType]: { schema } } }
}

/** A response with no body (204, 304). */
export function noBody(description: string) {
  return { description, type: 'null' }
}

/** The key of `/v1/kv/<key>`: everything after the prefix, percent-decoded (may hold `/`). */
export const keyParams = {
  type: 'object',
  properties: {
    '*': {
      type: 'string',
      description: 'The key: the rest of the path, percent-encoded UTF-8 (it may contain /).',
    },
  },
  required: ['*'],
} as const

/** One path parameter `:name`, a string. */
export function nameParams(name: string, description: string) {
  return {
    type: 'object',
    properties: { [name]: { type: 'string', description } },
    required: [name],
  }
}

/** A query string: each parameter a string (parsed by the handler, which checks it). */
export function query(
  parameters: Record<string, { description: string; enum?: readonly string[] }>,
) {
  const properties: Record<string, unknown> = {}
  for (const [name, { description, enum: values }] of Object.entries(parameters)) {
    properties[name] = { type: 'string', description, ...(values ? { enum: values } : {}) }
  }
  return { type: 'object', properties }
}

/** Query parameters most reads accept. */
export const sessionParameter = {
  description:
    'A session token from an earlier answer: the read waits until this replica has applied it (read-your-writes).',
}

/** Query parameters writes accept (see docs/api.md). */
export const writeParameters = {
  ack: {
    description: 'Durability to wait for: async, quorum or all (queued: into the outbox).',
    enum: ['async', 'quorum', 'all', 'queued'],
  },
  session: sessionParameter,
} as const

/** A JSON request body (the handler parses and checks it itself, for precise error codes). */
export function jsonBody(schema: Record<string, unknown>) {
  return { content: { 'application/json': { schema } } }
}

/** Request headers, each a string (checked by the handler). */
export function headers(names: Record<string, string>) {
  const properties: Record<string, unknown> = {}
  for (const [name, description] of Object.entries(names))
    properties[name] = { type: 'string', description }
  return { type: 'object', properties }
}

/** Headers every write accepts. */
export const writeHeaders = {
  'kv-ack': 'Durability to wait for (as ?ack=): async, quorum, all or queued.',
  'kv-session': 'A session token (as ?session=).',
  'kv-request-id':
    'An id (printable ASCII) that makes a retried write apply once: the retry answers kv-deduplicated: true.',
  'if-fence': 'A fencing token from POST /v1/leases with a lock: the write fails if it is stale.',
  'fence-lock': 'The lock name the fencing token belongs to.',
} as const

/** Headers every read accepts. */
export const readHeaders = {
  'kv-session': 'A session token (as ?session=).',
  'kv-read-wait-ms': 'How long a session read may wait for this replica to catch up.',
} as const

/** The JSON body of a route, any object (described in its own docs). */
export const anyJsonObject = { type: 'object', additionalProperties: true } as const

/**
 * A JSON object answer whose fields are not yet described here (shards, regions, calls between
 * members): the document says it is an object and where its fields are documented.
 */
export function objectAnswer(description: string) {
  return { description, type: 'object' }
}
