/**
 * The TypeScript SDK for the key-value store.
 *
 * Give it any node's URL. It learns the cluster from `GET /v1/cluster`, sends writes to the
 * leader (following `KV_ERR_NOT_LEADER` hints when leadership moves), and spreads reads
 * round-robin over followers, skipping any that lags more than `maxLagMs` and falling back
 * to the leader. A session makes every read see the client's own writes and never go back
 * in time (read-your-writes and monotonic reads). Every write carries a request id, so a
 * write retried after a connection failure is applied once.
 *
 * In leaderless mode (the view says `"mode": "leaderless"`) it rebuilds the cluster's
 * consistent-hash ring and sends each key's request straight to the first member of the key's
 * preference list that is up, falling back to the next ones and then to any node. Reads may
 * return several concurrent values (siblings) with a causal context; a write that passes that
 * context back replaces the siblings it saw.
 *
 * It speaks cleartext HTTP/2 (h2c) by default. Every failure is a `KvError` with a stable
 * code: the node's own, or `KV_ERR_UNAVAILABLE` when no node could be reached.
 */
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import type { HashRing } from '@kvstore/core'
import { KvError } from '@kvstore/protocol/errors'
import {
  leaseHeaders,
  leaseQuery,
  type Lease,
  type LeaseInfo,
  type LeaseWriteOptions,
} from './leases.js'
import type {
  AckMode,
  AddMemberRequest,
  AuthEnabledResponse,
  BackupManifest,
  AuthStatus,
  BatchRequest,
  BatchRequestOp,
  BatchResponse,
  ClusterMember,
  ClusterMode,
  ClusterView,
  DeleteResponse,
  DigestResponse,
  GrantAccess,
  ListItem,
  ListResponse,
  MemberInfo,
  MemberRole,
  Membership,
  MembershipChangeResponse,
  PutResponse,
  ReadConsistency,
  RoleInfo,
  RoleList,
  RollbackPage,
  RollbackRecord,
  SiblingsResponse,
  StatusResponse,
  TokenResponse,
  TransferResponse,
  UserInfo,
  UserList,
  WhoAmI,
  LeaderlessWriteResponse,
  GroupShardView,
  ShardGroup,
  ShardImport,
  ShardMap,
  ShardMove,
  SlotClaim,
  SlotRange,
  QueuedResponse,
  TicketResponse,
} from '@kvstore/protocol'
import { mergeShardClaims, parseSlotRanges } from '@kvstore/protocol'
import {
  groupUrls,
  isMoveFinished,
  isRouterShardView,
  mapOfRouterView,
  moveInView,
  sameSlots,
  slotsText,
  type RouterShardView,
} from './shards.js'
import { SessionState } from './session.js'
import {
  NodeConnection,
  headerOf,
  retryAfterMs,
  type NodeResponse,
  type SendOptions,
  type TlsOptions,
} from './connection.js'
import { watchChanges, type WatchEvent, type WatchOptions } from './watch.js'
import { Credentials, type KvAuth, type LoginResult } from './credentials.js'
import { checkBackupDir, writeBackupStream } from './backup.js'
import type {
  RegionConflict,
  RegionConflictsOptions,
  RegionConflictsPage,
  RegionDigest,
  RegionsView,
} from './regions.js'
import {
  compareTimestamps,
  isLeaderlessView,
  quorumParam,
  ringOf,
  routeKey,
  type LeaderlessClusterView,
  type Quorum,
} from './leaderless.js'

export { KvError }
export type { ErrorCode } from '@kvstore/protocol/errors'
export type { LeaderlessClusterView, LeaderlessMember, Quorum, RingArc } from './leaderless.js'

export type { GroupShardView, ShardGroup, ShardImport, ShardMap, ShardMove, SlotClaim, SlotRange }

export type {
  AckMode,
  AuthStatus,
  ClusterMember,
  ClusterMode,
  ClusterView,
  GrantAccess,
  ListItem,
  MemberInfo,
  MemberRole,
  Membership,
  ReadConsistency,
  RoleInfo,
  RollbackPage,
  RollbackRecord,
  UserInfo,
  WhoAmI,
}
/** A new member (`addMember`, `replaceMember`): its id, client URL and peer URL. */
export type NewMember = AddMemberRequest
/** What a membership change answers: the change made, and the configuration after it. */
export type MembershipChange = MembershipChangeResponse

/**
 * What `promoteMember` (with `waitMs`) and `replaceMember` report each time the cluster says
 * the new member has not caught up yet (`KV_ERR_LEARNER_BEHIND`), before they ask again.
 */
export interface CatchUpProgress {
  /** The learner waited for. */
  member: string
  /** Entries it lags the leader's log by, when the leader said. */
  lagEntries: number | null
  /** Whether the leader has a stream to it, when the leader said. */
  connected: boolean | null
  /** Since the first call. */
  elapsedMs: number
  /** The leader's message. */
  message: string
}

/** Options of the membership changes that wait for a learner to catch up. */
export interface CatchUpOptions {
  /**
   * Keep asking while the learner has not caught up (`KV_ERR_LEARNER_BEHIND`) for up to this
   * long, then throw the last `KV_ERR_LEARNER_BEHIND`.
   */
  timeoutMs?: number
  /** Called each time the learner is found behind, before the next try. */
  onProgress?: (progress: CatchUpProgress) => void
}

/** What `moveSlots` asks for. */
export interface ShardMoveRequest {
  /** The slots to move: `0-99,200` or ranges. They must all belong to one group. */
  slots: string | SlotRange[]
  /** The group to move them to. */
  to: string
  /**
   * The group that owns them now (the move's source), when known: the call goes straight to
   * its members in the directory. Without it, to the client's URLs (a member of any group, or
   * a kv-router), following `KV_ERR_WRONG_SHARD` to the owner.
   */
  from?: string
}

/** A move as `moveSlots` or `abortMove` left it, and where the call was answered. */
export interface ShardMoveStarted {
  move: ShardMove
  /** The URL that answered: the source group's leader, or a kv-router. */
  url: string
  /** The source group, when the call learnt it (`from`, or a `KV_ERR_WRONG_SHARD` hint). */
  group: string | null
}

/** Options of `waitMove`. */
export interface WaitMoveOptions {
  /** The move's source group, when known (else it is looked for in every group). */
  group?: string
  /** Where to look first (default: the client's URLs). */
  url?: string
  /** Give up after this long (default 600 000 ms). */
  timeoutMs?: number
  /** Pause between two looks (default 500 ms). */
  pollMs?: number
  /** Called with the move (and the view it was read from) each time it changed. */
  onProgress?: (move: ShardMove, view: GroupShardView) => void
}

/** The whole shard map as the groups say it (`shardOverview`). */
export interface ShardOverview {
  /** Every group's claims merged: per slot, the highest version wins. */
  map: ShardMap
  /** The view of every group that answered, in directory order. */
  views: GroupShardView[]
  /** The groups none of whose members answered. */
  unreachable: { group: string; code: string; message: string }[]
  /**
   * The kv-router whose map this is, when the client's URL is a router and no group answered
   * directly (their members may be out of the client's reach); null otherwise.
   */
  router: string | null
}

/**
 * GET /v1/cluster of a single-leader cluster; a node in a region (multi-leader) adds its
 * region's view (`regions`: shipping, cursors, lag, conflict counts).
 */
export type RegionalClusterView = ClusterView & { regions?: RegionsView }

/** The answer of `transferLeadership` (POST /admin/v1/transfer-leadership). */
export type TransferResult = TransferResponse
/** One page of `list` (GET /v1/kv). */
export type ListPage = ListResponse
/** The answer of `batch` (POST /v1/batch). */
export type BatchResult = BatchResponse
/** One node's GET /v1/status. */
export type NodeStatus = StatusResponse
/** One node's GET /v1/digest. */
export type StateDigest = DigestResponse

export type { KvAuth, TlsOptions }
export type { BackupManifest }

/** Options of `backup`. */
export interface BackupOptions {
  /** Directory to write the backup into: it must not exist, or be empty. Made with mode 0700. */
  to: string
  /**
   * The member to back up: `follower` (default: the connected follower with the highest applied
   * LSN, falling back to the leader only when no follower can be reached), `leader`, or a
   * member id.
   */
  from?: 'follower' | 'leader' | (string & {})
  /**
   * Pace the backup to at most this many bytes a second (at least 65 536), as pg_basebackup's
   * --max-rate does: the member's CPU and disk reads stay within a budget beside the
   * foreground load. Unlimited by default.
   */
  maxBytesPerS?: number
  /** Longest wait for the node to start sending, and between two pieces. Default 60 000 ms. */
  timeoutMs?: number
}

/** What `backup` wrote. */
export interface BackupResult {
  dir: string
  /** The backup's manifest (checked, and every file checked against it). */
  manifest: BackupManifest
  /** Id of the member backed up. */
  member: string
  /** Its role when it took the backup (the node says; `leader`, `follower`, `replica`, ...). */
  role: string
  /** Bytes written, the manifest included. */
  bytes: number
  /** Files written, the manifest included. */
  files: number
  durationMs: number
  /**
   * Why the backup did not come from the kind of member asked for (a follower by default),
   * e.g. that no follower could be reached and the leader was backed up instead; null otherwise.
   */
  fallback: string | null
}

/** What a node answers to a backup into its archive (`backupToArchive`). */
export interface ArchiveBackupResult {
  lsn: number
  /** The base backup's directory on the node. */
  dir: string
  keys: number
  bytes: number
  files: number
  digest: string
  durationMs: number
  /** Id of the member that took it. */
  member: string
}

/** What `backupAllMembers` wrote: one backup per member, in `dir/<memberId>`. */
export interface AllMembersBackupResult {
  dir: string
  members: BackupResult[]
  bytes: number
  durationMs: number
}

export interface KvClientOptions {
  /**
   * One or more node URLs to learn the cluster from, such as `https://127.0.0.1:7001`
   * (`http://` for a node serving plaintext on loopback).
   */
  url: string | string[]
  /**
   * `h2` (default): one multiplexed HTTP/2 connection per node (over TLS for https URLs, h2c
   * for http URLs; `h2c` is accepted as a synonym); `http1`: a pool of HTTP/1.1 connections.
   */
  protocol?: 'h2' | 'h2c' | 'http1'
  /** TLS: the cluster's CA (`ca.crt` from `kv certs init`), and optionally a client certificate. */
  tls?: TlsOptions
  /**
   * Credentials: `{ token }`, or `{ user, password }`, traded for a token when first needed and
   * renewed before it expires. Omit with a client certificate (in `tls`), or with auth off.
   */
  auth?: KvAuth
  /** Gives up on a request after this long without a response. Default 10 000 ms. */
  timeoutMs?: number
  /** HTTP/1.1 pool size per node. Default 16. */
  connections?: number
  /** Where reads go: `followers` (default, falling back to the leader), `leader`, or `any` member. */
  readFrom?: 'followers' | 'leader' | 'any'
  /** A follower that lags more than this is skipped for reads until it catches up. Default 1000 ms. */
  maxLagMs?: number
  /**
   * A follower that does not answer a read within this long is skipped (a paused or overloaded
   * replica) and the read goes to the leader. A read that carries a session also allows the
   * follower up to `maxLagMs` to catch up with it first. Default 1000 ms.
   */
  followerReadTimeoutMs?: number
  /** Keep a session (read-your-writes, monotonic reads). Default true. */
  session?: boolean
  /**
   * Durability of writes that do not choose one; the cluster's default when omitted.
   * Single-leader only: ignored in leaderless mode (see `w`).
   */
  ack?: AckMode
  /**
   * Consistency of reads (`get`, `list`) that do not choose one. `committed` makes every read
   * show only committed writes, never one a failover could roll back (see `ReadOptions`).
   * Single-leader only: ignored in leaderless mode. Default: `default`.
   */
  consistency?: ReadConsistency
  /** Attempts at least, for a request that meets an unreachable node or a moved leader. Default 4. */
  attempts?: number
  /**
   * Keeps retrying a request that meets an unreachable node, a moved leader or an election in
   * progress for up to this long (beyond `attempts`), so a failover is ridden through. A write is
   * retried with the same request id, so it is applied at most once. Default 10 000 ms.
   *
   * Leaderless mode: a request that cannot reach a node goes to the key's next node at once; when
   * every node failed, or a coordinator could not gather `w`/`r` replicas
   * (`KV_ERR_QUORUM_UNAVAILABLE`), it is retried within this budget. `KV_ERR_INVALID_CONTEXT`
   * and `KV_ERR_TOO_MANY_SIBLINGS` are never retried. Leaderless nodes keep no request ids, so a
   * write whose first attempt was stored (on fewer than `w` replicas, or before the answer was
   * lost) may be stored twice: two siblings with the same value, which `get` shows as a conflict.
   */
  retryForMs?: number
  /** How often the cluster view is refreshed. Default 2000 ms. */
  refreshIntervalMs?: number
  /** Leaderless mode: acks a write waits for when it does not choose; the cluster's default when omitted. */
  w?: Quorum
  /** Leaderless mode: answers a read waits for when it does not choose; the cluster's default when omitted. */
  r?: Quorum
}

