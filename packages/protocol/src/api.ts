/**
 * The HTTP API's JSON bodies, defined once: each is a JSON Schema object (plain data, so a
 * test can validate a node's real answers against it) and its TypeScript type is derived from
 * that object (`Static<typeof x>`), so the node's routes, the SDK and the schema cannot drift.
 *
 * Objects are closed (`additionalProperties: false`): a field a route adds, drops or renames
 * without changing the contract fails the contract test. Only what the API returns or accepts
 * as JSON is here; raw value bodies (GET /v1/kv/<key>) and the Prometheus text are not JSON.
 */
import { errorCodes, type ErrorCode } from './errors.js'

// ---------------------------------------------------------------- a small schema builder

declare const staticType: unique symbol

/** A JSON Schema object that carries the TypeScript type of the values it accepts. */
export type Schema<T = unknown> = { readonly [field: string]: unknown } & {
  readonly [staticType]?: T
}

/** The TypeScript type a schema describes. */
export type Static<S> = S extends { readonly [staticType]?: infer T } ? T : never

type Simplify<T> = { [K in keyof T]: T[K] } & {}
type Shape = Record<string, Schema>
type ObjectOf<R extends Shape, O extends Shape> = Simplify<
  { -readonly [K in keyof R]: Static<R[K]> } & { -readonly [K in keyof O]?: Static<O[K]> }
>

function schema<T>(body: Record<string, unknown>): Schema<T> {
  return body as Schema<T>
}

/** Builders of the JSON Schema subset the contract uses (in the manner of TypeBox). */
const t = {
  string: (extra: Record<string, unknown> = {}) => schema<string>({ type: 'string', ...extra }),
  integer: (extra: Record<string, unknown> = {}) => schema<number>({ type: 'integer', ...extra }),
  number: () => schema<number>({ type: 'number' }),
  boolean: () => schema<boolean>({ type: 'boolean' }),
  null: () => schema<null>({ type: 'null' }),
  /** One of a few constants. */
  literal: <const L extends string | number | boolean>(...values: L[]) =>
    schema<L>({ enum: values }),
  nullable: <T>(inner: Schema<T>) => schema<T | null>({ anyOf: [inner, { type: 'null' }] }),
  union: <S extends Schema[]>(...members: S) => schema<Static<S[number]>>({ anyOf: members }),
  array: <T>(items: Schema<T>) => schema<T[]>({ type: 'array', items }),
  /** A map from any string to values of one schema. */
  record: <T>(values: Schema<T>) =>
    schema<Record<string, T>>({ type: 'object', additionalProperties: values }),
  /** A closed object: `required` fields, `optional` fields, nothing else. */
  object: <R extends Shape, O extends Shape = Record<never, Schema>>(required: R, optional?: O) =>
    schema<ObjectOf<R, O>>({
      type: 'object',
      properties: { ...required, ...optional },
      required: Object.keys(required),
      additionalProperties: false,
    }),
}

/**
 * Checks `value` against a schema built with `t`: the problems found, each with its JSON
 * path (`$.members[0].peerUrl: ...`); empty when it conforms. Understands exactly the keywords
 * the builders emit (type, enum, anyOf, properties, required, additionalProperties, items,
 * minimum, pattern) and fails loudly on any other, so the contract cannot use one it ignores.
 */
