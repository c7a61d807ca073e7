/**
 * Every error the store reports, with its stable code and HTTP status. This table is the
 * single definition: the server maps failures to it, the SDK turns response bodies back into
 * typed errors, and the error reference (docs/reference/errors.md) is generated from it (a test keeps them equal).
 *
 * Codes never change meaning once released. Error bodies look like
 * `{ "error": { "code": "KV_ERR_...", "message": "...", ...details } }`.
 */
export const errorCatalog = {
  KV_ERR_KEY_NOT_FOUND: {
    status: 404,
    description: 'The key does not exist.',
  },
  KV_ERR_INVALID_KEY: {
    status: 400,
    description:
      'The key is empty, is not valid UTF-8, contains a control character, or has a `.` or `..` path segment.',
  },
  KV_ERR_KEY_TOO_LARGE: {
    status: 400,
    description: 'The key is longer than `keyBytesMax` bytes.',
  },
  KV_ERR_VALUE_TOO_LARGE: {
    status: 413,
    description: 'The value is larger than `valueBytesMax` bytes.',
  },
  KV_ERR_BODY_TOO_LARGE: {
    status: 413,
    description: 'The request body is larger than `requestBodyBytesMax` bytes.',
  },
  KV_ERR_MALFORMED_BODY: {
    status: 400,
    description: 'The request body is not the JSON the endpoint expects; the message says where.',
  },
  KV_ERR_BATCH_TOO_LARGE: {
    status: 400,
    description: 'The batch has more than `batchOpsMax` operations.',
  },
  KV_ERR_PRECONDITION_FAILED: {
    status: 412,
    description:
      '`If-Match`, `If-None-Match` or a batch condition did not hold; nothing was written. The body gives the current version.',
  },
  KV_ERR_INVALID_PRECONDITION: {
    status: 400,
    description: '`If-Match` or `If-None-Match` is malformed.',
  },
  KV_ERR_INVALID_CURSOR: {
    status: 400,
    description: 'The list cursor is malformed or belongs to another prefix.',
  },
  KV_ERR_INVALID_ARGUMENT: {
    status: 400,
    description: 'A query parameter or the URL is malformed; the message names it.',
  },
  KV_ERR_BAD_REQUEST: {
    status: 400,
    description:
      'The HTTP request itself is malformed (request line, headers, Content-Length or Transfer-Encoding); the connection is closed.',
  },
  KV_ERR_HEADERS_TOO_LARGE: {
    status: 431,
    description: 'The request line and headers exceed 64 KiB.',
  },
  KV_ERR_REQUEST_TIMEOUT: {
    status: 408,
    description: 'The whole request did not arrive within `requestTimeoutMs`.',
  },
  KV_ERR_EXPECTATION_FAILED: {
    status: 417,
    description: '`Expect` holds something other than `100-continue`.',
  },
  KV_ERR_ROUTE_NOT_FOUND: {
    status: 404,
    description: 'No endpoint has this path.',
  },
  KV_ERR_METHOD_NOT_ALLOWED: {
    status: 405,
    description: 'The endpoint exists but not with this method; `Allow` lists the methods.',
  },
  KV_ERR_NOT_LEADER: {
    status: 421,
    description:
      'This node is a follower and takes no writes. The body (`leaderId`, `leaderUrl`) and the `kv-leader` header name the leader.',
  },
  KV_ERR_ACK_TIMEOUT: {
    status: 504,
    description:
      'The write is durable on the leader (its LSN and session are in the body) but the replicas its `ack` mode needs did not confirm it within `ackTimeoutMs`. It may still replicate; it is not rolled back.',
  },
  KV_ERR_REPLICA_BEHIND: {
    status: 503,
    description:
      'This replica has not applied the LSN the session token asks for within `readWaitMs`. Read from another replica or from the leader.',
  },
  // Issue 19, slice C: committed reads.
  KV_ERR_UNCOMMITTED_WINDOW_TOO_LARGE: {
    status: 503,
    description:
      'A `consistency=committed` read found this replica more uncommitted entries ahead of its commit LSN than a committed read walks back through (an `ack=async` leader whose followers are far behind). Retry once they catch up, or read at the default level.',
  },
  KV_ERR_INVALID_SESSION: {
    status: 400,
    description: 'The session token is malformed; send back one that a response gave you.',
  },
  KV_ERR_STALE_EPOCH: {
    status: 409,
    description:
      'Fencing. Between peers: a message of an older epoch is refused. To a client: this node stopped leading while the write waited for its confirmations (`lsn`, `epoch` in the body); it is durable here but may not survive under the new leader. Read it back, or retry with the same `kv-request-id` (the SDK does).',
  },
  KV_ERR_BAD_FRAME: {
    status: 400,
    description: 'A peer sent a replication frame that failed validation; the stream is closed.',
  },
  KV_ERR_CLUSTER_MISMATCH: {
    status: 409,
    description:
      'A peer belongs to another cluster or expected another node id; the stream is refused.',
  },
  KV_ERR_QUORUM_UNAVAILABLE: {
    status: 503,
    description:
      'Leaderless mode: fewer replicas than `w` (or `r`) answered within `quorumTimeoutMs`. The body gives `required`, `acks` and the `replicas` asked. A write may still be on the replicas that did answer and will spread from there; it is not undone.',
  },
  KV_ERR_INVALID_CONTEXT: {
    status: 400,
    description:
      'Leaderless mode: the `kv-context` header is not a causal context this cluster returned (malformed, or too many entries).',
  },
  KV_ERR_TOO_MANY_SIBLINGS: {
    status: 409,
    description:
      'Leaderless mode: the key already holds `siblingsMax` concurrent values, so a write without a context would add one more. Read the key and write again with its `kv-context` to resolve them.',
  },
  KV_ERR_UNSUPPORTED_IN_MODE: {
    status: 400,
    description:
      'The request needs another cluster mode: conditions (`If-Match`), batches and linearizable reads need single-leader; `w`, `r` and `kv-context` need leaderless. The message names the alternative.',
  },
  KV_ERR_UNAUTHENTICATED: {
    status: 401,
    description:
      'Authentication is on and the request carries no valid credential: no `Authorization: Bearer` token and no client certificate naming a user, or a token that is malformed, expired, signed by another cluster, or older than a change to its user (deleted, new password, revoked). `POST /v1/auth/token` gives a new token.',
  },
  KV_ERR_PERMISSION_DENIED: {
    status: 403,
    description:
      'The user is known but no role of theirs grants this: `read` or `write` on the key (every key of a batch, the whole prefix of a list), `admin` for `/admin/v1/*`, users and roles, or `monitor` for `/metrics`, `/v1/status` and `/v1/digest`.',
  },
  KV_ERR_USER_NOT_FOUND: {
    status: 404,
    description: 'The user does not exist.',
  },
  KV_ERR_ROLE_NOT_FOUND: {
    status: 404,
    description: 'The role does not exist.',
  },
  KV_ERR_USER_EXISTS: {
    status: 409,
    description: 'A user with this name already exists.',
  },
  KV_ERR_ROLE_EXISTS: {
    status: 409,
    description: 'A role with this name already exists.',
  },
  KV_ERR_AUTH_LIMIT: {
    status: 409,
    description:
      'The auth store is full: `authUsersMax` users, `authRolesMax` roles, or `authGrantsMax` grants on one role or user.',
  },
  KV_ERR_RATE_LIMITED: {
    status: 429,
    description:
      'This user (or, without a credential, this address) sent more requests than `rateLimitPerSecond` allows; retry after `Retry-After` seconds.',
  },
  KV_ERR_REQUEST_ID_REUSED: {
    status: 409,
    description:
      'The `kv-request-id` was already used for a different request (another key, body or kind) within `requestIdRetentionMs`; nothing was written. Use a fresh id per request and the same id only for retries of it.',
  },
  KV_ERR_PEER_IDENTITY: {
    status: 403,
    description:
      'Between peers: a message claims a sender other than the member its TLS certificate names, or comes from a certificate of another cluster or of no member; it is refused, logged and counted (`kv_peer_refused_total`).',
  },
  KV_ERR_BACKUP_BUSY: {
    status: 429,
    description:
      'This node is already taking `backupsInFlightMax` backups; retry when one has finished.',
  },
  KV_ERR_BACKUP_CORRUPT: {
    status: 422,
    description:
      "A backup's manifest or one of its files is missing, truncated, does not match its checksum or does not decode, or the state it holds does not match the manifest's digest; `file` names it. Nothing was restored.",
  },
  KV_ERR_ARCHIVE_CORRUPT: {
    status: 422,
    description:
      'A segment of the log archive is truncated, does not match its checksum or does not decode; `file`, `fromLsn` and `toLsn` name it. A restore checks every segment it needs before it writes anything.',
  },
  KV_ERR_ARCHIVE_GAP: {
    status: 422,
    description:
      'The log archive lacks entries a restore needs (`fromLsn` to `toLsn`): a segment is missing, or the archive broke there and a newer base backup is needed. Nothing was restored.',
  },
  KV_ERR_RESTORE_TARGET: {
    status: 400,
    description:
      "The restore target cannot be reached: it is before the backup's LSN or time, or past the end of the archive (use `--latest` to restore everything archived).",
  },
  KV_ERR_DATA_DIR_IN_USE: {
    status: 409,
    description:
      "A restore's data directory already holds data or is locked by a running node. A restore only ever builds a new data directory.",
  },
  KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS: {
    status: 409,
    description:
      'Another membership change has not finished yet (single-leader: its log entry is not committed, or the leader has not committed an entry of its own epoch; leaderless: a member is still joining, leaving or being replaced). At most one change is in flight; retry when it is done (`GET /admin/v1/members`).',
  },
  KV_ERR_LEARNER_BEHIND: {
    status: 409,
    description:
      'The learner to promote is not connected, or lags the leader by more than `learnerPromoteLagEntriesMax` entries: promoting it now would make a quorum wait on it. `lagEntries` says how far behind it is; retry once it has caught up.',
  },
  KV_ERR_WOULD_LOSE_QUORUM: {
    status: 409,
    description:
      'The change would leave fewer live voters (heard from within an election timeout) than a majority of the new configuration, so the cluster could no longer commit or elect. `liveVoters` and `majority` say how many; bring members back first, or remove the dead one before another.',
  },
  KV_ERR_STALE_RING: {
    status: 409,
    description:
      'Leaderless mode, between members: a request was coordinated with an older ring version than the receiver holds (`ringVersion` in the reply envelope). The sender learns the newer ring from the receiver and retries with it; a client never sees this code.',
  },
  KV_ERR_NOT_A_MEMBER: {
    status: 404,
    description:
      'The member named is not in the cluster configuration (or was removed from it); or, from a node that was removed, this node no longer serves the cluster.',
  },
  KV_ERR_WRONG_SHARD: {
    status: 421,
    description:
      "The key's hash slot is not owned by this node's group (like Redis Cluster's MOVED). `slot`, `group` (the owner this node knows of), `endpoints` and `mapVersion` say where to go; kv-router refreshes its shard map and retries there by itself.",
  },
  KV_ERR_CROSS_SHARD: {
    status: 400,
    description:
      'A batch names keys whose slots belong to different groups (`slots`, `groups`). There are no cross-shard transactions: put related keys in one slot with a hash tag (`{user42}/profile`, `{user42}/cart`).',
  },
  KV_ERR_SLOT_MOVING: {
    status: 503,
    description:
      "The key's slot is fenced while it moves to another group: writes and linearizable reads wait for the switch, which takes a moment. Retry after `Retry-After`; kv-router and the SDK do.",
  },
  KV_ERR_SHARD_MOVE_IN_PROGRESS: {
    status: 409,
    description:
      'A slot move out of this group (or into the target) has not finished. One move at a time per group; `GET /v1/shards` shows it, and `kv shard move --abort` rolls back one that is stuck.',
  },
  KV_ERR_GROUP_UNAVAILABLE: {
    status: 503,
    description:
      "kv-router: no member of the key's group answered, or none was healthy enough to serve the request (`group`). Retry after `Retry-After`.",
  },
  KV_ERR_REGION_UNKNOWN: {
    status: 403,
    description:
      "Regions: a shipped batch names a source region that is not in this node's regions file, or this node's own region (`source`). Check that every region's file lists the same regions.",
  },
  KV_ERR_REGION_GAP: {
    status: 409,
    description:
      "Regions: a shipped batch does not continue from where this region's cursor for its source stands (`cursor`, `fromLsn`): an entry in between would be missed. The source's leader asks for the cursor and ships from there; nothing was applied.",
  },
  KV_ERR_CLOCK_SKEW: {
    status: 409,
    description:
      "Regions: a shipped write carries a clock time further ahead of this leader's clock than `--region-clock-skew-max-ms` allows (`aheadMs`). The batch is refused, not applied, so a runaway clock cannot win every conflict; fix the clock (NTP) and the source retries.",
  },
  KV_ERR_OVERLOADED: {
    status: 503,
    description:
      'The node is at a limit and refuses new work rather than grow: too many writes waiting for the disk (`writeQueueWritesMax`, `writeQueueBytesMax`) or too many request-body bytes in flight (`inflightBodyBytesMax`); retry after `Retry-After` seconds.',
  },
  // ---- queued writes (ack=queued): the accepting member's outbox and its tickets
  KV_ERR_OUTBOX_FULL: {
    status: 503,
    description:
      "A queued write (`ack=queued`) was refused: this member's outbox is at a limit (`reason`: `entries`, `bytes`, or `age` when its oldest pending write is older than `outboxAgeMaxMs`; `limit` gives the limit). Writes already queued still drain; retry after `Retry-After`, or write to the leader with `ack=quorum`.",
  },
  // ---- issue 19, slice L: leases, TTL, locks and fencing tokens (docs/leases.md)
  KV_ERR_LEASE_NOT_FOUND: {
    status: 404,
    description:
      'The lease does not exist: it expired, was revoked, or never existed (a keep-alive, an attach with `?lease=`, or a revoke of it).',
  },
  KV_ERR_INVALID_LEASE: {
    status: 400,
    description:
      'A lease id, `ttlMs` or a lease request body is malformed, or the TTL is outside its limits (the message gives them); `?lease=` and `?ttlMs=` together are refused too.',
  },
  KV_ERR_TOO_MANY_LEASES: {
    status: 429,
    description:
      'The cluster holds `leasesMax` leases already; revoke some or let them expire, then retry.',
  },
  KV_ERR_LEASE_TOO_MANY_KEYS: {
    status: 409,
    description: 'The lease has `leaseKeysMax` keys attached already; nothing was written.',
  },
  KV_ERR_FENCED: {
    status: 409,
    description:
      'The write carried a fencing token (`If-Fence`) lower than the highest one the store has seen for its lock (`Fence-Lock`): a newer holder took the lock. Nothing was written; the body gives `lock`, `token` and `highestToken`.',
  },
  KV_ERR_INVALID_FENCE: {
    status: 400,
    description:
      '`If-Fence` or `Fence-Lock` is malformed, or one was sent without the other (the token is a positive whole number; the lock name 1 to 256 bytes of printable text).',
  },
  KV_ERR_LOCK_TIMEOUT: {
    status: 408,
    description:
      'Raised by the SDK and the CLI, never sent by a node: `lock()` (or `kv lock`) waited its whole `waitMs` while another holder kept the lock.',
  },
  KV_ERR_LEASES_UNSUPPORTED: {
    status: 400,
    description:
      'Leases, `?ttlMs=` or fencing were asked of a node that cannot give them: queued writes (`ack=queued`), region or shard mode; leaderless mode supports `?ttlMs=` only.',
  },
  KV_ERR_TICKET_NOT_FOUND: {
    status: 404,
    description:
      'No ticket with this id on this member: it was accepted by another member (`node`, `url`: ask that one), or it has expired (`ticketRetentionMs`, `ticketsMax`).',
  },
  // ---- kv-router in regions mode (--regions): keys routed to their home region
  KV_ERR_CROSS_REGION: {
    status: 400,
    description:
      "kv-router in regions mode, or the SDK's RegionalClient: a batch names keys whose home regions differ (`regions`, with an example key of each in `keys`). A batch is applied by one region's leader, so it must stay in one region: split it, or give related keys one prefix (`--home-region-prefix`).",
  },
  KV_ERR_NOT_READY: {
    status: 503,
    description: 'The node is starting or has stopped serving; `GET /ready` tells when it is.',
  },
  KV_ERR_SHUTTING_DOWN: {
    status: 503,
    description: 'The node is shutting down and takes no new requests.',
  },
  KV_ERR_STORAGE: {
    status: 500,
    description:
      'The storage engine failed. The node stops taking writes, because it can no longer promise durability.',
  },
  // ---- slice W (issue 19): watch, GET /v1/watch
  KV_ERR_COMPACTED: {
    status: 410,
    description:
      "The watch position (`fromLsn`, or `Last-Event-ID`) is older than the start of this node's log: the changes before `oldestLsn` were compacted away. Re-list the prefix and watch again from the list's LSN, or from `oldestLsn`.",
  },
  KV_ERR_WATCH_TOO_SLOW: {
    status: 503,
    description:
      'Sent as the last event of a watch stream, never as a response status line: the watcher read more slowly than changes arrived and its buffer (`watchBufferBytesMax`) filled. The event carries `lsn`, the last change delivered; watch again from it.',
  },
  KV_ERR_WATCHERS_TOO_MANY: {
    status: 503,
    description:
      'This node already serves `watchersMax` watches; watch on another member (followers serve watches too) or retry after `Retry-After` seconds.',
  },
  KV_ERR_INTERNAL: {
    status: 500,
    description: 'An unexpected failure inside the node; its log has the details.',
  },
  KV_ERR_UNAVAILABLE: {
    status: 503,
    description:
      'Raised by the SDK and the CLI, never sent by a node: no node answered (connection refused, reset or timed out).',
  },
  // ---- issue 20: the live dashboard, GET /ui
  KV_ERR_DASHBOARD_STREAMS_TOO_MANY: {
    status: 503,
    description:
      'This node already streams its state to `uiStreamsMax` dashboard pages (GET /ui/v1/stream), or kv-router to `--ui-streams-max`; close one, open the dashboard on another member, or retry after `Retry-After` seconds.',
  },
  // ---- the RESP front (node/src/resp): errors a Redis client sees as `-KV_ERR_... message`
  KV_ERR_RESP_PROTOCOL: {
    status: 400,
    description:
      'The RESP front could not parse what the client sent (not RESP, a bulk string over `respCommandBytesMax`, an array over `respArgsMax`); the connection is closed after the error, as Redis does.',
  },
  KV_ERR_RESP_CONNECTIONS_TOO_MANY: {
    status: 503,
    description:
      'The RESP front already holds `respConnectionsMax` connections; the new one gets this error and is closed. Connect to another member or retry.',
  },
  KV_ERR_RESP_OUTPUT_TOO_LARGE: {
    status: 429,
    description:
      "A RESP client sent commands faster than it read their replies, and the replies waiting for it passed `respOutputBytesMax`; the connection is closed (Redis's client-output-buffer-limit).",
  },
} as const satisfies Record<string, { status: number; description: string }>

/** A stable error code. */
export type ErrorCode = keyof typeof errorCatalog

/** All codes, in catalog order. */
export const errorCodes = Object.keys(errorCatalog) as ErrorCode[]

/** True when `code` is a known error code. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(errorCatalog, code)
}

/** Extra fields carried in an error body beside `code` and `message`. */
/** Details are flat: scalars, or lists of them (the slots and groups a batch spans). */
export type ErrorDetails = Record<
  string,
  string | number | boolean | null | readonly string[] | readonly number[]
>

/** The JSON body of every error response. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string } & ErrorDetails
}

/**
 * An error with a stable code. Thrown inside the node and mapped to an HTTP response by the
 * error handler; rebuilt by the SDK from a response body.
 */
export class KvError extends Error {
  readonly code: ErrorCode
  readonly status: number
  readonly details: ErrorDetails

  constructor(
    code: ErrorCode,
    message: string,
    details: ErrorDetails = {},
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'KvError'
    this.code = code
    this.status = errorCatalog[code].status
    this.details = details
  }

  /** The response body for this error. */
  toBody(): ErrorBody {
    const { code: _code, message: _message, ...details } = this.details
    return { error: { code: this.code, message: this.message, ...details } }
  }
}