/** Write conditions, mapped to If-Match / If-None-Match. Use at most one. */
export interface WriteConditions {
  /** Only if the key currently has exactly this version. */
  ifVersion?: number
  /** Only if the key does not exist (create-only). */
  ifAbsent?: boolean
  /** Only if the key exists. */
  ifExists?: boolean
}

/**
 * Options of one write in leaderless mode. Giving any of them to a cluster in another mode
 * fails with `KV_ERR_UNSUPPORTED_IN_MODE`.
 */
export interface LeaderlessWriteOptions {
  /**
   * Acks (replicas that stored the write durably) to wait for: a count, `quorum` (a majority
   * of the key's replicas) or `all`. Default: the client's `w`, else the cluster's `defaultW`.
   * Fewer within the cluster's quorum timeout fails with `KV_ERR_QUORUM_UNAVAILABLE`; the
   * write is not undone and spreads from the replicas that took it.
   */
  w?: Quorum
  /**
   * `true`: when replicas of the key are down, healthy nodes further along the ring stand in
   * for them and count towards `w` (hinted handoff: they hand the write over when the replica
   * is back). `false` (default): only the key's own replicas count.
   */
  sloppy?: boolean
  /**
   * The causal context of an earlier read or write of this key (its `context`). The write
   * replaces every value that context saw, so a read-modify-write that passes it resolves the
   * siblings it read; without one, the write is kept beside the current values (a sibling).
   */
  context?: string
}

/** Options of one write. */
export interface WriteOptions extends WriteConditions, LeaderlessWriteOptions, LeaseWriteOptions {
  /** Durability to wait for (single-leader mode). */
  ack?: AckMode
  /** Request id (a random one by default); a retry with the same id is applied once. */
  requestId?: string
}

/**
 * Options of one read in leaderless mode. Giving any of them to a cluster in another mode
 * fails with `KV_ERR_UNSUPPORTED_IN_MODE`.
 */
export interface LeaderlessReadOptions {
  /**
   * Replicas to hear from before answering: a count, `quorum` or `all`. Default: the client's
   * `r`, else the cluster's `defaultR`. With `r + w > replicas` a read sees every write
   * acknowledged before it began.
   */
  r?: Quorum
  /**
   * Replicas found stale are repaired in the `background` (default) after the answer, or
   * before it (`blocking`), so that the next read at any replica sees the value.
   */
  repair?: 'background' | 'blocking'
}

/** Options of one read. */
export interface ReadOptions extends LeaderlessReadOptions {
  /** Read from the leader, whatever `readFrom` says. */
  fromLeader?: boolean
  /**
   * `linearizable`: read from the leader, which first confirms with a majority that it still
   * leads, so the result reflects every write acknowledged before the read began. Costs a
   * majority round trip. `committed`: the replica's state at the commit LSN it knows, never a
   * write that could still be rolled back (any replica, no waiting; with the session, it waits
   * until the session's writes commit). Default: the client's `consistency`, else the
   * replica's applied state (with the session's guarantees).
   */
  consistency?: ReadConsistency
}

/** One of the concurrent values of a key in leaderless mode. */
export interface Sibling {
  value: Buffer
  /** When it was written: `<wall ms>.<logical>.<node>` (a hybrid logical clock). */
  timestamp: string
}

/** Every value of a key in leaderless mode (`getSiblings`). */
export interface SiblingsResult {
  key: string
  /** The concurrent values, newest timestamp first; one unless writes raced. */
  siblings: Sibling[]
  /** Pass to the next write of this key to replace every sibling seen here. */
  context: string
  /** The newest sibling's timestamp. */
  timestamp: string
  /** URL of the node that coordinated the read. */
  servedBy: string
}

/** What a write reports in leaderless mode, beside the fields every mode reports. */
export interface LeaderlessWriteInfo {
  /** The key's causal context after this write; pass it to the next write of the key. */
  context: string
  /** The write's timestamp, `<wall ms>.<logical>.<node>`. */
  timestamp: string
  /** Replicas (or stand-ins) that stored it durably before the answer. */
  acks: number
  /** The acks it waited for. */
  w: number
  /** Id of the node that coordinated it. */
  coordinator: string
  /** Ids of the replicas that were down and got a hint (stand-ins hold it for them). */
  hinted: string[]
  /** For each id in `hinted`, the member that stood in and holds its hint, when the node says. */
  standIns: Record<string, string>
}

/**
 * A value read with `get`. In leaderless mode a key may hold several concurrent values
 * (siblings): then `value` is the newest of them, `siblings` lists them all (`conflict` is
 * true), and a write that passes `context` replaces them, so merge them before writing back.
 */
export interface GetResult {
  value: Buffer
  /** The key's version (the LSN that last wrote it); 0 in leaderless mode, which has no versions. */
  version: number
  /** The replica's applied LSN when it served the read; 0 in leaderless mode. */
  appliedLsn: number
  /** `consistency: 'committed'`: the commit LSN the read shows the state at. */
  commitLsn?: number
  /** Id or URL of the node that answered. */
  servedBy: string
  /** Leaderless mode: the causal context to pass to the next write of the key. */
  context?: string
  /** Leaderless mode: the timestamp of `value`. */
  timestamp?: string
  /** Leaderless mode: every concurrent value, newest first (`value` is the first). */
  siblings?: Sibling[]
  /** Leaderless mode: true when the key holds more than one value. */
  conflict?: boolean
  /**
   * Regions: the stamp of the write that made this value (`<wallMs>.<logical>@<region>`: the
   * region that wrote it).
   */
  stamp?: string
}

/**
 * The result of `put`: the node's answer. In leaderless mode it also carries
 * `LeaderlessWriteInfo`, and `version` and `lsn` are 0 and `session` empty (use `context`).
 */
export interface PutResult extends PutResponse, Partial<LeaderlessWriteInfo> {}

/**
 * The result of `delete`: the node's answer. In leaderless mode it also carries
 * `LeaderlessWriteInfo`, `lsn` is 0, `previousVersion` null and `session` empty.
 */
export interface DeleteResult extends DeleteResponse, Partial<LeaderlessWriteInfo> {}

export interface ListOptions extends ReadOptions {
  /** Only keys starting with this prefix. */
  prefix?: string
  /** First key (inclusive). */
  start?: string
  /** Keys per page. */
  limit?: number
  /** `nextCursor` of the previous page. */
  cursor?: string
  /** Include values (base64) in the page. */
  values?: boolean
}

/** One op of an atomic batch. */
export type BatchOp =
  | ({ op: 'put'; key: string; value: string | Uint8Array } & WriteConditions)
  | ({ op: 'delete'; key: string } & Omit<WriteConditions, 'ifAbsent'>)

/** The JSON body of POST /v1/batch. */
function batchBody(ops: BatchOp[]): Buffer {
  const body: BatchRequest = {
    ops: ops.map((op): BatchRequestOp => {
      if (op.op === 'put') {
        const { value, ...rest } = op
        return typeof value === 'string'
          ? { ...rest, value }
          : { ...rest, valueBase64: Buffer.from(value).toString('base64') }
      }
      return op
    }),
  }
  return Buffer.from(JSON.stringify(body))
}

// ---------------------------------------------------------------- queued writes (ack=queued)

/** Options of a queued write (`putQueued`, `deleteQueued`, `batchQueued`). */
export interface QueuedWriteOptions extends WriteConditions {
  /** Request id (a random one by default): the leader applies the write once, however often it is forwarded. */
  requestId?: string
  /**
   * The member to queue it on (its client URL). Default: the seeds, then the members last seen,
   * in order; the next one is tried when one does not answer or its outbox is full.
   */
  url?: string
}

/** A queued write's ticket, as the accepting member answered 202. */
export interface QueuedResult extends QueuedResponse {
  /** Client URL of the member that holds the ticket. */
  url: string
  requestId: string
}

/** What became of a queued write (GET /v1/tickets/<id>). */
export type TicketResult = TicketResponse

/** `waitTicket` gave up: the write is still pending (it may still be applied later). */
export class TicketWaitTimeoutError extends Error {
  constructor(
    readonly ticket: string,
    readonly timeoutMs: number,
  ) {
    super(
      `ticket ${ticket} is still pending after ${timeoutMs} ms (the write stays queued and may still be applied; ask again with ticket())`,
    )
    this.name = 'TicketWaitTimeoutError'
  }
}

/** Failures after which a queued write is offered to the next member. */
const queuedRetryable = new Set([
  'KV_ERR_UNAVAILABLE',
  'KV_ERR_SHUTTING_DOWN',
  'KV_ERR_NOT_READY',
  'KV_ERR_OUTBOX_FULL',
  'KV_ERR_NOT_A_MEMBER',
])

/** Encodes a key for the URL path: each segment percent-encoded, `/` kept. */
export function keyPath(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/')
}

function conditionHeaders(conditions: WriteConditions): Record<string, string> {
  const set = [
    conditions.ifVersion !== undefined,
    conditions.ifAbsent === true,
    conditions.ifExists === true,
  ]
  if (set.filter(Boolean).length > 1) {
    throw new KvError(
      'KV_ERR_INVALID_PRECONDITION',
      'use at most one of ifVersion, ifAbsent and ifExists',
    )
  }
  if (conditions.ifVersion !== undefined) return { 'if-match': `"${conditions.ifVersion}"` }
  if (conditions.ifAbsent === true) return { 'if-none-match': '*' }
  if (conditions.ifExists === true) return { 'if-match': '*' }
  return {}
}

/**
 * Codes a request is retried on. `KV_ERR_GROUP_UNAVAILABLE` is kv-router's answer when no
 * member of the key's group could be reached: the same as `KV_ERR_UNAVAILABLE`, one hop further.
 */
const retryable = new Set([
  'KV_ERR_UNAVAILABLE',
  'KV_ERR_NOT_LEADER',
  'KV_ERR_SHUTTING_DOWN',
  'KV_ERR_NOT_READY',
  'KV_ERR_GROUP_UNAVAILABLE',
])

/**
 * A write also retries a leader deposed while it waited for confirmations: the outcome is
 * unknown, and the same request id makes the retry return the first result if it survived.
 * And a write to a slot fenced while it moves to another group (`KV_ERR_SLOT_MOVING`): the
 * fence lasts a moment and the write was not applied, so it is retried, after a short pause,
 * within the same budget. `KV_ERR_WRONG_SHARD` and `KV_ERR_CROSS_SHARD` are never retried: the
 * SDK does not route keys to groups (kv-router does), so it reports them.
 */
const writeRetryable = new Set([...retryable, 'KV_ERR_STALE_EPOCH', 'KV_ERR_SLOT_MOVING'])

/**
 * A membership change also retries a change still in flight (a leader just elected commits an
 * entry of its own epoch before it takes one): every change is idempotent on the node, so a
 * retry after a lost answer, or on the leader a removed leader handed over to, is safe.
 */
const membershipRetryable = new Set([...writeRetryable, 'KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS'])

/** How long `replaceMember` keeps calling while the new member catches up, by default. */
const replaceTimeoutMsDefault = 600_000

/** Pause between two tries of a promotion or replacement whose learner is behind. */
const catchUpPollMs = 1000

/** Leaderless mode: failures of one node, after which the next node in the key's order is tried. */
const nodeFailures = new Set(['KV_ERR_UNAVAILABLE', 'KV_ERR_SHUTTING_DOWN', 'KV_ERR_NOT_READY'])

/** Leaderless mode: a node the client could not reach is tried last for this long (ms). */
const unreachableForMs = 2000

function unsupported(what: string, mode: string): KvError {
  return new KvError('KV_ERR_UNSUPPORTED_IN_MODE', `${what} (this cluster is ${mode})`)
}

/** The single-leader options given to a leaderless request, named. */
function singleLeaderOptions(options: WriteOptions & ReadOptions): string[] {
  const given: string[] = []
  if (options.ifVersion !== undefined) given.push('ifVersion')
  if (options.ifAbsent) given.push('ifAbsent')
  if (options.ifExists) given.push('ifExists')
  if (options.ack !== undefined) given.push('ack')
  if (options.consistency === 'linearizable') given.push("consistency: 'linearizable'")
  if (options.consistency === 'committed') given.push("consistency: 'committed'")
  return given
}

/** The leaderless options given to a request in another mode, named. */
function leaderlessOptions(options: LeaderlessWriteOptions & LeaderlessReadOptions): string[] {
  return (['w', 'r', 'sloppy', 'context', 'repair'] as const).filter(
    (name) => options[name] !== undefined,
  )
}

function parseSiblings(body: Buffer): { context: string; siblings: Sibling[] } {
  const parsed = JSON.parse(body.toString('utf8')) as SiblingsResponse
  const siblings = parsed.siblings
    .map((s) => ({ value: Buffer.from(s.valueBase64, 'base64'), timestamp: s.timestamp }))
    .sort((a, b) => compareTimestamps(b.timestamp, a.timestamp))
  return { context: parsed.context, siblings }
}