export function validateApi(schema: Schema, value: unknown, path = '$'): string[] {
  const known = new Set([
    'type',
    'enum',
    'anyOf',
    'properties',
    'required',
    'additionalProperties',
    'items',
    'minimum',
    'pattern',
  ])
  for (const keyword of Object.keys(schema)) {
    if (!known.has(keyword)) throw new Error(`validateApi: unsupported keyword ${keyword}`)
  }
  if (schema.anyOf !== undefined) {
    const options = schema.anyOf as Schema[]
    const failures = options.map((option) => validateApi(option, value, path))
    if (failures.some((f) => f.length === 0)) return []
    return [
      `${path}: matches none of ${options.length} alternatives (${failures.map((f) => f[0]).join('; ')})`,
    ]
  }
  if (schema.enum !== undefined) {
    const values = schema.enum as unknown[]
    return values.includes(value)
      ? []
      : [`${path}: ${JSON.stringify(value)} is not one of ${JSON.stringify(values)}`]
  }
  const types = schema.type === undefined ? [] : ([] as unknown[]).concat(schema.type)
  const typeOf = (v: unknown): string =>
    v === null
      ? 'null'
      : Array.isArray(v)
        ? 'array'
        : typeof v === 'number' && Number.isInteger(v)
          ? 'integer'
          : typeof v
  const actual = typeOf(value)
  if (
    types.length > 0 &&
    !types.includes(actual) &&
    !(actual === 'integer' && types.includes('number'))
  ) {
    return [`${path}: expected ${types.join(' or ')}, got ${actual}`]
  }
  const problems: string[] = []
  if (typeof value === 'number' && typeof schema.minimum === 'number' && value < schema.minimum)
    problems.push(`${path}: ${value} is below ${schema.minimum}`)
  if (typeof value === 'string' && typeof schema.pattern === 'string') {
    if (!new RegExp(schema.pattern, 'u').test(value))
      problems.push(`${path}: ${JSON.stringify(value)} does not match /${schema.pattern}/`)
  }
  if (Array.isArray(value) && schema.items !== undefined) {
    value.forEach((item, i) =>
      problems.push(...validateApi(schema.items as Schema, item, `${path}[${i}]`)),
    )
  }
  if (actual === 'object') {
    const object = value as Record<string, unknown>
    const properties = (schema.properties ?? {}) as Record<string, Schema>
    for (const name of (schema.required ?? []) as string[]) {
      if (!Object.hasOwn(object, name))
        problems.push(`${path}: missing field ${JSON.stringify(name)}`)
    }
    const extra = schema.additionalProperties as Schema | false | undefined
    for (const [name, field] of Object.entries(object)) {
      const at = `${path}.${name}`
      const declared = properties[name]
      if (declared !== undefined) problems.push(...validateApi(declared, field, at))
      else if (extra === false) problems.push(`${path}: unknown field ${JSON.stringify(name)}`)
      else if (extra !== undefined) problems.push(...validateApi(extra, field, at))
    }
  }
  return problems
}

// ---------------------------------------------------------------- shared pieces

const integer = () => t.integer({ minimum: 0 })
const timestamp = () => t.string({ pattern: '^\\d+\\.\\d+\\..+$' })
const isoTime = () => t.string({ pattern: '^\\d{4}-\\d{2}-\\d{2}T' })

/** Durability a single-leader write waits for: the leader alone, a majority, or every member. */
export const ackModeSchema = t.literal('async', 'quorum', 'all')
export type AckMode = Static<typeof ackModeSchema>
export const ackModes = ['async', 'quorum', 'all'] as const satisfies readonly AckMode[]

/** `?consistency=` of a single-leader read. */
export const readConsistencySchema = t.literal('default', 'committed', 'linearizable')
export type ReadConsistency = Static<typeof readConsistencySchema>

/** How a cluster replicates, as GET /v1/cluster says. */
export const clusterModeSchema = t.literal('standalone', 'single-leader', 'leaderless')
export type ClusterMode = Static<typeof clusterModeSchema>

/** A leaderless `w` or `r`: a count, a majority of the key's replicas, or all of them. */
export const quorumSchema = t.union(t.integer({ minimum: 1 }), t.literal('quorum', 'all'))
export type Quorum = Static<typeof quorumSchema>

/** `{ "error": { "code", "message", ...details } }`: the body of every error response. */
export const errorBodySchema = schema<{
  error: { code: ErrorCode; message: string } & Record<
    string,
    string | number | boolean | null | readonly string[] | readonly number[]
  >
}>({
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { code: { enum: errorCodes }, message: { type: 'string' } },
      required: ['code', 'message'],
      additionalProperties: {
        anyOf: [
          { type: ['string', 'number', 'boolean', 'null'] },
          { type: 'array', items: { type: ['string', 'number'] } },
        ],
      },
    },
  },
  required: ['error'],
  additionalProperties: false,
})
export type ApiErrorBody = Static<typeof errorBodySchema>

// ---------------------------------------------------------------- keys (single-leader)

/** PUT /v1/kv/<key>. */
export const putResponseSchema = t.object(
  {
    key: t.string(),
    /** The key's new version (the LSN that wrote it); use it with If-Match. */
    version: integer(),
    lsn: integer(),
    /** Session token of this write (read-your-writes on followers). */
    session: t.string(),
  },
  {
    /** Regions: this write's stamp (`<wallMs>.<counter>@<region>`). */
    stamp: t.string(),
    /** Regions: the stamp of the record the write replaced in this region (null: none). */
    previousStamp: t.nullable(t.string()),
  },
)
export type PutResponse = Static<typeof putResponseSchema>