/**
 * Shard admin calls that failed after an earlier attempt whose answer was lost (it may have
 * been applied): the URL of that attempt.
 */
const answerLostAt = new WeakMap<KvError, string>()

/** Backup requests that failed before the node sent anything: another member may be tried. */
const failedBeforeStream = new WeakSet<KvError>()

/** A client of a whole cluster (or of one standalone node). Reuse one; `close()` when done. */
export class KvClient {
  private readonly options: Required<
    Omit<KvClientOptions, 'ack' | 'url' | 'w' | 'r' | 'tls' | 'auth' | 'consistency'>
  > & {
    ack: AckMode | undefined
    consistency: ReadConsistency | undefined
    w: Quorum | undefined
    r: Quorum | undefined
    tls: TlsOptions | undefined
    credentials: Credentials
  }
  private readonly seeds: string[]
  private readonly connections = new Map<string, NodeConnection>()
  private view: ClusterView | null = null
  /** The view in leaderless mode (then `view` is null), with the ring rebuilt from it. */
  private leaderless: { view: LeaderlessClusterView; ring: HashRing } | null = null
  /** Leaderless mode: nodes the client could not reach, and when. */
  private readonly unreachable = new Map<string, number>()
  private viewFetchedAt = 0
  private refreshing: Promise<void> | null = null
  private leaderUrl: string | null = null
  /** Followers skipped for reads, with the lag that got them skipped. */
  private readonly lagging = new Map<string, number>()
  private nextReplica = 0
  /** The session's token: a node's (s1.), or a router's with a position per group (r1.). */
  private readonly sessionState = new SessionState()
  private closed = false
  /** The directory of groups of a sharded deployment, from the last shard view (or the caller). */
  private directory: ShardGroup[] = []
  /** Shard admin calls: the URL that answered last for each group ('' for the client's URLs). */
  private readonly groupLeaders = new Map<string, string[]>()