/** DELETE /v1/kv/<key>. */
export const deleteResponseSchema = t.object(
  {
    key: t.string(),
    deleted: t.literal(true),
    lsn: integer(),
    previousVersion: t.nullable(integer()),
    session: t.string(),
  },
  { deduplicated: t.literal(true), stamp: t.string(), previousStamp: t.nullable(t.string()) },
)
export type DeleteResponse = Static<typeof deleteResponseSchema>

/** One key of GET /v1/kv. */
export const listItemSchema = t.object(
  { key: t.string(), version: integer(), valueBytes: integer() },
  { valueBase64: t.string(), stamp: t.string() },
)
export type ListItem = Static<typeof listItemSchema>

/** GET /v1/kv?prefix=&start=&limit=&cursor=&values=. */
export const listResponseSchema = t.object(
  {
    items: t.array(listItemSchema),
    /** Pass as `cursor` for the next page; null on the last page. */
    nextCursor: t.nullable(t.string()),
    appliedLsn: integer(),
  },
  /** `consistency=committed`: the commit LSN the page shows the state at. */
  { commitLsn: integer() },
)
export type ListResponse = Static<typeof listResponseSchema>

/** One op of POST /v1/batch. */
export const batchOpSchema = t.object(
  { op: t.literal('put', 'delete'), key: t.string() },
  {
    value: t.string(),
    valueBase64: t.string(),
    ifVersion: t.integer({ minimum: 1 }),
    ifAbsent: t.boolean(),
    ifExists: t.boolean(),
  },
)
export type BatchRequestOp = Static<typeof batchOpSchema>

/** POST /v1/batch body. */
export const batchRequestSchema = t.object({ ops: t.array(batchOpSchema) })
export type BatchRequest = Static<typeof batchRequestSchema>

/** POST /v1/batch answer. */
export const batchResponseSchema = t.object(
  {
    lsn: integer(),
    session: t.string(),
    /** One per op: the key's new version (null after a delete). */
    results: t.array(
      t.object(
        { key: t.string(), version: t.nullable(integer()) },
        {
          previousVersion: t.nullable(integer()),
          stamp: t.string(),
          previousStamp: t.nullable(t.string()),
        },
      ),
    ),
  },
  { deduplicated: t.literal(true) },
)
export type BatchResponse = Static<typeof batchResponseSchema>

// ---------------------------------------------------------------- keys (leaderless)

/** PUT and DELETE /v1/kv/<key> in leaderless mode. */
export const leaderlessWriteResponseSchema = t.object(
  {
    key: t.string(),
    /** The key's causal context after the write; pass it to the next write of the key. */
    context: t.string(),
    timestamp: timestamp(),
    /** Replicas (or stand-ins) that stored it durably before the answer. */
    acks: integer(),
    w: integer(),
    coordinator: t.string(),
    /** Replicas that were down and got a hint: `member@standIn` or `member`. */
    hinted: t.array(t.string()),
  },
  { deduplicated: t.literal(true), deleted: t.literal(true) },
)
export type LeaderlessWriteResponse = Static<typeof leaderlessWriteResponseSchema>

/** GET /v1/kv/<key>?format=json (always), or 300 Multiple Choices when a key has siblings. */
export const siblingsResponseSchema = t.object({
  key: t.string(),
  context: t.string(),
  siblings: t.array(t.object({ valueBase64: t.string(), timestamp: timestamp() })),
})
export type SiblingsResponse = Static<typeof siblingsResponseSchema>

// ---------------------------------------------------------------- cluster and status

/** A node's log archive, as GET /v1/status and GET /v1/cluster show it. */
export const archiveStateSchema = t.object({
  dir: t.string(),
  /** Last LSN in the archive (its newest base backup or segment). */
  archivedLsn: integer(),
  /** Committed entries not archived yet, and the age in seconds of the oldest of them (RPO). */
  lagEntries: integer(),
  lagSeconds: t.number(),
  /** A gap only a new base backup repairs (it is taken automatically). */
  broken: t.boolean(),
  lastSegmentAtMs: t.nullable(integer()),
  bases: integer(),
  lastError: t.nullable(t.string()),
})
export type ArchiveStateView = Static<typeof archiveStateSchema>

/** A member as a single-leader node's GET /v1/cluster describes it. */
export const clusterMemberSchema = t.object(
  {
    id: t.string(),
    role: t.literal('leader', 'follower'),
    clientUrl: t.string(),
    /** Null for a standalone node, which has no peer listener. */
    peerUrl: t.nullable(t.string()),
    /** Epoch the member reported last; null before it has. */
    epoch: t.nullable(integer()),
    /** Highest LSN the member acknowledged durable. */
    ackedLsn: integer(),
    /** Highest LSN the member has applied, as it reported last; null before it has. */
    appliedLsn: t.nullable(integer()),
    lagEntries: integer(),
    lagMs: integer(),
    /** Milliseconds since the leader last heard from the member; null if never. */
    lastContactMs: t.nullable(integer()),
    connected: t.boolean(),
  },
  {
    /** A member that keeps a log archive (--archive-dir): the last LSN in it, as it reported. */
    archivedLsn: integer(),
    /** Committed entries not yet in that archive (the commit LSN minus archivedLsn). */
    archiveLagEntries: integer(),
    /** False for a learner: it receives the log and counts toward no quorum or election. */
    voter: t.boolean(),
  },
)
export type ClusterMember = Static<typeof clusterMemberSchema>

/** GET /v1/cluster of a single-leader or standalone node. */
export const clusterViewSchema = t.object(
  {
    mode: t.literal('standalone', 'single-leader'),
    clusterId: t.string(),
    leaderId: t.nullable(t.string()),
    leaderUrl: t.nullable(t.string()),
    epoch: integer(),
    commitLsn: integer(),
    /** Id of the node that answered. */
    self: t.string(),
    members: t.array(clusterMemberSchema),
  },
  {
    /** This node takes writes now: it leads, is ready, and hears from a majority. */
    writable: t.boolean(),
    /** The answering node's log archive (--archive-dir), when it keeps one. */
    archive: archiveStateSchema,
    /** The LSN of the log entry that made the configuration (0: seeded by --members). */
    configLsn: t.integer({ minimum: 0 }),
    /** A membership change whose entry is not committed yet. */
    membershipChangeInProgress: t.boolean(),
  },
)
export type ClusterView = Static<typeof clusterViewSchema>

/** Leaderless: a range handoff in progress (a member joining, leaving or being replaced). */
export const handoffSchema = t.object({
  member: t.string(),
  kind: t.literal('join', 'leave', 'replace'),
  /** For a replacement: the member whose ranges are taken over. */
  replacing: t.nullable(t.string()),
  startedAtMs: integer(),
  rangesTotal: integer(),
  rangesDone: integer(),
  keysStreamed: integer(),
  bytesStreamed: integer(),
})
export type Handoff = Static<typeof handoffSchema>

/** A member as a leaderless node's GET /v1/cluster describes it. */
export const leaderlessMemberSchema = t.object(
  {
    id: t.string(),
    clientUrl: t.string(),
    peerUrl: t.string(),
    /** Whether the node that answered sees this member up. */
    up: t.boolean(),
    /** The member's share of the ring as the first replica (0 to 1). */
    share: t.number(),
    /** Arcs of the ring whose replicas include the member. */
    arcs: integer(),
    /** Hints the answering node holds for this member. */
    hintBacklog: integer(),
    /** When the answering node last ran an anti-entropy exchange with it (epoch ms), or null. */
    lastAntiEntropyMs: t.nullable(integer()),
    antiEntropyKeysRepaired: integer(),
  },
  {
    /** True for the node that answered. */
    self: t.boolean(),
    /** Milliseconds since the answering node last heard from this member; null if never. */
    lastContactMs: t.nullable(integer()),
    /** owner, joining or leaving (see memberRoleSchema). */
    state: t.literal('owner', 'joining', 'leaving'),
  },
)
export type LeaderlessMember = Static<typeof leaderlessMemberSchema>

/** One arc (start, end] of the ring and the replicas of keys hashing into it. */
export const ringArcSchema = t.object({
  start: integer(),
  end: integer(),
  replicas: t.array(t.string()),
})
export type RingArc = Static<typeof ringArcSchema>