  /** Creates a client; it connects lazily, on the first request. */
  constructor(options: KvClientOptions) {
    const urls = Array.isArray(options.url) ? options.url : [options.url]
    if (urls.length === 0)
      throw new KvError('KV_ERR_INVALID_ARGUMENT', 'give at least one node URL')
    this.seeds = urls.map((url) => {
      let parsed: URL
      try {
        parsed = new URL(url)
      } catch {
        throw new KvError('KV_ERR_INVALID_ARGUMENT', `${url} is not a URL`)
      }
      if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `only https:// and http:// URLs are supported, got ${url}`,
        )
      }
      return parsed.origin
    })
    if (options.auth !== undefined) {
      const a = options.auth as Partial<{ token: unknown; user: unknown; password: unknown }>
      const ok =
        (typeof a.token === 'string' && a.token !== '') ||
        (typeof a.user === 'string' && typeof a.password === 'string')
      if (!ok)
        throw new KvError('KV_ERR_INVALID_ARGUMENT', 'auth needs { token } or { user, password }')
    }
    this.options = {
      protocol: options.protocol ?? 'h2',
      tls: options.tls,
      credentials: new Credentials(options.auth, (user, password) => this.login(user, password)),
      timeoutMs: options.timeoutMs ?? 10_000,
      connections: options.connections ?? 16,
      readFrom: options.readFrom ?? 'followers',
      maxLagMs: options.maxLagMs ?? 1000,
      followerReadTimeoutMs: options.followerReadTimeoutMs ?? 1000,
      session: options.session ?? true,
      attempts: options.attempts ?? 4,
      retryForMs: options.retryForMs ?? 10_000,
      refreshIntervalMs: options.refreshIntervalMs ?? 2000,
      ack: options.ack,
      consistency: options.consistency,
      w: options.w,
      r: options.r,
    }
    if (options.w !== undefined) quorumParam('w', options.w)
    if (options.r !== undefined) quorumParam('r', options.r)
    if (
      options.consistency !== undefined &&
      !['default', 'committed', 'linearizable'].includes(options.consistency)
    ) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `consistency must be default, committed or linearizable; got ${JSON.stringify(options.consistency)}`,
      )
    }
  }

  /** The first seed URL. */
  get url(): string {
    return this.seeds[0] as string
  }

  /**
   * The session token: pass it to another client with `useSession` to share read-your-writes.
   * A node's token (`s1.…`), or through a kv-router in front of several groups the router's
   * (`r1.…`, a position in each group).
   */
  get session(): string | null {
    return this.sessionState.token
  }

  /**
   * Continues a session that another client (or process) started: merged with this client's
   * own, so neither loses what it has seen. Throws KV_ERR_INVALID_SESSION for a malformed token,
   * and for a node's token when this client holds a router's (it names no group).
   */
  useSession(token: string): void {
    if (!this.sessionState.add(token))
      throw new KvError(
        'KV_ERR_INVALID_SESSION',
        "this client holds a router's session token (r1.…): a node's token names no group and cannot be added to it",
      )
  }

  /**
   * Reads a key from a replica that has applied the session. Returns null when it does not exist.
   *
   * Leaderless mode: reads `r` replicas through a coordinator. When the key holds several
   * concurrent values, `value` is the newest, `siblings` has them all and `conflict` is true:
   * merge them and write with `context` to resolve them (see `getSiblings`).
   */
  async get(key: string, options: ReadOptions = {}): Promise<GetResult | null> {
    if ((await this.currentMode(options)) === 'leaderless') {
      const { res, url } = await this.leaderlessRead(key, options, false)
      if (res.status === 404) return null
      const context = headerOf(res, 'kv-context') ?? ''
      let siblings: Sibling[]
      if (res.status === 300) {
        siblings = parseSiblings(res.body).siblings
      } else {
        siblings = [{ value: res.body, timestamp: headerOf(res, 'kv-timestamp') ?? '' }]
      }
      const newest = siblings[0] as Sibling
      return {
        value: newest.value,
        version: 0,
        appliedLsn: 0,
        servedBy: url,
        context,
        timestamp: newest.timestamp,
        siblings,
        conflict: siblings.length > 1,
      }
    }
    const consistency = options.consistency ?? this.options.consistency ?? 'default'
    const linearizable = consistency === 'linearizable'
    const { res, url } = await this.read(
      `/v1/kv/${keyPath(key)}${consistency !== 'default' ? `?consistency=${consistency}` : ''}`,
      linearizable ? { ...options, fromLeader: true } : options,
      { allowNotFound: true },
    )
    if (res.status === 404) return null
    const stamp = headerOf(res, 'kv-stamp')
    const commitLsn = headerOf(res, 'kv-commit-lsn')
    return {
      value: res.body,
      version: Number((headerOf(res, 'etag') ?? '"0"').replaceAll('"', '')),
      appliedLsn: Number(headerOf(res, 'kv-applied-lsn') ?? 0),
      ...(commitLsn !== undefined ? { commitLsn: Number(commitLsn) } : {}),
      servedBy: url,
      ...(stamp !== undefined ? { stamp } : {}),
    }
  }

  /**
   * Every concurrent value of a key (leaderless mode only), newest first, with the context that
   * resolves them. Returns null when the key does not exist (or was deleted).
   */
  async getSiblings(
    key: string,
    options: LeaderlessReadOptions = {},
  ): Promise<SiblingsResult | null> {
    const mode = await this.currentMode({})
    if (mode !== 'leaderless') throw unsupported('getSiblings needs leaderless mode; use get', mode)
    const { res, url } = await this.leaderlessRead(key, options, true)
    if (res.status === 404) return null
    const { context, siblings } = parseSiblings(res.body)
    return { key, siblings, context, timestamp: siblings[0]?.timestamp ?? '', servedBy: url }
  }

  /**
   * Writes a key. With conditions it fails with `KV_ERR_PRECONDITION_FAILED` when they do not hold.
   *
   * Leaderless mode: waits for `w` acks; pass the `context` of the read the value is based on,
   * or (with `conflicts: siblings`) the write becomes one more sibling beside the current values.
   * Conditions and `ack` are single-leader features (`KV_ERR_UNSUPPORTED_IN_MODE`). Retries
   * carry one request id, so a retry that reaches the coordinator of the first attempt is
   * applied once; one that reaches another (the first died) may add a duplicate sibling.
   */
  async put(
    key: string,
    value: string | Uint8Array,
    options: WriteOptions = {},
  ): Promise<PutResult> {
    const body = typeof value === 'string' ? Buffer.from(value, 'utf8') : value
    if ((await this.currentMode(options)) === 'leaderless') {
      const info = await this.leaderlessWrite('PUT', key, options, body)
      return { key, version: 0, lsn: 0, session: '', ...info }
    }
    const res = await this.write('PUT', `/v1/kv/${keyPath(key)}${leaseQuery(options)}`, options, {
      body,
      headers: {
        'content-type': 'application/octet-stream',
        ...conditionHeaders(options),
        ...leaseHeaders(options),
      },
    })
    return JSON.parse(res.body.toString('utf8')) as PutResponse
  }

  /**
   * Deletes a key. Fails with `KV_ERR_KEY_NOT_FOUND` when it does not exist.
   *
   * Leaderless mode: writes a tombstone, waiting for `w` acks, and succeeds whether or not the
   * key exists. With `context` it removes the values that context saw (a value written
   * concurrently survives as a sibling); without one, the values a read quorum holds now.
   */
  async delete(key: string, options: Omit<WriteOptions, 'ifAbsent'> = {}): Promise<DeleteResult> {
    if ((await this.currentMode(options)) === 'leaderless') {
      const info = await this.leaderlessWrite('DELETE', key, options)
      return { key, deleted: true, lsn: 0, previousVersion: null, session: '', ...info }
    }
    const res = await this.write('DELETE', `/v1/kv/${keyPath(key)}`, options, {
      headers: conditionHeaders(options),
    })
    return JSON.parse(res.body.toString('utf8')) as DeleteResponse
  }

  /** Applies puts and deletes atomically, in order, as one write. */
  async batch(
    ops: BatchOp[],
    options: Omit<WriteOptions, keyof WriteConditions> = {},
  ): Promise<BatchResult> {
    const res = await this.write('POST', `/v1/batch${leaseQuery(options)}`, options, {
      body: batchBody(ops),
      headers: { 'content-type': 'application/json', ...leaseHeaders(options) },
    })
    return JSON.parse(res.body.toString('utf8')) as BatchResponse
  }

  /**
   * Grants a lease of `ttlMs` (single-leader mode). Attach keys with `put(key, value, { lease:
   * id })`; keep it alive with `keepAliveLease` (or `keepLeaseAlive` in leases.ts); its end
   * deletes them. See docs/leases.md.
   */
  async grantLease(ttlMs: number): Promise<Lease> {
    return (await this.adminWrite('POST', '/v1/leases', { ttlMs })) as Lease
  }

  /** Renews a lease at the leader. `KV_ERR_LEASE_NOT_FOUND` once it has expired. */
  async keepAliveLease(
    id: string,
    options: { timeoutMs?: number; deadline?: number } = {},
  ): Promise<{ id: string; ttlMs: number }> {
    return (await this.adminWrite(
      'POST',
      `/v1/leases/${encodeURIComponent(id)}/keepalive`,
      undefined,
      options,
    )) as {
      id: string
      ttlMs: number
    }
  }

  /** Revokes a lease: deletes the keys still attached to it, and it, in one entry. */
  async revokeLease(
    id: string,
  ): Promise<{ id: string; revoked: true; lsn: number; deletedKeys: number }> {
    return (await this.adminWrite('DELETE', `/v1/leases/${encodeURIComponent(id)}`)) as {
      id: string
      revoked: true
      lsn: number
      deletedKeys: number
    }
  }

  /** A lease's TTL, remaining time (as the leader sees it) and attached keys. */
  async leaseInfo(id: string): Promise<LeaseInfo> {
    return (await this.adminWrite('GET', `/v1/leases/${encodeURIComponent(id)}`)) as LeaseInfo
  }

  /** One page of keys in key order, from a replica that has applied the session. */
  async list(options: ListOptions = {}): Promise<ListPage> {
    const query = new URLSearchParams()
    if (options.prefix !== undefined) query.set('prefix', options.prefix)
    if (options.start !== undefined) query.set('start', options.start)
    if (options.limit !== undefined) query.set('limit', String(options.limit))
    if (options.cursor !== undefined) query.set('cursor', options.cursor)
    if (options.values) query.set('values', 'true')
    const consistency = options.consistency ?? this.options.consistency
    // A listing is never linearizable: a client whose default is, lists at the default level.
    if (consistency === 'committed') query.set('consistency', 'committed')
    else if (options.consistency === 'linearizable') query.set('consistency', 'linearizable')
    const qs = query.toString()
    const { res } = await this.read(`/v1/kv${qs ? `?${qs}` : ''}`, options)
    return JSON.parse(res.body.toString('utf8')) as ListResponse
  }

  /** Every key matching `options`, page by page. */
  async *listAll(options: Omit<ListOptions, 'cursor'> = {}): AsyncGenerator<ListItem> {
    let cursor: string | undefined
    do {
      const page = await this.list({ ...options, ...(cursor ? { cursor } : {}) })
      yield* page.items
      cursor = page.nextCursor ?? undefined
    } while (cursor !== undefined)
  }

  /**
   * The committed changes under `prefix` (see watch.ts): an async iterator that resumes by
   * itself from its last LSN on another member when a stream breaks, and ends with
   * KV_ERR_COMPACTED when its position is older than the log.
   */
  watch(prefix = '', options: WatchOptions = {}): AsyncGenerator<WatchEvent> {
    return watchChanges(
      {
        nodes: () => this.knownNodes(),
        connection: (url) => this.connection(url),
        refresh: () => this.refresh(true),
        closed: () => this.closed,
      },
      prefix,
      options,
    )
  }

  /**
   * The status of one node: `url`'s, or else the first seed's that answers (then the first
   * member's that answers, so it works after the seed named first went down).
   */
  async status(url?: string): Promise<NodeStatus> {
    return (await this.nodeGet('/v1/status', url)) as StatusResponse
  }

  /**
   * A hash of one node's whole state at its applied LSN: `url`'s, or else the first seed's
   * (or member's) that answers.
   */
  async digest(url?: string): Promise<StateDigest> {
    return (await this.nodeGet('/v1/digest', url)) as DigestResponse
  }

  /** GET `path` from `url`, or from the first node that answers when no URL is given. */
  private async nodeGet(path: string, url: string | undefined): Promise<unknown> {
    if (url === undefined) return this.anyNode(path)
    const res = await this.connection(url).send('GET', path)
    return JSON.parse(res.body.toString('utf8')) as unknown
  }

  /**
   * Hands leadership to the member `to`, or to the most up-to-date follower: writes pause
   * while it catches up, then it leads. Resolves once it does.
   */
  async transferLeadership(to?: string): Promise<TransferResult> {
    const url = await this.leader()
    const res = await this.connection(url).send('POST', '/admin/v1/transfer-leadership', {
      body: Buffer.from(JSON.stringify(to === undefined ? {} : { to }), 'utf8'),
      headers: { 'content-type': 'application/json' },
    })
    const result = JSON.parse(res.body.toString('utf8')) as TransferResponse
    if (result.leaderUrl) this.leaderUrl = result.leaderUrl
    await this.refresh(true).catch(() => {})
    return result
  }

  /**
   * Writes one node (`url`, or else the first seed, or member, that answers) dropped from its
   * log because a new leader never had them: unconfirmed `ack=async` writes of a deposed leader.
   * Oldest first, after `after`.
   */
  async rollbacks(
    options: { url?: string; after?: number; limit?: number } = {},
  ): Promise<RollbackPage> {
    const query = new URLSearchParams()
    if (options.after !== undefined) query.set('after', String(options.after))
    if (options.limit !== undefined) query.set('limit', String(options.limit))
    const qs = query.toString()
    return (await this.nodeGet(
      `/admin/v1/rollbacks${qs ? `?${qs}` : ''}`,
      options.url,
    )) as RollbackPage
  }

  /**
   * The cluster as the nodes describe it, refreshed now. A leaderless cluster fails with
   * `KV_ERR_UNSUPPORTED_IN_MODE`: use `leaderlessCluster()` (and `mode()` to tell them apart).
   */
  async cluster(): Promise<RegionalClusterView> {
    await this.refresh(true)
    if (this.leaderless !== null)
      throw unsupported(
        'cluster() describes single-leader clusters; use leaderlessCluster()',
        'leaderless',
      )
    return this.view as RegionalClusterView
  }

  /**
   * A leaderless cluster as the node that answered sees it (members up or down, ring shares,
   * hint backlogs, anti-entropy), refreshed now. Fails with `KV_ERR_UNSUPPORTED_IN_MODE` in
   * another mode.
   */
  async leaderlessCluster(): Promise<LeaderlessClusterView> {
    await this.refresh(true)
    if (this.leaderless === null)
      throw unsupported('leaderlessCluster() needs leaderless mode; use cluster()', this.modeNow())
    return this.leaderless.view
  }

  /**
   * Every reachable member's own view of a leaderless cluster (GET /v1/cluster on each, in
   * member order; members that do not answer within `timeoutMs` are left out). Each node reports
   * only the hints it holds and the anti-entropy exchanges it ran, so a cluster-wide picture
   * needs them all.
   */
  async leaderlessViews(timeoutMs = 2000): Promise<LeaderlessClusterView[]> {
    const first = await this.leaderlessCluster()
    const views = await Promise.all(
      first.members.map(async (m) => {
        if (m.id === first.self) return first
        try {
          const res = await this.connection(m.clientUrl).send('GET', '/v1/cluster', { timeoutMs })
          const view = JSON.parse(res.body.toString('utf8')) as { mode: string }
          return isLeaderlessView(view) ? view : null
        } catch (err) {
          if (err instanceof KvError) return null
          throw err
        }
      }),
    )
    return views.filter((v) => v !== null)
  }

  /** How the cluster replicates, learnt from GET /v1/cluster (cached like the rest of the view). */
  async mode(): Promise<ClusterMode> {
    await this.refresh()
    return this.modeNow()
  }

  /**
   * Leaderless mode: the client URLs the next request for `key` would try, in order (the key's
   * preference list first, members that look down last). Empty in other modes.
   */
  async routeFor(key: string): Promise<string[]> {
    await this.refresh()
    if (this.leaderless === null) return []
    return routeKey(this.leaderless.ring, this.leaderless.view, key, this.unreachableNow())
  }

  /** True when the node at `url` (the first seed by default) answers /ready with 200. */
  async ready(url?: string): Promise<boolean> {
    try {
      await this.connection(url ?? this.url).send('GET', '/ready')
      return true
    } catch (err) {
      if (err instanceof KvError) return false
      throw err
    }
  }

  /** Trades a user's password for a token at the first seed that answers. */
  private async login(user: string, password: string): Promise<LoginResult> {
    let last: unknown
    for (const url of [...new Set([...(this.leaderUrl ? [this.leaderUrl] : []), ...this.seeds])]) {
      try {
        const res = await this.connection(url).send('POST', '/v1/auth/token', {
          anonymous: true,
          body: Buffer.from(JSON.stringify({ user, password }), 'utf8'),
          headers: { 'content-type': 'application/json' },
        })
        return JSON.parse(res.body.toString('utf8')) as TokenResponse
      } catch (err) {
        if (err instanceof KvError && err.code !== 'KV_ERR_UNAVAILABLE') throw err
        last = err
      }
    }
    throw last instanceof Error ? last : new KvError('KV_ERR_UNAVAILABLE', 'no node answered')
  }

  /**
   * Logs in with a user and password and returns the token (for `kv login`, or to hand to
   * another client as `{ token }`).
   */
  async token(
    user: string,
    password: string,
  ): Promise<{ token: string | null; expiresAt: string | null }> {
    return this.login(user, password)
  }

  /** Who this client is to the cluster: its user, roles and permissions. */
  async whoami(): Promise<WhoAmI> {
    return (await this.anyNode('/v1/auth/whoami')) as WhoAmI
  }

  /** The seeds, then the members of the last view (either mode), without repeats. */
  private knownNodes(): string[] {
    const members =
      this.view?.members.map((m) => m.clientUrl) ??
      this.leaderless?.view.members.map((m) => m.clientUrl) ??
      []
    return [...new Set([...this.seeds, ...members])]
  }

  /** GET `path` from the first node that answers: the seeds, then the members last seen. */
  private async anyNode(path: string): Promise<unknown> {
    let last: unknown
    for (const url of this.knownNodes()) {
      try {
        const res = await this.connection(url).send('GET', path)
        return JSON.parse(res.body.toString('utf8')) as unknown
      } catch (err) {
        if (!(err instanceof KvError) || err.code !== 'KV_ERR_UNAVAILABLE') throw err
        last = err
      }
    }
    throw last instanceof Error ? last : new KvError('KV_ERR_UNAVAILABLE', 'no node answered')
  }

  /**
   * An admin call: to the leader in single-leader mode (following its hints), to any node
   * otherwise. Retries the codes in `options.retry` (by default: an unreachable node, a moved
   * leader, a node not ready) within `attempts` and `retryForMs`, and never past
   * `options.deadline`; `options.timeoutMs` overrides the client's timeout for each attempt.
   */
  private async adminWrite(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE',
    path: string,
    body?: unknown,
    options: { retry?: ReadonlySet<string>; timeoutMs?: number; deadline?: number } = {},
  ): Promise<unknown> {
    const send: SendOptions =
      body === undefined
        ? {}
        : {
            body: Buffer.from(JSON.stringify(body), 'utf8'),
            headers: { 'content-type': 'application/json' },
          }
    const retry = options.retry ?? retryable
    const deadline = options.deadline ?? Infinity
    const started = Date.now()
    // Outside single-leader mode any node takes the call: the next known one after a failure.
    let next = 0
    for (let attempt = 1; ; attempt++) {
      const mode = await this.currentMode({})
      const nodes = this.knownNodes()
      const url =
        mode === 'single-leader' ? await this.leader() : (nodes[next % nodes.length] as string)
      try {
        const res = await this.connection(url).send(method, path, {
          ...send,
          ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
        })
        // A call that wrote (a lease's grant or revoke) gives a session token: later reads see it.
        this.remember(res)
        return JSON.parse(res.body.toString('utf8')) as unknown
      } catch (err) {
        if (
          mode !== 'single-leader' &&
          err instanceof KvError &&
          err.code === 'KV_ERR_UNAVAILABLE' &&
          ++next % nodes.length !== 0 &&
          Date.now() < deadline
        )
          continue
        if (
          err instanceof KvError &&
          retry.has(err.code) &&
          this.mayRetry(attempt, started) &&
          Date.now() < deadline
        ) {
          if (err.code === 'KV_ERR_NOT_LEADER' && typeof err.details.leaderUrl === 'string')
            this.leaderUrl = err.details.leaderUrl
          else this.leaderUrl = null
          await this.refresh(true).catch(() => {})
          await this.pause(attempt)
          continue
        }
        throw err
      }
    }
  }

  private adminRead(path: string): Promise<unknown> {
    return this.anyNode(path)
  }

  /** Whether auth is on, and every user and role. Needs the admin role. */
  async authStatus(): Promise<AuthStatus> {
    return (await this.adminRead('/admin/v1/auth')) as AuthStatus
  }

  /** Turns auth on (some user must hold an admin role) or off, for every member. */
  async setAuthEnabled(enabled: boolean): Promise<AuthEnabledResponse> {
    return (await this.adminWrite(
      'POST',
      `/admin/v1/auth/${enabled ? 'enable' : 'disable'}`,
    )) as AuthEnabledResponse
  }

  async addUser(
    name: string,
    options: { password?: string; roles?: string[] } = {},
  ): Promise<UserInfo> {
    return (await this.adminWrite('POST', '/admin/v1/users', { name, ...options })) as UserInfo
  }

  async deleteUser(name: string): Promise<void> {
    await this.adminWrite('DELETE', `/admin/v1/users/${encodeURIComponent(name)}`)
  }

  /** Sets a user's password (an admin, or the user themself); the user's tokens stop working. */
  async setPassword(name: string, password: string): Promise<void> {
    await this.adminWrite('PUT', `/admin/v1/users/${encodeURIComponent(name)}/password`, {
      password,
    })
  }

  async grantRole(user: string, role: string): Promise<UserInfo> {
    return (await this.adminWrite('POST', `/admin/v1/users/${encodeURIComponent(user)}/grant`, {
      role,
    })) as UserInfo
  }

  /** Takes a role from a user; the user's tokens stop working. */
  async revokeRole(user: string, role: string): Promise<UserInfo> {
    return (await this.adminWrite('POST', `/admin/v1/users/${encodeURIComponent(user)}/revoke`, {
      role,
    })) as UserInfo
  }

  /** Every token of the user stops working, on every node, as soon as it applies the change. */
  async revokeTokens(user: string): Promise<void> {
    await this.adminWrite('POST', `/admin/v1/users/${encodeURIComponent(user)}/revoke-tokens`)
  }

  async users(): Promise<UserInfo[]> {
    return ((await this.adminRead('/admin/v1/users')) as UserList).users
  }

  async addRole(
    name: string,
    options: { admin?: boolean; monitor?: boolean; rateLimitPerSecond?: number } = {},
  ): Promise<RoleInfo> {
    return (await this.adminWrite('POST', '/admin/v1/roles', { name, ...options })) as RoleInfo
  }

  async deleteRole(name: string): Promise<void> {
    await this.adminWrite('DELETE', `/admin/v1/roles/${encodeURIComponent(name)}`)
  }

  /**
   * Grants a role `read`, `write` or `readwrite` on keys starting with `prefix` ('' is every
   * key), or the `admin` or `monitor` capability (no prefix).
   */
  async grantPermission(role: string, access: GrantAccess, prefix?: string): Promise<RoleInfo> {
    return (await this.adminWrite('POST', `/admin/v1/roles/${encodeURIComponent(role)}/grant`, {
      access,
      ...(prefix !== undefined ? { prefix } : {}),
    })) as RoleInfo
  }

  async revokePermission(role: string, access: GrantAccess, prefix?: string): Promise<RoleInfo> {
    return (await this.adminWrite('POST', `/admin/v1/roles/${encodeURIComponent(role)}/revoke`, {
      access,
      ...(prefix !== undefined ? { prefix } : {}),
    })) as RoleInfo
  }

  async roles(): Promise<RoleInfo[]> {
    return ((await this.adminRead('/admin/v1/roles')) as RoleList).roles
  }

  // ---------------------------------------------------------------- membership

  /**
   * The cluster's configuration (GET /admin/v1/members): every member with its role (`voter`
   * or `learner`; leaderless: `owner`, `joining`, `leaving`), the ids removed, and whether a
   * change is in flight. Single-leader: asked of the leader, which adds each member's
   * connection and lag (when no leader is known, the first seed answers, without them).
   * Needs the admin role.
   */
  async members(): Promise<Membership> {
    return (await this.adminWrite('GET', '/admin/v1/members')) as Membership
  }

  /**
   * Adds a member (POST /admin/v1/members). Single-leader: it joins as a learner, which
   * receives the log but counts toward no quorum or election: start its node first (kv-node
   * --join, with a certificate from the cluster's CA), let it catch up, then `promoteMember`.
   * Leaderless: the member joins the ring (its ranges stream to it). Adding a learner again
   * with the same URLs answers as the first time, so a retry after a lost answer is safe.
   */
  async addMember(member: NewMember): Promise<MembershipChange> {
    return (await this.adminWrite('POST', '/admin/v1/members', member, {
      retry: membershipRetryable,
    })) as MembershipChange
  }

  /**
   * Single-leader: makes learner `id` a voter (POST /admin/v1/members/:id/promote). Refused
   * with `KV_ERR_LEARNER_BEHIND` (with `lagEntries` and `connected`) while it is not connected
   * or lags more than the cluster's learnerPromoteLagEntriesMax; with `timeoutMs` it asks
   * again until the learner has caught up or the time is up. Promoting a voter is a no-op.
   */
  async promoteMember(id: string, options: CatchUpOptions = {}): Promise<MembershipChange> {
    return this.untilCaughtUp(
      id,
      options,
      async (deadline) =>
        (await this.adminWrite(
          'POST',
          `/admin/v1/members/${encodeURIComponent(id)}/promote`,
          undefined,
          { retry: membershipRetryable, ...(deadline !== undefined ? { deadline } : {}) },
        )) as MembershipChange,
    )
  }

  /**
   * Removes member `id` (DELETE /admin/v1/members/:id). A removed id is never let back in.
   * Refused with `KV_ERR_WOULD_LOSE_QUORUM` when the voters left alive would not be a majority.
   * Single-leader: removing the leader makes it hand leadership over first and name the new
   * leader (`KV_ERR_NOT_LEADER`); the call follows it there, and the new leader removes the
   * old one. Removing a removed member answers as the first time.
   */
  async removeMember(id: string): Promise<MembershipChange> {
    const path = `/admin/v1/members/${encodeURIComponent(id)}`
    return (await this.adminWrite('DELETE', path, undefined, {
      retry: membershipRetryable,
    })) as MembershipChange
  }

  /**
   * Replaces member `oldId` (dead or alive) by a new member with a new id
   * (POST /admin/v1/members/:id/replace). Single-leader: the new member joins as a learner,
   * catches up, is promoted, and only then is the old one removed. The node waits for the
   * catch-up for a while (membershipCatchUpTimeoutMs) and answers `KV_ERR_LEARNER_BEHIND` if it
   * is not done; the call is resumable, so this keeps calling while that comes back, reporting
   * each time to `onProgress`, until `timeoutMs` (default 10 minutes). Start the new member's
   * node (kv-node --join) before or soon after calling.
   */
  async replaceMember(
    oldId: string,
    member: NewMember,
    options: CatchUpOptions = {},
  ): Promise<MembershipChange> {
    return this.untilCaughtUp(
      member.id,
      { ...options, timeoutMs: options.timeoutMs ?? replaceTimeoutMsDefault },
      async (deadline) =>
        (await this.adminWrite(
          'POST',
          `/admin/v1/members/${encodeURIComponent(oldId)}/replace`,
          member,
          // The node answers once the learner caught up, or after its own catch-up timeout.
          deadline === undefined
            ? { retry: membershipRetryable }
            : {
                retry: membershipRetryable,
                deadline,
                timeoutMs: Math.max(this.options.timeoutMs, deadline - Date.now()),
              },
        )) as MembershipChange,
    )
  }

  /**
   * Calls `call` until it does not answer KV_ERR_LEARNER_BEHIND, or `timeoutMs` passed; `call`
   * gets the deadline (none without `timeoutMs`: one call, within the client's usual limits).
   */
  private async untilCaughtUp<T>(
    member: string,
    options: CatchUpOptions,
    call: (deadline: number | undefined) => Promise<T>,
  ): Promise<T> {
    const started = Date.now()
    const deadline = options.timeoutMs === undefined ? undefined : started + options.timeoutMs
    for (;;) {
      try {
        return await call(deadline)
      } catch (err) {
        if (!(err instanceof KvError) || err.code !== 'KV_ERR_LEARNER_BEHIND') throw err
        if (deadline === undefined) throw err
        const left = deadline - Date.now()
        if (left <= 0 || this.closed) throw err
        options.onProgress?.({
          member,
          lagEntries: typeof err.details.lagEntries === 'number' ? err.details.lagEntries : null,
          connected: typeof err.details.connected === 'boolean' ? err.details.connected : null,
          elapsedMs: Date.now() - started,
          message: err.message,
        })
        await new Promise((resolve) => setTimeout(resolve, Math.min(catchUpPollMs, left)))
      }
    }
  }

  // ---------------------------------------------------------------- shards

  /**
   * One group's view of the shard map (GET /v1/shards): the slots it owns (its claims, fenced
   * ones included), its view of the whole map and of the directory of groups, the move out of
   * it in flight, its finished moves and its imports. Asked of `url`, or else of the first seed
   * (or member) that answers. A kv-router answers with its merged map instead
   * (`RouterShardView`; `isRouterShardView` tells them apart). An unsharded node answers
   * `KV_ERR_UNSUPPORTED_IN_MODE`. Any authenticated user may call it.
   */
  async shards(
    options: { url?: string; timeoutMs?: number } = {},
  ): Promise<GroupShardView | RouterShardView> {
    const view =
      options.url === undefined
        ? ((await this.anyNode('/v1/shards')) as GroupShardView | RouterShardView)
        : await this.groupView([options.url], options.timeoutMs)
    this.learnDirectory(view)
    return view
  }

  /**
   * The whole shard map, as the groups themselves say it: asks one member of every group of the
   * directory for its view (GET /v1/shards) and merges their claims (per slot, the claim with
   * the highest version wins: `mergeShardClaims`). The directory is `options.directory` (the
   * shard map file's, say), else the one the first answer names (a group's view, or a
   * kv-router's map). Groups that did not answer are listed in `unreachable`; their slots keep
   * what the other groups (or the directory, or the router) know. When no group answered but a
   * kv-router did (the groups may be out of this client's reach), the map is the router's and
   * `router` names it; with neither, it throws.
   */
  async shardOverview(
    options: { directory?: ShardMap; timeoutMs?: number } = {},
  ): Promise<ShardOverview> {
    const timeoutMs = options.timeoutMs ?? Math.min(this.options.timeoutMs, 5000)
    let fallback = options.directory
    let first: GroupShardView | null = null
    let router: RouterShardView | null = null
    if (fallback === undefined) {
      const answer = await this.shards({ timeoutMs })
      if (isRouterShardView(answer)) {
        router = answer
        fallback = mapOfRouterView(answer)
      } else {
        first = answer
        fallback = answer.map
      }
    }
    const directory = fallback.groups
    this.directory = directory
    const answers = await Promise.all(
      directory.map(async (g) => {
        if (first !== null && first.group === g.id) return { group: g.id, view: first }
        try {
          const view = await this.groupView(groupUrls(directory, g.id), timeoutMs)
          if (isRouterShardView(view) || view.group !== g.id)
            throw new KvError(
              'KV_ERR_INVALID_ARGUMENT',
              `the members of group ${g.id} answered as ${isRouterShardView(view) ? `router ${view.router}` : `group ${view.group}`}`,
            )
          return { group: g.id, view }
        } catch (err) {
          if (!(err instanceof KvError)) throw err
          return { group: g.id, error: err }
        }
      }),
    )
    const views: GroupShardView[] = []
    const unreachable: { group: string; code: string; message: string }[] = []
    for (const a of answers) {
      if (a.view !== undefined) views.push(a.view)
      else unreachable.push({ group: a.group, code: a.error.code, message: a.error.message })
    }
    if (views.length === 0) {
      if (router !== null) return { map: fallback, views, unreachable, router: router.router }
      const last = answers.at(-1)?.error
      throw new KvError(
        last?.code ?? 'KV_ERR_UNAVAILABLE',
        `no group of the shard map answered GET /v1/shards (${unreachable.map((u) => `${u.group}: ${u.message}`).join('; ')})`,
      )
    }
    // A view's `map` may be behind on other groups' slots, but each view's claims are its own.
    const map = mergeShardClaims(
      directory,
      views.map((v) => v.claims),
      fallback,
    )
    return { map, views, unreachable, router: null }
  }

  /**
   * Starts moving slots to group `to` (POST /admin/v1/shards/moves). The call must reach the
   * leader of the group that owns the slots: with `from` (that group's id) it goes to the
   * group's members in the directory; otherwise to the client's URLs. Either way it follows
   * `KV_ERR_NOT_LEADER` hints to the group's leader, and `KV_ERR_WRONG_SHARD` to the group the
   * answering node names as the owner; a kv-router forwards the call itself. Resolves once the
   * source leader took the move (it runs in the background: `waitMove` follows it). Refused
   * with `KV_ERR_SHARD_MOVE_IN_PROGRESS` while another move out of that group (or into the
   * target) runs. Needs the admin role.
   */
  async moveSlots(request: ShardMoveRequest): Promise<ShardMoveStarted> {
    const slots = slotsText(request.slots)
    const wanted = parseSlotRanges(slots)
    const body = { slots, to: request.to }
    const { answer, url, group } = await this.groupAdmin(
      request.from ?? null,
      '/admin/v1/shards/moves',
      body,
    ).catch(async (err: unknown) => {
      // An earlier attempt whose answer was lost may have started the move: then it is ours.
      const lost = err instanceof KvError ? answerLostAt.get(err) : undefined
      if (lost === undefined || (err as KvError).code !== 'KV_ERR_SHARD_MOVE_IN_PROGRESS') throw err
      const refusedBy = (err as KvError).details.url
      const view = await this.groupView([
        ...new Set([...(typeof refusedBy === 'string' ? [refusedBy] : []), lost]),
      ]).catch(() => null)
      const move = view === null || isRouterShardView(view) ? null : view.move
      if (view && !isRouterShardView(view) && move)
        if (move.target === request.to && sameSlots(move.slots, wanted))
          return { answer: { move }, url: lost, group: view.group }
      throw err
    })
    const move = (answer as { move: ShardMove }).move
    return { move, url, group }
  }

  /**
   * Stops the move out of a group (POST /admin/v1/shards/moves/abort): it rolls back, or
   * finishes when the target already took the slots. Sent to the members of `group` in the
   * directory, or to the client's URLs (following the leader's hints), or a kv-router.
   * Resolves with the move as it ended. Needs the admin role.
   */
  async abortMove(options: { group?: string } = {}): Promise<ShardMoveStarted> {
    const { answer, url, group } = await this.groupAdmin(
      options.group ?? null,
      '/admin/v1/shards/moves/abort',
      // The group goes in the body too, for a kv-router to know where to forward the call.
      options.group === undefined ? {} : { group: options.group },
    )
    return { move: (answer as { move: ShardMove }).move, url, group }
  }

  /**
   * Waits for move `id` to finish (phase `done` or `aborted`), asking its source group's
   * members (GET /v1/shards) every `pollMs` (default 500 ms). The source group is `group`, or
   * the group whose view holds the move: the client's URLs first, then every group of the
   * directory. Calls `onProgress` whenever the move changed. Resolves with the finished move
   * (an aborted move is not an error: check `phase`); throws `KV_ERR_SHARD_MOVE_IN_PROGRESS`
   * when it has not finished within `timeoutMs` (default 10 minutes).
   */
  async waitMove(id: string, options: WaitMoveOptions = {}): Promise<ShardMove> {
    const started = Date.now()
    const deadline = started + (options.timeoutMs ?? 600_000)
    const pollMs = options.pollMs ?? 500
    let group = options.group ?? null
    let last: ShardMove | null = null
    let lastKey = ''
    let lastError: KvError | null = null
    for (;;) {
      try {
        const found = await this.findMove(id, group, options.url)
        group = found.view.group
        lastError = null
        last = found.move
        const key = `${last.phase}/${last.updatedAtMs}/${last.error}`
        if (key !== lastKey) {
          lastKey = key
          options.onProgress?.(last, found.view)
        }
        if (isMoveFinished(last)) return last
      } catch (err) {
        if (!(err instanceof KvError)) throw err
        // The move's record may not have reached the member asked yet, or the group is
        // electing: keep asking until the deadline.
        lastError = err
      }
      const left = deadline - Date.now()
      if (left <= 0 || this.closed) {
        if (last === null && lastError !== null) throw lastError
        throw new KvError(
          'KV_ERR_SHARD_MOVE_IN_PROGRESS',
          `move ${id} has not finished after ${Math.round((Date.now() - started) / 1000)} s (phase ${last?.phase ?? 'unknown'})`,
          { moveId: id, phase: last?.phase ?? null, group },
        )
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(pollMs, left)))
    }
  }

  /**
   * Where move `id` is: asked of `group`'s members (when known), else of `url` or the client's
   * URLs, then of every group in the directory.
   */
  private async findMove(
    id: string,
    group: string | null,
    url: string | undefined,
  ): Promise<{ move: ShardMove; view: GroupShardView }> {
    const inView = (view: GroupShardView | RouterShardView) => {
      if (isRouterShardView(view)) return null
      const move = moveInView(view, id)
      return move === null ? null : { move, view }
    }
    if (group !== null && this.directory.some((g) => g.id === group)) {
      const found = inView(await this.groupView(groupUrls(this.directory, group)))
      if (found !== null) return found
    }
    const first = url === undefined ? await this.shards() : await this.shards({ url })
    const here = inView(first)
    if (here !== null) return here
    for (const g of this.directory) {
      if (!isRouterShardView(first) && g.id === first.group) continue
      const view = await this.groupView(groupUrls(this.directory, g.id)).catch(() => null)
      const found = view === null ? null : inView(view)
      if (found !== null) return found
    }
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `no group of the shard map knows of move ${id} (yet)`,
      { moveId: id },
    )
  }

  /** The shard view of the first of `urls` that answers (a node down is passed over). */
  private async groupView(
    urls: string[],
    timeoutMs?: number,
  ): Promise<GroupShardView | RouterShardView> {
    let last: KvError | null = null
    for (const url of urls) {
      try {
        const res = await this.connection(url).send(
          'GET',
          '/v1/shards',
          timeoutMs === undefined ? {} : { timeoutMs },
        )
        const view = JSON.parse(res.body.toString('utf8')) as GroupShardView | RouterShardView
        this.learnDirectory(view)
        return view
      } catch (err) {
        if (!(err instanceof KvError) || !nodeFailures.has(err.code)) throw err
        last = err
      }
    }
    throw last ?? new KvError('KV_ERR_UNAVAILABLE', 'no URL to ask for the shard map')
  }

  /** Keeps the directory of groups a view names, for calls to a group by id. */
  private learnDirectory(view: GroupShardView | RouterShardView): void {
    const groups = isRouterShardView(view) ? view.groups : view.map?.groups
    if (Array.isArray(groups) && groups.length > 0) this.directory = groups
  }

  /**
   * An admin call about shards, sent to the leader of the group that owns what it names:
   * `group`'s members (from the directory, then the client's URLs, which may be a kv-router's),
   * or the client's URLs. Follows `KV_ERR_NOT_LEADER`
   * to the leader it names and `KV_ERR_WRONG_SHARD` to the members of the owner it names;
   * passes over members that cannot be reached, and after a round of them pauses and starts
   * again, within `attempts` and `retryForMs`. An error after an attempt whose answer was lost
   * (`KV_ERR_UNAVAILABLE`: it may have been applied) carries that attempt's URL.
   */
  private async groupAdmin(
    group: string | null,
    path: string,
    body: unknown,
  ): Promise<{ answer: unknown; url: string; group: string | null }> {
    if (group !== null && this.directory.length === 0) await this.shards().catch(() => {})
    let targets =
      group === null
        ? [...new Set([...(this.groupLeaders.get('') ?? []), ...this.seeds])]
        : [
            ...new Set([
              ...(this.groupLeaders.get(group) ?? []),
              ...groupUrls(this.directory, group),
              // Last: the client's own URLs, for a kv-router in front of groups out of reach.
              ...this.seeds,
            ]),
          ]
    let owner = group
    const send: SendOptions = {
      body: Buffer.from(JSON.stringify(body), 'utf8'),
      headers: { 'content-type': 'application/json' },
    }
    const started = Date.now()
    let hops = 0
    let round = 0
    let next = 0
    let ambiguous: string | undefined
    let lastError: KvError | null = null
    for (;;) {
      if (next >= targets.length) {
        if (!this.mayRetry(round + 1, started) || lastError === null)
          throw lastError ?? new KvError('KV_ERR_UNAVAILABLE', 'no URL to send the call to')
        await this.pause(round++, lastError)
        next = 0
      }
      const url = targets[next] as string
      try {
        const res = await this.connection(url).send('POST', path, send)
        this.groupLeaders.set(owner ?? '', [url])
        return { answer: JSON.parse(res.body.toString('utf8')) as unknown, url, group: owner }
      } catch (err) {
        if (!(err instanceof KvError)) throw err
        lastError = err
        const hint = err.details.leaderUrl
        const endpoints = err.details.endpoints as unknown
        if (
          err.code === 'KV_ERR_NOT_LEADER' &&
          typeof hint === 'string' &&
          hint !== url &&
          hops < 8
        ) {
          hops++
          targets = [hint, ...targets.filter((u) => u !== hint)]
          next = 0
          continue
        }
        if (
          err.code === 'KV_ERR_WRONG_SHARD' &&
          Array.isArray(endpoints) &&
          endpoints.length > 0 &&
          endpoints.every((e) => typeof e === 'string') &&
          hops < 8
        ) {
          hops++
          owner = typeof err.details.group === 'string' ? err.details.group : null
          targets = [
            ...new Set([...(this.groupLeaders.get(owner ?? '') ?? []), ...(endpoints as string[])]),
          ]
          next = 0
          continue
        }
        if (err.code === 'KV_ERR_UNAVAILABLE') ambiguous ??= url
        if (retryable.has(err.code)) {
          next++
          continue
        }
        if (ambiguous !== undefined) answerLostAt.set(err, ambiguous)
        throw err
      }
    }
  }

  // ---------------------------------------------------------------- backups

  /**
   * Backs up one member into `options.to` (see `BackupOptions`): the member streams its state
   * at one LSN (POST /admin/v1/backups), and each file is written to a temporary name, fsynced
   * and renamed, its SHA-256 checked against the manifest, which is written last. On any
   * failure nothing is left behind. Needs the admin role. A member that cannot be reached, or
   * is busy with another backup (`KV_ERR_BACKUP_BUSY`), is passed over for the next candidate
   * before anything is written; a stream that fails midway is not retried.
   */
  async backup(options: BackupOptions): Promise<BackupResult> {
    const from = options.from ?? 'follower'
    await checkBackupDir(options.to)
    const candidates = await this.backupCandidates(from)
    let last: KvError | null = null
    for (const candidate of candidates) {
      try {
        const result = await this.backupFrom(
          candidate,
          options.to,
          options.timeoutMs,
          options.maxBytesPerS,
        )
        return { ...result, fallback: candidate.fallback }
      } catch (err) {
        if (
          err instanceof KvError &&
          failedBeforeStream.has(err) &&
          [
            'KV_ERR_UNAVAILABLE',
            'KV_ERR_BACKUP_BUSY',
            'KV_ERR_NOT_READY',
            'KV_ERR_SHUTTING_DOWN',
          ].includes(err.code)
        ) {
          last = err
          continue
        }
        throw err
      }
    }
    throw last ?? new KvError('KV_ERR_UNAVAILABLE', 'no member to back up')
  }

  /**
   * Asks a member started with `--archive-dir` to take a base backup into its log archive
   * (POST /admin/v1/backups with target archive): `member`, else the leader (any node in
   * other modes). Resolves with what the node reports once the backup is complete.
   */
  async backupToArchive(
    options: { member?: string; timeoutMs?: number } = {},
  ): Promise<ArchiveBackupResult> {
    let target: { id: string; url: string }
    if (options.member !== undefined) target = await this.memberById(options.member)
    else if ((await this.mode()) === 'single-leader') {
      const view = await this.cluster()
      const leader = view.members.find((m) => m.id === view.leaderId)
      if (leader === undefined)
        throw new KvError(
          'KV_ERR_UNAVAILABLE',
          'the cluster has no leader now; name a --from member',
        )
      target = { id: leader.id, url: leader.clientUrl }
    } else {
      target = { id: '', url: this.knownNodes()[0] as string }
    }
    const res = await this.connection(target.url).send('POST', '/admin/v1/backups', {
      body: Buffer.from(JSON.stringify({ target: 'archive' }), 'utf8'),
      headers: { 'content-type': 'application/json' },
      timeoutMs: options.timeoutMs ?? 600_000,
    })
    const answer = JSON.parse(res.body.toString('utf8')) as Omit<ArchiveBackupResult, 'member'>
    return { ...answer, member: headerOf(res, 'kv-backup-node') ?? target.id }
  }

  /**
   * Backs up every member, one after another, each into `to/<memberId>` (a leaderless
   * cluster keeps each key on some members only, so a backup of the cluster is one of each).
   * All or nothing: when one member fails, what was written is removed and its error thrown
   * (with `member` in its details).
   */
  async backupAllMembers(options: {
    to: string
    timeoutMs?: number
    /** Pace each member's backup (see `BackupOptions.maxBytesPerS`). */
    maxBytesPerS?: number
  }): Promise<AllMembersBackupResult> {
    const started = Date.now()
    const members =
      (await this.mode()) === 'leaderless'
        ? (await this.leaderlessCluster()).members.map((m) => ({ id: m.id, url: m.clientUrl }))
        : (await this.cluster()).members.map((m) => ({ id: m.id, url: m.clientUrl }))
    const { readdir, mkdir, rm } = await import('node:fs/promises')
    const entries = await readdir(options.to).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[]
      throw err
    })
    if (entries.length > 0)
      throw new KvError('KV_ERR_INVALID_ARGUMENT', `backup directory ${options.to} is not empty`, {
        dir: options.to,
      })
    const made = (await mkdir(options.to, { recursive: true, mode: 0o700 })) !== undefined
    const results: BackupResult[] = []
    try {
      for (const member of members) {
        const result = await this.backupFrom(
          member,
          join(options.to, member.id),
          options.timeoutMs,
          options.maxBytesPerS,
        ).catch((err: unknown) => {
          if (err instanceof KvError) err.details.member = member.id
          throw err
        })
        results.push({ ...result, fallback: null })
      }
    } catch (err) {
      if (made) await rm(options.to, { recursive: true, force: true })
      else for (const r of results) await rm(r.dir, { recursive: true, force: true })
      throw err
    }
    return {
      dir: options.to,
      members: results,
      bytes: results.reduce((sum, r) => sum + r.bytes, 0),
      durationMs: Date.now() - started,
    }
  }

  /** A member of the current view by id (either mode). */
  private async memberById(id: string): Promise<{ id: string; url: string }> {
    const members =
      (await this.mode()) === 'leaderless'
        ? (await this.leaderlessCluster()).members.map((m) => ({ id: m.id, url: m.clientUrl }))
        : (await this.cluster()).members.map((m) => ({ id: m.id, url: m.clientUrl }))
    const member = members.find((m) => m.id === id)
    if (member === undefined)
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `${id} is not a member (members: ${members.map((m) => m.id).join(', ')})`,
      )
    return member
  }

  /** The members to try for a backup `from`, best first, each with why it is a fallback. */
  private async backupCandidates(
    from: string,
  ): Promise<{ id: string; url: string; fallback: string | null }[]> {
    if (from !== 'follower' && from !== 'leader') {
      return [{ ...(await this.memberById(from)), fallback: null }]
    }
    if ((await this.mode()) === 'leaderless')
      throw unsupported(
        `a backup from the ${from} needs single-leader mode: back up every member (backupAllMembers, kv backup create --all-members) or name one`,
        'leaderless',
      )
    const view = await this.cluster()
    const leader = view.members.find((m) => m.id === view.leaderId) ?? null
    const asLeader = (fallback: string | null) =>
      leader === null ? [] : [{ id: leader.id, url: leader.clientUrl, fallback }]
    if (from === 'leader') {
      if (leader === null) throw new KvError('KV_ERR_UNAVAILABLE', 'the cluster has no leader now')
      return asLeader(null)
    }
    // Healthy followers, the most up to date first.
    const followers = view.members
      .filter((m) => m.role === 'follower' && m.connected)
      .sort(
        (a, b) => (b.appliedLsn ?? b.ackedLsn) - (a.appliedLsn ?? a.ackedLsn) || a.lagMs - b.lagMs,
      )
      .map((m) => ({ id: m.id, url: m.clientUrl, fallback: null }))
    const why =
      view.mode === 'standalone'
        ? 'a standalone node has no followers; the backup came from the node itself'
        : followers.length === 0
          ? 'no follower is connected to the leader; the backup came from the leader'
          : 'no follower could be reached; the backup came from the leader'
    return [...followers, ...asLeader(why)]
  }

  /** Streams one member's backup into `dir`. */
  private async backupFrom(
    member: { id: string; url: string },
    dir: string,
    timeoutMs = 60_000,
    maxBytesPerS?: number,
  ): Promise<Omit<BackupResult, 'fallback'>> {
    const started = Date.now()
    let stream
    try {
      const body = { target: 'stream', ...(maxBytesPerS !== undefined ? { maxBytesPerS } : {}) }
      stream = await this.connection(member.url).stream('POST', '/admin/v1/backups', {
        body: Buffer.from(JSON.stringify(body), 'utf8'),
        headers: { 'content-type': 'application/json' },
        timeoutMs,
      })
    } catch (err) {
      // Nothing was written yet: the caller may try another member.
      if (err instanceof KvError) failedBeforeStream.add(err)
      throw err
    }
    const header = (name: string) => {
      const value = stream.headers[name]
      return Array.isArray(value) ? value[0] : value
    }
    const type = header('content-type') ?? ''
    if (!type.startsWith('application/vnd.kvstore.backup')) {
      stream.body.destroy()
      throw new KvError(
        'KV_ERR_INTERNAL',
        `${member.url} answered a backup with ${type || 'no content type'}, not application/vnd.kvstore.backup`,
        { url: member.url },
      )
    }
    let written
    try {
      written = await writeBackupStream(dir, stream.body)
    } catch (err) {
      stream.body.destroy()
      throw err
    }
    const lsn = header('kv-backup-lsn')
    if (lsn !== undefined && Number(lsn) !== written.manifest.lsn) {
      const { rm } = await import('node:fs/promises')
      await rm(dir, { recursive: true, force: true })
      throw new KvError(
        'KV_ERR_BACKUP_CORRUPT',
        `the node said the backup is at LSN ${lsn}, its manifest says ${written.manifest.lsn}`,
        { file: 'manifest.json' },
      )
    }
    return {
      dir,
      manifest: written.manifest,
      member: header('kv-backup-node') ?? written.manifest.nodeId ?? member.id,
      role: header('kv-backup-role') ?? written.manifest.role,
      bytes: written.bytes,
      files: written.files,
      durationMs: Date.now() - started,
    }
  }

  // ---------------------------------------------------------------- regions (multi-leader)

  /**
   * This region as its leader sees it (GET /v1/regions): the regions of the deployment, how the
   * leader ships this region's writes to each other region (state, the receiver's cursor, lag in
   * entries and ms), how far this region applied each other region's writes, and the conflicts
   * counted. Asked of the leader (only it knows the shipping), following failovers within
   * `retryForMs`; of `url` when given (a follower answers with `shipping: []`). A node outside
   * a region answers `KV_ERR_UNSUPPORTED_IN_MODE`. Any authenticated user may call it.
   */
  async regions(options: { url?: string } = {}): Promise<RegionsView> {
    if (options.url !== undefined)
      return (await this.nodeGet('/v1/regions', options.url)) as RegionsView
    return (await this.adminWrite('GET', '/v1/regions')) as RegionsView
  }

  /**
   * One page of this region's conflict record (GET /admin/v1/conflicts), oldest first: each
   * write that lost to a concurrent write of another region, with its winner (key, values,
   * regions, stamps) and the region that detected it. Pass the page's `next` as `after` for the
   * next one. Asked of the leader (or `url`). Needs the admin role.
   */
  async conflicts(options: RegionConflictsOptions = {}): Promise<RegionConflictsPage> {
    const query = new URLSearchParams()
    if (options.limit !== undefined) query.set('limit', String(options.limit))
    if (options.after !== undefined) query.set('after', options.after)
    const qs = query.toString()
    const path = `/admin/v1/conflicts${qs ? `?${qs}` : ''}`
    if (options.url !== undefined)
      return (await this.nodeGet(path, options.url)) as RegionConflictsPage
    return (await this.adminWrite('GET', path)) as RegionConflictsPage
  }

  /** Every record of the conflict record after `after`, page by page (see `conflicts`). */
  async *conflictsAll(
    options: Omit<RegionConflictsOptions, 'after'> & { after?: string } = {},
  ): AsyncGenerator<RegionConflict> {
    let after = options.after
    for (;;) {
      const page = await this.conflicts({ ...options, ...(after !== undefined ? { after } : {}) })
      yield* page.conflicts
      if (page.next === null || page.conflicts.length === 0) return
      after = page.next
    }
  }

  /**
   * A hash of one node's live user keys, values and stamps (GET /admin/v1/regions/digest):
   * equal in every region once they have converged, whatever their LSNs. `url`'s, or else the
   * first seed's (or member's) that answers. Needs the admin role.
   */
  async regionDigest(url?: string): Promise<RegionDigest> {
    return (await this.nodeGet('/admin/v1/regions/digest', url)) as RegionDigest
  }

  // ---------------------------------------------------------------- queued writes (ack=queued)

  /**
   * Queues a put on a member (any member, leader or follower, even while there is no leader):
   * it answers once the write is durable in its outbox, with a ticket; the leader applies it
   * later, in the order that member accepted it. Conditions are checked when it is applied (a
   * condition that no longer holds ends the ticket `failed`). See `waitTicket`.
   */
  putQueued(
    key: string,
    value: string | Uint8Array,
    options: QueuedWriteOptions = {},
  ): Promise<QueuedResult> {
    const body = typeof value === 'string' ? Buffer.from(value, 'utf8') : value
    return this.queuedWrite('PUT', `/v1/kv/${keyPath(key)}`, options, {
      body,
      headers: { 'content-type': 'application/octet-stream', ...conditionHeaders(options) },
    })
  }

  /** Queues a delete (see `putQueued`); a key that does not exist then ends it `failed`. */
  deleteQueued(
    key: string,
    options: Omit<QueuedWriteOptions, 'ifAbsent'> = {},
  ): Promise<QueuedResult> {
    return this.queuedWrite('DELETE', `/v1/kv/${keyPath(key)}`, options, {
      headers: conditionHeaders(options),
    })
  }

  /** Queues a batch, applied atomically by the leader (see `putQueued`). */
  batchQueued(
    ops: BatchOp[],
    options: Omit<QueuedWriteOptions, keyof WriteConditions> = {},
  ): Promise<QueuedResult> {
    return this.queuedWrite('POST', '/v1/batch', options, {
      body: batchBody(ops),
      headers: { 'content-type': 'application/json' },
    })
  }

  /**
   * What became of a queued write: asks the member that holds the ticket (its id names it),
   * found in the cluster view, else any member, which names the holder.
   */
  async ticket(ticket: string): Promise<TicketResult> {
    const node = ticket.slice(0, Math.max(0, ticket.lastIndexOf('.')))
    await this.refresh().catch(() => {})
    let url = this.view?.members.find((m) => m.id === node)?.clientUrl
    const path = `/v1/tickets/${encodeURIComponent(ticket)}`
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const res =
          url === undefined
            ? { body: Buffer.from(JSON.stringify(await this.anyNode(path))) }
            : await this.connection(url).send('GET', path)
        const answer = JSON.parse(res.body.toString('utf8')) as TicketResult
        if (answer.status === 'applied' && answer.session !== undefined && this.options.session) {
          try {
            this.sessionState.add(answer.session)
          } catch {
            // a token we cannot merge is ignored
          }
        }
        return answer
      } catch (err) {
        // Another member holds it: ask that one (once).
        if (
          err instanceof KvError &&
          err.code === 'KV_ERR_TICKET_NOT_FOUND' &&
          typeof err.details.url === 'string' &&
          err.details.url !== url &&
          err.details.node === node
        ) {
          url = err.details.url
          continue
        }
        throw err
      }
    }
    throw new KvError('KV_ERR_TICKET_NOT_FOUND', `no member answered for ticket ${ticket}`)
  }

  /**
   * Polls the ticket until it is `applied` or `failed` (an applied one also joins this
   * client's session, so later reads see the write); after `timeoutMs` (default 30 s) it
   * throws `TicketWaitTimeoutError`. A failed ticket is returned, not thrown: its `error` says why.
   */
  async waitTicket(
    ticket: string,
    options: { timeoutMs?: number; intervalMs?: number } = {},
  ): Promise<TicketResult> {
    const timeoutMs = options.timeoutMs ?? 30_000
    const deadline = Date.now() + timeoutMs
    let intervalMs = Math.max(10, Math.min(options.intervalMs ?? 50, 1000))
    for (;;) {
      let answer: TicketResult | null = null
      try {
        answer = await this.ticket(ticket)
      } catch (err) {
        // The holder may be restarting: its outbox survives, so keep asking until the deadline.
        if (!(err instanceof KvError) || !retryable.has(err.code)) throw err
      }
      if (answer !== null && answer.status !== 'pending') return answer
      const left = deadline - Date.now()
      if (left <= 0) throw new TicketWaitTimeoutError(ticket, timeoutMs)
      await new Promise((resolve) => setTimeout(resolve, Math.min(intervalMs, left)))
      intervalMs = Math.min(intervalMs * 2, options.intervalMs ?? 500)
    }
  }

  private async queuedWrite(
    method: 'PUT' | 'DELETE' | 'POST',
    path: string,
    options: QueuedWriteOptions,
    send: SendOptions,
  ): Promise<QueuedResult> {
    const requestId = options.requestId ?? randomUUID()
    const headers: Record<string, string> = {
      ...send.headers,
      'kv-request-id': requestId,
      'kv-ack': 'queued',
    }
    if (options.url === undefined) await this.refresh().catch(() => {})
    const candidates = options.url !== undefined ? [options.url] : this.knownNodes()
    let lastError: KvError | null = null
    for (const url of candidates) {
      try {
        const res = await this.connection(url).send(method, path, { ...send, headers })
        const answer = JSON.parse(res.body.toString('utf8')) as QueuedResponse
        return { ...answer, url, requestId }
      } catch (err) {
        if (!(err instanceof KvError) || !queuedRetryable.has(err.code)) throw err
        // Offered again elsewhere with the same request id: applied once even if both took it.
        lastError = err
      }
    }
    throw lastError ?? new KvError('KV_ERR_UNAVAILABLE', 'no node to queue the write on')
  }

  /** Closes every connection. Requests in flight finish first. */
  async close(): Promise<void> {
    this.closed = true
    await Promise.all([...this.connections.values()].map((c) => c.close()))
    this.connections.clear()
  }

  // ---------------------------------------------------------------- routing

  private connection(url: string): NodeConnection {
    if (this.closed) throw new KvError('KV_ERR_SHUTTING_DOWN', 'the client is closed')
    let connection = this.connections.get(url)
    if (!connection) {
      connection = new NodeConnection(url, this.options)
      this.connections.set(url, connection)
    }
    return connection
  }

  /** Learns the cluster from any seed or known member; keeps the old view if none answers. */
  private async refresh(force = false): Promise<void> {
    if (
      !force &&
      (this.view !== null || this.leaderless !== null) &&
      Date.now() - this.viewFetchedAt < this.options.refreshIntervalMs
    )
      return
    this.refreshing ??= (async () => {
      const candidates = [
        ...new Set([
          ...(this.leaderUrl ? [this.leaderUrl] : []),
          ...(this.view?.members.map((m) => m.clientUrl) ?? []),
          ...this.leaderlessCandidates(),
          ...this.seeds,
        ]),
      ]
      let lastError: unknown = null
      for (const url of candidates) {
        try {
          const answer = JSON.parse(
            (await this.connection(url).send('GET', '/v1/cluster')).body.toString('utf8'),
          ) as ClusterView | LeaderlessClusterView
          if (isLeaderlessView(answer)) {
            this.useLeaderlessView(answer)
            return
          }
          let view = answer
          this.leaderless = null
          // The leader is the authority on its followers' lag: ask it when another node answered.
          if (typeof view.leaderUrl === 'string' && view.leaderUrl !== url) {
            try {
              const fromLeader = await this.connection(view.leaderUrl).send('GET', '/v1/cluster')
              view = JSON.parse(fromLeader.body.toString('utf8')) as ClusterView
            } catch {
              // keep the follower's view; reads will still fall back to the leader as needed
            }
          }
          this.view = view
          this.viewFetchedAt = Date.now()
          if (view.leaderUrl) this.leaderUrl = view.leaderUrl
          for (const member of view.members) {
            // Skip a follower the leader sees lagging; re-admit it once the leader sees it caught up.
            if (member.role !== 'follower') continue
            if (member.lagMs > this.options.maxLagMs || !member.connected)
              this.lagging.set(member.clientUrl, member.lagMs)
            else this.lagging.delete(member.clientUrl)
          }
          return
        } catch (err) {
          lastError = err
        }
      }
      if (this.view === null && this.leaderless === null) {
        throw lastError instanceof KvError
          ? lastError
          : new KvError('KV_ERR_UNAVAILABLE', `no node answered among ${candidates.join(', ')}`)
      }
    })().finally(() => {
      this.refreshing = null
    })
    await this.refreshing
  }

  private modeNow(): ClusterMode {
    if (this.leaderless !== null) return 'leaderless'
    return (this.view?.mode ?? 'standalone') as ClusterMode
  }

  /**
   * Refreshes the view if it is due and returns the mode, refusing options of another mode:
   * conditions, `ack` and linearizable reads need single-leader; `w`, `r`, `sloppy`, `context`
   * and `repair` need leaderless.
   */
  private async currentMode(options: WriteOptions & ReadOptions): Promise<ClusterMode> {
    await this.refresh()
    const mode = this.modeNow()
    const foreign =
      mode === 'leaderless' ? singleLeaderOptions(options) : leaderlessOptions(options)
    if (foreign.length > 0) {
      throw unsupported(
        `${foreign.join(', ')} ${foreign.length === 1 ? 'needs' : 'need'} ${mode === 'leaderless' ? 'single-leader' : 'leaderless'} mode`,
        mode,
      )
    }
    return mode
  }

  /** Takes a leaderless view, rebuilding the ring only when the members or vnodes changed. */
  private useLeaderlessView(view: LeaderlessClusterView): void {
    const previous = this.leaderless
    const same =
      previous !== null &&
      previous.view.vnodes === view.vnodes &&
      previous.view.members.map((m) => m.id).join(',') === view.members.map((m) => m.id).join(',')
    this.leaderless = { view, ring: same ? previous.ring : ringOf(view) }
    this.view = null
    this.leaderUrl = null
    this.viewFetchedAt = Date.now()
  }

  /** Leaderless members to ask for a view: those the client reached lately first. */
  private leaderlessCandidates(): string[] {
    const urls = this.leaderless?.view.members.map((m) => m.clientUrl) ?? []
    const failed = this.unreachableNow()
    return [...urls.filter((u) => !failed.has(u)), ...urls.filter((u) => failed.has(u))]
  }

  /** URLs the client failed to reach within the last `unreachableForMs`. */
  private unreachableNow(): Set<string> {
    const now = Date.now()
    const out = new Set<string>()
    for (const [url, at] of this.unreachable) {
      if (now - at < unreachableForMs) out.add(url)
      else this.unreachable.delete(url)
    }
    return out
  }

  /**
   * Sends one leaderless request for `key`: to the first node of the key's route, and on a
   * connection failure (or a node shutting down) straight to the next. When every node failed,
   * or a coordinator could not gather its quorum (`KV_ERR_QUORUM_UNAVAILABLE`), it refreshes
   * the view, pauses and starts again, within `attempts` and `retryForMs`. Other errors
   * (`KV_ERR_TOO_MANY_SIBLINGS`, `KV_ERR_INVALID_CONTEXT`, ...) are thrown at once.
   */
  private async leaderlessSend(
    key: string,
    method: 'GET' | 'PUT' | 'DELETE',
    path: string,
    send: SendOptions,
  ): Promise<{ res: NodeResponse; url: string }> {
    let lastError: KvError | null = null
    const started = Date.now()
    for (let attempt = 0; this.mayRetry(attempt, started); attempt++) {
      if (attempt > 0) {
        await this.refresh(true).catch(() => {})
        await this.pause(attempt - 1)
      }
      const state = this.leaderless
      if (state === null) throw unsupported('the cluster left leaderless mode', this.modeNow())
      for (const url of routeKey(state.ring, state.view, key, this.unreachableNow())) {
        try {
          const res = await this.connection(url).send(method, path, send)
          this.unreachable.delete(url)
          return { res, url }
        } catch (err) {
          if (!(err instanceof KvError)) throw err
          lastError = err
          if (nodeFailures.has(err.code)) {
            this.unreachable.set(url, Date.now())
            continue
          }
          if (err.code === 'KV_ERR_QUORUM_UNAVAILABLE') break
          throw err
        }
        if (this.closed) break
      }
    }
    throw lastError ?? new KvError('KV_ERR_UNAVAILABLE', 'no node to send the request to')
  }

  private async leaderlessRead(
    key: string,
    options: LeaderlessReadOptions,
    json: boolean,
  ): Promise<{ res: NodeResponse; url: string }> {
    const query = new URLSearchParams()
    const r = options.r ?? this.options.r
    if (r !== undefined) query.set('r', quorumParam('r', r))
    if (options.repair !== undefined) {
      if (options.repair !== 'background' && options.repair !== 'blocking')
        throw new KvError('KV_ERR_INVALID_ARGUMENT', 'repair must be background or blocking')
      query.set('repair', options.repair)
    }
    if (json) query.set('format', 'json')
    const qs = query.toString()
    return this.leaderlessSend(key, 'GET', `/v1/kv/${keyPath(key)}${qs ? `?${qs}` : ''}`, {
      allowNotFound: true,
    })
  }

  private async leaderlessWrite(
    method: 'PUT' | 'DELETE',
    key: string,
    options: WriteOptions,
    body?: Uint8Array,
  ): Promise<LeaderlessWriteInfo> {
    const query = new URLSearchParams()
    const headersOf: Record<string, string> = {}
    const w = options.w ?? this.options.w
    if (w !== undefined) query.set('w', quorumParam('w', w))
    if (options.sloppy !== undefined) query.set('sloppy', String(options.sloppy))
    // Per-key TTL (HLC expiry; docs/leases.md). Leases and fences are refused by the node.
    if (options.ttlMs !== undefined) query.set('ttlMs', String(options.ttlMs))
    if (options.lease !== undefined) query.set('lease', options.lease)
    Object.assign(headersOf, leaseHeaders(options))
    // One request id for every attempt: a retry that reaches the same coordinator (the first
    // reachable member of the key's preference list, as the first attempt did) is applied once.
    const headers: Record<string, string> = {
      'kv-request-id': options.requestId ?? randomUUID(),
      ...headersOf,
    }
    if (options.context !== undefined) headers['kv-context'] = options.context
    if (body !== undefined) headers['content-type'] = 'application/octet-stream'
    const qs = query.toString()
    const { res } = await this.leaderlessSend(
      key,
      method,
      `/v1/kv/${keyPath(key)}${qs ? `?${qs}` : ''}`,
      { headers, ...(body !== undefined ? { body } : {}) },
    )
    const answer = JSON.parse(res.body.toString('utf8')) as LeaderlessWriteResponse
    // Nodes name a hint `member@standIn` (or just `member`).
    const hinted: string[] = []
    const standIns: Record<string, string> = {}
    for (const entry of answer.hinted ?? []) {
      const [member, standIn] = entry.split('@') as [string, string | undefined]
      hinted.push(member)
      if (standIn !== undefined) standIns[member] = standIn
    }
    return {
      context: answer.context,
      timestamp: answer.timestamp,
      acks: answer.acks,
      w: answer.w,
      coordinator: answer.coordinator,
      hinted,
      standIns,
    }
  }

  private async leader(): Promise<string> {
    await this.refresh()
    return this.leaderUrl ?? this.url
  }

  /** The replica for the next read: a follower in step, else the leader. */
  private async replica(options: ReadOptions): Promise<string> {
    await this.refresh()
    const leader = this.leaderUrl ?? this.url
    if (options.fromLeader || this.options.readFrom === 'leader' || this.view === null)
      return leader
    const candidates = this.view.members
      .filter(
        (m) =>
          (this.options.readFrom === 'any' || m.role === 'follower') &&
          !this.lagging.has(m.clientUrl),
      )
      .map((m) => m.clientUrl)
    if (candidates.length === 0) return leader
    this.nextReplica = (this.nextReplica + 1) % candidates.length
    return candidates[this.nextReplica] as string
  }

  private sessionHeaders(): Record<string, string> {
    const token = this.options.session ? this.sessionState.token : null
    if (token === null) return {}
    // A replica may wait for the session about as long as the lag we accept from it.
    return {
      'kv-session': token,
      'kv-read-wait-ms': String(this.options.maxLagMs),
    }
  }

  private remember(res: NodeResponse): void {
    if (!this.options.session) return
    const token = headerOf(res, 'kv-session')
    if (token === undefined) return
    try {
      // Merged, never replaced: answers to concurrent requests arrive in any order, and a
      // router's token from one of them knows only the group that answered it.
      this.sessionState.add(token)
    } catch {
      // a token we cannot read (or merge) is ignored
    }
  }

  private async read(
    path: string,
    options: ReadOptions,
    send: SendOptions = {},
  ): Promise<{ res: NodeResponse; url: string }> {
    let lastError: KvError | null = null
    const started = Date.now()
    for (let attempt = 0; this.mayRetry(attempt, started); attempt++) {
      const url = attempt === 0 ? await this.replica(options) : await this.leader()
      const toFollower = url !== (this.leaderUrl ?? this.url)
      try {
        const session = this.sessionHeaders()
        const res = await this.connection(url).send('GET', path, {
          ...send,
          headers: { ...send.headers, ...session },
          // A follower that is slow to answer is skipped sooner than the leader gives up: it
          // gets followerReadTimeoutMs beyond the time it may wait for the session.
          ...(toFollower
            ? {
                timeoutMs: Math.min(
                  this.options.followerReadTimeoutMs +
                    (session['kv-session'] === undefined ? 0 : this.options.maxLagMs),
                  this.options.timeoutMs,
                ),
              }
            : {}),
        })
        const lagMs = Number(headerOf(res, 'kv-lag-ms') ?? 0)
        if (headerOf(res, 'kv-role') === 'follower' && lagMs > this.options.maxLagMs)
          this.lagging.set(url, lagMs)
        this.remember(res)
        return { res, url }
      } catch (err) {
        if (!(err instanceof KvError)) throw err
        lastError = err
        // A replica behind the session, or gone: try the leader (after refreshing the view).
        if (err.code === 'KV_ERR_REPLICA_BEHIND') {
          this.lagging.set(url, Number(err.details.appliedLsn ?? 0))
          if (typeof err.details.leaderUrl === 'string') this.leaderUrl = err.details.leaderUrl
          continue
        }
        // A linearizable read of a slot fenced for a move: the leader is fine, wait a moment.
        if (err.code === 'KV_ERR_SLOT_MOVING') {
          await this.pause(attempt, err)
          continue
        }
        if (!retryable.has(err.code)) throw err
        if (toFollower) {
          // Skip this replica until the leader's view shows it healthy; retry on the leader now.
          this.lagging.set(url, Infinity)
          continue
        }
        await this.refresh(true).catch(() => {})
        await this.pause(attempt)
      }
    }
    throw lastError as KvError
  }

  private async write(
    method: 'PUT' | 'DELETE' | 'POST',
    path: string,
    options: WriteOptions,
    send: SendOptions,
  ): Promise<NodeResponse> {
    const requestId = options.requestId ?? randomUUID()
    const ack = options.ack ?? this.options.ack
    const headers: Record<string, string> = {
      ...send.headers,
      'kv-request-id': requestId,
      ...(ack ? { 'kv-ack': ack } : {}),
    }
    let lastError: KvError | null = null
    const started = Date.now()
    for (let attempt = 0; this.mayRetry(attempt, started); attempt++) {
      const url = await this.leader()
      try {
        const res = await this.connection(url).send(method, path, { ...send, headers })
        this.remember(res)
        return res
      } catch (err) {
        if (!(err instanceof KvError)) throw err
        lastError = err
        if (!writeRetryable.has(err.code)) throw err
        // The slot is fenced for a move: this leader is fine, the fence lifts in a moment.
        if (err.code === 'KV_ERR_SLOT_MOVING') {
          await this.pause(attempt, err)
          continue
        }
        // The same request id makes the retry safe: if the first attempt was applied, the
        // leader answers with its result instead of writing again.
        if (
          err.code === 'KV_ERR_NOT_LEADER' &&
          typeof err.details.leaderUrl === 'string' &&
          err.details.leaderUrl !== url &&
          attempt < 2
        ) {
          this.leaderUrl = err.details.leaderUrl
          continue
        }
        // Whoever this node named as leader may be gone; the next view decides.
        if (this.leaderUrl === url) this.leaderUrl = null
        await this.refresh(true).catch(() => {})
        await this.pause(attempt)
      }
    }
    throw lastError as KvError
  }

  /** Another attempt: while under `attempts`, or while within `retryForMs` of the first. */
  private mayRetry(attempt: number, started: number): boolean {
    if (attempt > 0 && this.closed) return false
    return attempt < this.options.attempts || Date.now() - started < this.options.retryForMs
  }

  /**
   * Waits before the next attempt: short (an election takes a second or two, and the client
   * should find the new leader within a heartbeat or so of it winning), with jitter. Never
   * longer than the Retry-After of `err` when it had one (a slot fence lasts a moment, while
   * Retry-After counts whole seconds).
   */
  private pause(attempt: number, err?: KvError): Promise<void> {
    let ms = Math.min(200, 25 * 2 ** attempt) * (0.5 + Math.random() / 2)
    const cap = err === undefined ? undefined : retryAfterMs(err)
    if (cap !== undefined) ms = Math.min(ms, cap)
    return new Promise((resolve) => setTimeout(resolve, ms))
  }
}