/** GET /v1/cluster of a leaderless node. */
export const leaderlessClusterViewSchema = t.object(
  {
    mode: t.literal('leaderless'),
    clusterId: t.string(),
    self: t.string(),
    /** Replicas of each key (N). */
    replicas: integer(),
    conflicts: t.literal('siblings', 'lww'),
    defaultW: quorumSchema,
    defaultR: quorumSchema,
    /** Points of each member on the ring. */
    vnodes: integer(),
    members: t.array(leaderlessMemberSchema),
    ring: t.array(ringArcSchema),
  },
  {
    /** The answering node's actor id in version vectors. */
    actor: t.string(),
    hintsHeld: integer(),
    hintWindowMs: integer(),
    antiEntropyIntervalMs: integer(),
    tombstoneGcMs: integer(),
    /** True while a member that started empty refills from its peers. */
    refilling: t.boolean(),
    /** The answering node's log archive (--archive-dir), when it keeps one. */
    archive: archiveStateSchema,
    /** The ring's version: every peer message carries it; a member behind learns the newer. */
    ringVersion: t.integer({ minimum: 0 }),
    /** Range handoffs in progress (members joining, leaving or being replaced). */
    handoffs: t.array(handoffSchema),
  },
)
export type LeaderlessClusterView = Static<typeof leaderlessClusterViewSchema>

/** POST /admin/v1/backups with `{"target":"archive"}`: the base backup taken. */
export const archiveBackupResponseSchema = t.object({
  lsn: integer(),
  dir: t.string(),
  keys: integer(),
  /** Bytes of the backup's files, manifest included. */
  bytes: integer(),
  files: integer(),
  digest: t.string({ pattern: '^[0-9a-f]{64}$' }),
  durationMs: integer(),
})
export type ArchiveBackupResponse = Static<typeof archiveBackupResponseSchema>

/** GET /v1/status. */
export const statusResponseSchema = t.object(
  {
    nodeId: t.string(),
    clusterId: t.string(),
    mode: clusterModeSchema,
    /** Single-leader: the core's role; leaderless: `replica`; standalone: `leader`. */
    role: t.literal('leader', 'follower', 'preCandidate', 'candidate', 'replica'),
    leaderId: t.nullable(t.string()),
    leaderUrl: t.nullable(t.string()),
    lagEntries: integer(),
    lagMs: integer(),
    epoch: integer(),
    appliedLsn: integer(),
    commitLsn: integer(),
    logStartLsn: integer(),
    lastEpoch: integer(),
    ready: t.boolean(),
    version: t.string(),
    startedAt: isoTime(),
    uptimeMs: integer(),
    /** Writes waiting for the storage writer, and their bytes. */
    writeQueue: t.object({ writes: integer(), bytes: integer() }),
    storage: t.object({
      dataDir: t.string(),
      fsync: t.boolean(),
      groupCommitWritesMax: integer(),
      failed: t.nullable(t.string()),
    }),
    limits: t.object({
      keyBytesMax: integer(),
      valueBytesMax: integer(),
      batchOpsMax: integer(),
      requestBodyBytesMax: integer(),
      listLimitMax: integer(),
    }),
  },
  {
    /** This node's log archive (--archive-dir); null when it keeps none. */
    archive: t.nullable(archiveStateSchema),
  },
)
export type StatusResponse = Static<typeof statusResponseSchema>

/** GET /v1/digest: a hash of the whole applied state at one LSN. */
export const digestResponseSchema = t.object({
  appliedLsn: integer(),
  /** Hex SHA-256 over every key, version and value in key order. */
  digest: t.string({ pattern: '^[0-9a-f]{64}$' }),
  keys: integer(),
  bytes: integer(),
  reservedKeys: integer(),
})
export type DigestResponse = Static<typeof digestResponseSchema>

/** GET /health. */
export const healthResponseSchema = t.object({ status: t.literal('ok') })
export type HealthResponse = Static<typeof healthResponseSchema>

/** GET /ready. */
export const readyResponseSchema = t.object({ ready: t.literal(true) })
export type ReadyResponse = Static<typeof readyResponseSchema>

// ---------------------------------------------------------------- admin (log)

/** POST /admin/v1/compact. */
export const compactResponseSchema = t.object({ logStartLsn: integer(), appliedLsn: integer() })
export type CompactResponse = Static<typeof compactResponseSchema>

/** POST /admin/v1/transfer-leadership body. */
export const transferRequestSchema = t.object({}, { to: t.nullable(t.string()) })
export type TransferRequest = Static<typeof transferRequestSchema>

/** POST /admin/v1/transfer-leadership answer. */
export const transferResponseSchema = t.object({
  from: t.string(),
  leaderId: t.string(),
  leaderUrl: t.nullable(t.string()),
  epoch: integer(),
})
export type TransferResponse = Static<typeof transferResponseSchema>

// ---------------------------------------------------------------- membership

/**
 * A member's place in the configuration. Single-leader: `voter` (counts toward elections and
 * quorums) or `learner` (receives the log, counts toward nothing). Leaderless: `owner` (holds
 * its ranges), `joining` (streaming its future ranges; writes already reach it), `leaving`
 * (streaming its ranges to their next owners; still an owner until that is done).
 */
export const memberRoleSchema = t.literal('voter', 'learner', 'owner', 'joining', 'leaving')
export type MemberRole = Static<typeof memberRoleSchema>

/** One member as GET /admin/v1/members shows it. */
export const memberInfoSchema = t.object(
  {
    id: t.string(),
    clientUrl: t.string(),
    peerUrl: t.string(),
    role: memberRoleSchema,
  },
  {
    /** Single-leader, on the leader: its stream to the member is up. */
    connected: t.boolean(),
    /** Single-leader, on the leader: the highest LSN the member acknowledged. */
    matchLsn: integer(),
    /** Single-leader, on the leader: entries the member lags behind the leader's log. */
    lagEntries: integer(),
    /** Milliseconds since the answering node last heard from the member; null if never. */
    lastContactMs: t.nullable(integer()),
  },
)
export type MemberInfo = Static<typeof memberInfoSchema>

/** GET /admin/v1/members: the configuration as the answering node knows it. */
export const membershipSchema = t.object(
  {
    mode: t.literal('single-leader', 'leaderless'),
    /** Id of the node that answered. */
    self: t.string(),
    /**
     * Single-leader: the LSN of the log entry that made this configuration (0: the one seeded
     * by --members, not yet written to the log). Leaderless: the ring version.
     */
    version: integer(),
    members: t.array(memberInfoSchema),
    /** Ids removed from the cluster: their certificates are refused on the peer port. */
    removed: t.array(t.string()),
    /** A change has not finished: a new one is refused (KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS). */
    changeInProgress: t.boolean(),
  },
  {
    /** Single-leader: the leader, as the answering node knows it. */
    leaderId: t.nullable(t.string()),
    /** Leaderless: range handoffs in progress. */
    handoffs: t.array(handoffSchema),
  },
)
export type Membership = Static<typeof membershipSchema>

/** POST /admin/v1/members: a new member. Single-leader members join as learners. */
export const addMemberRequestSchema = t.object({
  id: t.string(),
  clientUrl: t.string(),
  peerUrl: t.string(),
})
export type AddMemberRequest = Static<typeof addMemberRequestSchema>

/** POST /admin/v1/members/:id/replace: the new member that takes the place of `:id`. */
export const replaceMemberRequestSchema = addMemberRequestSchema
export type ReplaceMemberRequest = AddMemberRequest

/** What a membership change answers: the change made, and the configuration after it. */
export const membershipChangeResponseSchema = t.object({
  change: t.literal('add', 'promote', 'remove', 'replace'),
  member: t.string(),
  membership: membershipSchema,
})
export type MembershipChangeResponse = Static<typeof membershipChangeResponseSchema>

/** One op of a rollback record: a change of the auth store is named, never shown. */
export const rollbackOpSchema = t.union(
  t.object({ op: t.literal('put'), key: t.string(), valueBase64: t.string() }),
  t.object({ op: t.literal('delete'), key: t.string() }),
  t.object({ op: t.literal('auth'), record: t.string() }),
)
export type RollbackOp = Static<typeof rollbackOpSchema>

/** One write a node dropped as unconfirmed. */
export const rollbackRecordSchema = t.object({
  seq: integer(),
  removedAt: isoTime(),
  /** The epoch in which the node dropped it. */
  epoch: integer(),
  lsn: integer(),
  /** The epoch in which it was written. */
  entryEpoch: integer(),
  writtenAt: isoTime(),
  requestId: t.nullable(t.string()),
  ops: t.array(rollbackOpSchema),
})
export type RollbackRecord = Static<typeof rollbackRecordSchema>

/** GET /admin/v1/rollbacks. */
export const rollbackPageSchema = t.object({
  /** Records the node holds in all. */
  count: integer(),
  rollbacks: t.array(rollbackRecordSchema),
  /** Pass as `after` for the next page; null on the last. */
  next: t.nullable(integer()),
})
export type RollbackPage = Static<typeof rollbackPageSchema>

/** DELETE /admin/v1/rollbacks?through=. */
export const rollbackDiscardResponseSchema = t.object({ deleted: integer(), count: integer() })
export type RollbackDiscardResponse = Static<typeof rollbackDiscardResponseSchema>

// ---------------------------------------------------------------- auth

/** POST /v1/auth/token body. */
export const tokenRequestSchema = t.object({ user: t.string(), password: t.string() })
export type TokenRequest = Static<typeof tokenRequestSchema>

/** POST /v1/auth/token answer; `token` is null while auth is off. */
export const tokenResponseSchema = t.object({
  user: t.string(),
  token: t.nullable(t.string()),
  expiresAt: t.nullable(isoTime()),
  authEnabled: t.boolean(),
})
export type TokenResponse = Static<typeof tokenResponseSchema>

/** What a user may do, from every role they hold. */
export const permissionsSchema = t.object({
  admin: t.boolean(),
  monitor: t.boolean(),
  /** Prefixes the user may read. */
  read: t.array(t.string()),
  write: t.array(t.string()),
  /** The tightest rate limit among the user's roles; 0 when none sets one. */
  rateLimitPerSecond: integer(),
})
export type PermissionsView = Static<typeof permissionsSchema>

/** GET /v1/auth/whoami. */
export const whoAmISchema = t.object({
  user: t.nullable(t.string()),
  via: t.literal('token', 'certificate', 'router', 'anonymous'),
  roles: t.array(t.string()),
  permissions: t.nullable(permissionsSchema),
  authEnabled: t.boolean(),
})
export type WhoAmI = Static<typeof whoAmISchema>

/** A user as the admin routes show it (never its password hash). */
export const userInfoSchema = t.object({
  name: t.string(),
  roles: t.array(t.string()),
  /** True when the user can log in with a password. */
  password: t.boolean(),
})
export type UserInfo = Static<typeof userInfoSchema>

/** GET /admin/v1/users/<name>: the user and what its roles allow. */
export const userDetailSchema = t.object({
  name: t.string(),
  roles: t.array(t.string()),
  password: t.boolean(),
  permissions: t.nullable(permissionsSchema),
})
export type UserDetail = Static<typeof userDetailSchema>

/** Access a role grant gives on a prefix. */
export const prefixAccessSchema = t.literal('read', 'write', 'readwrite')
/** What `grant` and `revoke` take: prefix access, or a capability. */
export const grantAccessSchema = t.literal('read', 'write', 'readwrite', 'admin', 'monitor')
export type GrantAccess = Static<typeof grantAccessSchema>

/** A role as the admin routes show it. */
export const roleInfoSchema = t.object({
  name: t.string(),
  admin: t.boolean(),
  monitor: t.boolean(),
  grants: t.array(t.object({ prefix: t.string(), access: prefixAccessSchema })),
  rateLimitPerSecond: integer(),
})
export type RoleInfo = Static<typeof roleInfoSchema>

/** GET /admin/v1/auth. */
export const authStatusSchema = t.object({
  enabled: t.boolean(),
  users: t.array(userInfoSchema),
  roles: t.array(roleInfoSchema),
})
export type AuthStatus = Static<typeof authStatusSchema>

/** POST /admin/v1/auth/enable and /disable. */
export const authEnabledResponseSchema = t.object({ enabled: t.boolean() })
export type AuthEnabledResponse = Static<typeof authEnabledResponseSchema>

/** GET /admin/v1/users. */
export const userListSchema = t.object({ users: t.array(userInfoSchema) })
export type UserList = Static<typeof userListSchema>

/** GET /admin/v1/roles. */
export const roleListSchema = t.object({ roles: t.array(roleInfoSchema) })
export type RoleList = Static<typeof roleListSchema>

/** POST /admin/v1/users body. */
export const addUserRequestSchema = t.object(
  { name: t.string() },
  { password: t.string(), roles: t.array(t.string()) },
)
export type AddUserRequest = Static<typeof addUserRequestSchema>

/** POST /admin/v1/roles body. */
export const addRoleRequestSchema = t.object(
  { name: t.string() },
  { admin: t.boolean(), monitor: t.boolean(), rateLimitPerSecond: integer() },
)
export type AddRoleRequest = Static<typeof addRoleRequestSchema>

/** POST /admin/v1/roles/<name>/grant and /revoke body. */
export const grantRequestSchema = t.object({ access: grantAccessSchema }, { prefix: t.string() })
export type GrantRequest = Static<typeof grantRequestSchema>

/** DELETE /admin/v1/users/<name> and /admin/v1/roles/<name>. */
export const deletedResponseSchema = t.object({ deleted: t.string() })
export type DeletedResponse = Static<typeof deletedResponseSchema>

/** PUT /admin/v1/users/<name>/password. */
export const passwordChangedResponseSchema = t.object({
  user: t.string(),
  changed: t.literal(true),
})
export type PasswordChangedResponse = Static<typeof passwordChangedResponseSchema>

/** POST /admin/v1/users/<name>/revoke-tokens. */
export const tokensRevokedResponseSchema = t.object({
  user: t.string(),
  tokensRevoked: t.literal(true),
})
export type TokensRevokedResponse = Static<typeof tokensRevokedResponseSchema>

/** POST /admin/v1/tls/reload. */
export const tlsReloadResponseSchema = t.object({
  notAfter: isoTime(),
  fingerprint256: t.string(),
})
export type TlsReloadResponse = Static<typeof tlsReloadResponseSchema>

// ---------------------------------------------------------------- admin (leaderless)

/** GET /admin/v1/ranges: the Merkle root of every replica set this member belongs to. */
export const rangesResponseSchema = t.object({
  self: t.string(),
  ranges: t.array(t.object({ replicas: t.string(), root: integer(), keys: integer() })),
})
export type RangesResponse = Static<typeof rangesResponseSchema>

/** GET /admin/v1/local/<key>: this member's own copy of a key. */
export const localCopySchema = t.object({
  key: t.string(),
  member: t.string(),
  replicas: t.array(t.string()),
  vector: t.record(integer()),
  siblings: t.array(
    t.object({
      node: t.string(),
      counter: integer(),
      tombstone: t.boolean(),
      valueBase64: t.nullable(t.string()),
      timestamp: timestamp(),
    }),
  ),
})
export type LocalCopy = Static<typeof localCopySchema>

/** GET /admin/v1/hints. */
export const hintsResponseSchema = t.object({ total: integer(), byTarget: t.record(integer()) })
export type HintsResponse = Static<typeof hintsResponseSchema>

/** POST /admin/v1/anti-entropy: keys repaired per peer, or why the exchange failed. */
export const antiEntropyResponseSchema = t.object({
  self: t.string(),
  keysRepaired: t.record(t.union(integer(), t.string())),
})
export type AntiEntropyResponse = Static<typeof antiEntropyResponseSchema>

// ---------------------------------------------------------------- queued writes (ack=queued)

/** 202 to PUT, DELETE /v1/kv/<key> and POST /v1/batch with `ack=queued`. */
export const queuedResponseSchema = t.object({
  /** `<nodeId>.<seq>`: GET /v1/tickets/<ticket> on `node` tells what became of the write. */
  ticket: t.string(),
  node: t.string(),
  status: t.literal('pending'),
  acceptedAtMs: integer(),
})
export type QueuedResponse = Static<typeof queuedResponseSchema>

/** GET /v1/tickets/<id>. */
export const ticketResponseSchema = t.object(
  {
    ticket: t.string(),
    status: t.literal('pending', 'applied', 'failed'),
    acceptedAtMs: integer(),
  },
  {
    /** Applied: the LSN of the entry that applied it (the version of every key it put). */
    lsn: integer(),
    /** Applied: a session token at that LSN, as a normal write answers. */
    session: t.string(),
    appliedAtMs: integer(),
    /** Failed: the coded error, as the write would have had it. */
    error: t.object({
      code: t.literal(...errorCodes),
      message: t.string(),
      details: t.record(
        schema<unknown>({
          anyOf: [
            { type: ['string', 'number', 'boolean', 'null'] },
            { type: 'array', items: { type: ['string', 'number'] } },
          ],
        }),
      ),
    }),
  },
)
export type TicketResponse = Static<typeof ticketResponseSchema>
