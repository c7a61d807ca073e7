/**
 * Leaderless mode's formats (proto/leaderless.proto): the versioned record a replica stores
 * for a key (on disk and on the wire), hints, and the peer requests and replies. Encoders
 * write a canonical form (vector sorted by actor, siblings by dot), so equal states encode to
 * equal bytes. Decoders validate every field and throw `DecodeError`; they never trust a peer
 * or the disk.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import { DecodeError } from './codec.js'
import { formatVersion, leaderlessLimits } from './limits.js'

const root = protobuf.loadSync(fileURLToPath(new URL('../proto/leaderless.proto', import.meta.url)))
const RecordType = root.lookupType('kv.v1.VersionedRecord')
const HintType = root.lookupType('kv.v1.Hint')
const ContextType = root.lookupType('kv.v1.Context')
const RequestType = root.lookupType('kv.v1.PeerRequest')
const ReplyType = root.lookupType('kv.v1.PeerReply')
const RingType = root.lookupType('kv.v1.Ring')
const AcceptorStateType = root.lookupType('kv.v1.RingAcceptorState')
const HandoffStateType = root.lookupType('kv.v1.HandoffState')

/** The protobufjs reflection root of leaderless.proto, for schema tests. */
export const leaderlessSchemaRoot: protobuf.Root = root

/**
 * Largest dot counter a version vector, a sibling, a context or a peer message may carry
 * (hybrid-clock logical counters are uint32 on the wire, so bounded already). A counter only grows by one per write an actor coordinates, so 2^48 is out of reach
 * (a million writes a second for nine years), while a forged huge counter would dominate every
 * later write of that actor and make acknowledged writes vanish from reads. Like `epochMax`, it
 * also keeps `counter + 1` exact.
 */
export const counterMax = 2 ** 48

export interface HlcStamp {
  wallMs: number
  logical: number
  node: string
}

/** A sibling's payload: the value, or null for a delete (a tombstone), and its timestamp. */
export interface SiblingPayload {
  value: Uint8Array | null
  hlc: HlcStamp
  /** Per-key TTL: the wall time (ms) from which the value reads as absent; absent: never. */
  expiresAtMs?: number
}

export interface VersionedRecord {
  vector: Readonly<Record<string, number>>
  siblings: readonly { dot: { node: string; counter: number }; value: SiblingPayload }[]
}

/** A client's causal context: the vector it saw and the newest timestamp among what it saw. */
export interface CausalContext {
  vector: Record<string, number>
  hlc: HlcStamp | null
}

export interface HintRecord {
  storedAtMs: number
  record: VersionedRecord
}

export interface KeyRecord {
  key: Uint8Array
  record: VersionedRecord
}

/** A key and the 32-bit digest of its state (`stateDigest`). */
export interface KeyDigest {
  key: Uint8Array
  digest: number
}

/** A ring as peers exchange and members store it (the core's RingState, checked there too). */
export interface WireRingMember {
  id: string
  clientUrl: string
  peerUrl: string
  state: 'owner' | 'joining' | 'leaving'
  tokens: string
}

export interface WireRingChange {
  kind: 'join' | 'leave' | 'replace'
  member: string
  replacing: string | null
  phase: 'streaming' | 'switched'
  startedAtMs: number
}

export interface WireRing {
  version: number
  members: readonly WireRingMember[]
  removed: readonly string[]
  change: WireRingChange | null
}

export interface WireBallot {
  round: number
  proposer: string
}

/** An acceptor's answer in the ring agreement (see the core's `AcceptorReply`). */
export type WireAcceptorReply =
  | { kind: 'promise'; accepted: { ballot: WireBallot; ring: WireRing } | null }
  | { kind: 'accepted' }
  | { kind: 'rejected'; promised: WireBallot }
  | { kind: 'stale' }
  | { kind: 'behind' }

/** The progress of a handoff, as its driver reports it. */
export interface HandoffProgressRecord {
  member: string
  startedAtMs: number
  rangesTotal: number
  rangesDone: number
  keys: number
  bytes: number
}

/** An acceptor's durable state ('m' + "ring.acceptor"). */
export interface WireAcceptorState {
  version: number
  promised: WireBallot | null
  accepted: { ballot: WireBallot; ring: WireRing } | null
}

/** A handoff driver's durable progress ('m' + "ring.handoff"). */
export interface HandoffStateRecord {
  member: string
  startedAtMs: number
  cursors: { displaced: string; source: string; after: Uint8Array; done: boolean }[]
  keys: number
  bytes: number
  rangesDone: number
}

export type PeerRequestBody =
  | { kind: 'ping' }
  | { kind: 'store'; key: Uint8Array; record: VersionedRecord; hintFor: string }
  /** versionsOnly: answer with the versions and leave the values out (a digest read). */
  | { kind: 'fetch'; key: Uint8Array; versionsOnly?: boolean }
  | {
      kind: 'coordinate'
      key: Uint8Array
      value: Uint8Array | null
      /** The client's context, or null for a blind write. */
      context: CausalContext | null
      w: number
      sloppy: boolean
      requestId: string
      /** PUT ?ttlMs= (0: none). */
      ttlMs?: number
    }
  | { kind: 'rangeRoots'; sets: string[] }
  | { kind: 'rangeLeaves'; set: string }
  | { kind: 'rangeKeys'; set: string; leaves: number[]; records: KeyRecord[] }
  /** The digest of every key the sender holds in `leaves` (anti-entropy by key digest). */
  | { kind: 'rangeDigests'; set: string; leaves: number[]; digests: KeyDigest[] }
  /** Auth store exchange: records are encoded AuthRecords (decoded and checked by the receiver). */
  | { kind: 'authSync'; digest: string; records: Uint8Array[] }
  | { kind: 'ringFetch' }
  | { kind: 'ringPrepare'; version: number; ballot: WireBallot }
  | { kind: 'ringAccept'; ballot: WireBallot; ring: WireRing }
  | { kind: 'ringCommit'; ring: WireRing }
  | {
      kind: 'handoffPull'
      target: string
      displaced: string
      after: Uint8Array
      bytesMax: number
    }
  | { kind: 'handoffPush'; records: KeyRecord[] }
  | { kind: 'handoffProgress'; progress: HandoffProgressRecord }

export interface PeerRequest {
  clusterId: string
  from: string
  to: string
  /** The sender's ring version (0 or absent: it knows none yet). */
  ringVersion?: number
  body: PeerRequestBody
}

export type PeerReply =
  | { kind: 'refusal'; code: string; message: string }
  | { kind: 'pong'; clockMs: number }
  | { kind: 'storeAck'; changed: boolean }
  /** versionsOnly: every sibling's value was left out (empty); tombstones are still null. */
  | { kind: 'fetchReply'; record: VersionedRecord | null; versionsOnly?: boolean }
  | { kind: 'coordinateReply'; status: number; bodyJson: string }
  | { kind: 'rootsReply'; roots: number[] }
  | { kind: 'leavesReply'; leaves: number[] }
  | { kind: 'keysReply'; records: KeyRecord[] }
  /** The receiver's records that differ, and the keys whose records it wants. */
  | { kind: 'digestsReply'; records: KeyRecord[]; wanted: Uint8Array[] }
  | { kind: 'authState'; digest: string; records: Uint8Array[] }
  /** The replier's committed ring (null: it knows none yet). */
  | { kind: 'ringReply'; ring: WireRing | null }
  | { kind: 'acceptorReply'; reply: WireAcceptorReply }
  | { kind: 'handoffBatch'; records: KeyRecord[]; next: Uint8Array; done: boolean }
  | { kind: 'handoffAck'; merged: number }

// ---- encoding -------------------------------------------------------------------------------

const noValue = new Uint8Array(0)

/** A record's versions without its values (each live value empty), for a versions-only reply. */
export function versionsOnlyRecord(record: VersionedRecord): VersionedRecord {
  return {
    vector: record.vector,
    siblings: record.siblings.map((s) => ({
      dot: s.dot,
      value: {
        value: s.value.value === null ? null : noValue,
        hlc: s.value.hlc,
        ...(s.value.expiresAtMs !== undefined ? { expiresAtMs: s.value.expiresAtMs } : {}),
      },
    })),
  }
}

const byActor = (a: [string, number], b: [string, number]) =>
  a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0

function vectorFields(vector: Readonly<Record<string, number>>) {
  return Object.entries(vector)
    .sort(byActor)
    .map(([actor, counter]) => ({ actor, counter }))
}

function recordFields(record: VersionedRecord) {
  const siblings = [...record.siblings].sort((x, y) =>
    x.dot.node === y.dot.node ? x.dot.counter - y.dot.counter : x.dot.node < y.dot.node ? -1 : 1,
  )
  return {
    format: formatVersion,
    vector: vectorFields(record.vector),
    siblings: siblings.map((s) => ({
      actor: s.dot.node,
      counter: s.dot.counter,
      value: s.value.value ?? new Uint8Array(0),
      tombstone: s.value.value === null,
      wallMs: s.value.hlc.wallMs,
      logical: s.value.hlc.logical,
      clockNode: s.value.hlc.node,
      // Only when set: records without a TTL keep their bytes (and digests).
      ...(s.value.expiresAtMs !== undefined ? { expiresAtMs: s.value.expiresAtMs } : {}),
    })),
  }
}

/** Canonical bytes of a record: equal states, equal bytes. */
export function encodeVersionedRecord(record: VersionedRecord): Uint8Array {
  return RecordType.encode(recordFields(record)).finish()
}

export function encodeHint(hint: HintRecord): Uint8Array {
  return HintType.encode({
    format: formatVersion,
    storedAtMs: hint.storedAtMs,
    record: recordFields(hint.record),
  }).finish()
}

const requestField: Record<PeerRequestBody['kind'], string> = {
  ping: 'ping',
  store: 'store',
  fetch: 'fetch',
  coordinate: 'coordinate',
  rangeRoots: 'rangeRoots',
  rangeLeaves: 'rangeLeaves',
  rangeKeys: 'rangeKeys',
  rangeDigests: 'rangeDigests',
  authSync: 'authSync',
  ringFetch: 'ringFetch',
  ringPrepare: 'ringPrepare',
  ringAccept: 'ringAccept',
  ringCommit: 'ringCommit',
  handoffPull: 'handoffPull',
  handoffPush: 'handoffPush',
  handoffProgress: 'handoffProgress',
}
const replyField: Record<PeerReply['kind'], string> = {
  refusal: 'refusal',
  pong: 'pong',
  storeAck: 'storeAck',
  fetchReply: 'fetchReply',
  coordinateReply: 'coordinateReply',
  rootsReply: 'rootsReply',
  leavesReply: 'leavesReply',
  keysReply: 'keysReply',
  digestsReply: 'digestsReply',
  authState: 'authState',
  ringReply: 'ringReply',
  acceptorReply: 'acceptorReply',
  handoffBatch: 'handoffBatch',
  handoffAck: 'handoffAck',
}

function ringFields(ring: WireRing): Record<string, unknown> {
  return {
    format: formatVersion,
    version: ring.version,
    members: ring.members.map((m) => ({ ...m })),
    removed: ring.removed,
    ...(ring.change === null
      ? {}
      : { change: { ...ring.change, replacing: ring.change.replacing ?? '' } }),
  }
}

const keyRecordFields = (records: KeyRecord[]) =>
  records.map((r) => ({ key: r.key, record: recordFields(r.record) }))

/** The bytes of a ring as members store it. */
export function encodeRing(ring: WireRing): Uint8Array {
  return RingType.encode(ringFields(ring)).finish()
}

export function encodeAcceptorState(state: WireAcceptorState): Uint8Array {
  return AcceptorStateType.encode({
    format: formatVersion,
    version: state.version,
    ...(state.promised === null ? {} : { promised: state.promised }),
    ...(state.accepted === null
      ? {}
      : { acceptedBallot: state.accepted.ballot, acceptedRing: ringFields(state.accepted.ring) }),
  }).finish()
}

export function encodeHandoffState(state: HandoffStateRecord): Uint8Array {
  return HandoffStateType.encode({ format: formatVersion, ...state }).finish()
}

function requestBodyFields(body: PeerRequestBody): Record<string, unknown> {
  switch (body.kind) {
    case 'ping':
      return {}
    case 'store':
      return { key: body.key, record: recordFields(body.record), hintFor: body.hintFor }
    case 'fetch':
      return { key: body.key, versionsOnly: body.versionsOnly === true }
    case 'coordinate':
      return {
        key: body.key,
        tombstone: body.value === null,
        value: body.value ?? new Uint8Array(0),
        context: vectorFields(body.context?.vector ?? {}),
        hasContext: body.context !== null,
        w: body.w,
        sloppy: body.sloppy,
        contextWallMs: body.context?.hlc?.wallMs ?? 0,
        contextLogical: body.context?.hlc?.logical ?? 0,
        contextClockNode: body.context?.hlc?.node ?? '',
        requestId: body.requestId,
        ...(body.ttlMs !== undefined && body.ttlMs > 0 ? { ttlMs: body.ttlMs } : {}),
      }
    case 'rangeRoots':
      return { sets: body.sets }
    case 'rangeLeaves':
      return { set: body.set }
    case 'rangeKeys':
      return {
        set: body.set,
        leaves: body.leaves,
        records: body.records.map((r) => ({ key: r.key, record: recordFields(r.record) })),
      }
    case 'rangeDigests':
      return { set: body.set, leaves: body.leaves, digests: body.digests }
    case 'authSync':
      return { digest: body.digest, records: body.records }
    case 'ringFetch':
      return {}
    case 'ringPrepare':
      return { version: body.version, ballot: body.ballot }
    case 'ringAccept':
      return { ballot: body.ballot, ring: ringFields(body.ring) }
    case 'ringCommit':
      return { ring: ringFields(body.ring) }
    case 'handoffPull':
      return {
        target: body.target,
        displaced: body.displaced,
        after: body.after,
        bytesMax: body.bytesMax,
      }
    case 'handoffPush':
      return { records: keyRecordFields(body.records) }
    case 'handoffProgress':
      return { ...body.progress }
  }
}

export function encodePeerRequest(request: PeerRequest): Uint8Array {
  return RequestType.encode({
    format: formatVersion,
    clusterId: request.clusterId,
    from: request.from,
    to: request.to,
    ringVersion: request.ringVersion ?? 0,
    [requestField[request.body.kind]]: requestBodyFields(request.body),
  }).finish()
}

/** A reply's bytes, carrying the replier's ring version (0: none known). */
export function encodePeerReply(reply: PeerReply, ringVersion = 0): Uint8Array {
  const { kind, ...fields } = reply
  let body: Record<string, unknown> = fields
  if (reply.kind === 'fetchReply') {
    body =
      reply.record === null
        ? { found: false }
        : {
            found: true,
            record: recordFields(reply.record),
            versionsOnly: reply.versionsOnly === true,
          }
  } else if (reply.kind === 'keysReply') {
    body = { records: reply.records.map((r) => ({ key: r.key, record: recordFields(r.record) })) }
  } else if (reply.kind === 'digestsReply') {
    body = {
      records: reply.records.map((r) => ({ key: r.key, record: recordFields(r.record) })),
      wanted: reply.wanted,
    }
  } else if (reply.kind === 'ringReply') {
    body = reply.ring === null ? {} : { ring: ringFields(reply.ring) }
  } else if (reply.kind === 'acceptorReply') {
    const r = reply.reply
    body = {
      kind: r.kind,
      ...(r.kind === 'rejected' ? { promised: r.promised } : {}),
      ...(r.kind === 'promise' && r.accepted !== null
        ? { acceptedBallot: r.accepted.ballot, acceptedRing: ringFields(r.accepted.ring) }
        : {}),
    }
  } else if (reply.kind === 'handoffBatch') {
    body = { records: keyRecordFields(reply.records), next: reply.next, done: reply.done }
  }
  return ReplyType.encode({ format: formatVersion, ringVersion, [replyField[kind]]: body }).finish()
}

// ---- decoding -------------------------------------------------------------------------------

const what = 'leaderless message'
type Obj = Record<string, unknown>

function fail(reason: string): never {
  throw new DecodeError(what, reason)
}

function obj(value: unknown, name: string): Obj {
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    fail(`${name} is missing`)
  return value as Obj
}

function count(value: unknown, name: string, min = 0): number {
  const n = value === undefined ? 0 : value
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < min) fail(`${name} is not a count`)
  return n
}

function text(
  value: unknown,
  name: string,
  bytesMax: number = leaderlessLimits.textBytesMax,
): string {
  const s = value === undefined ? '' : value
  if (typeof s !== 'string') fail(`${name} is not text`)
  if (Buffer.byteLength(s) > bytesMax) fail(`${name} is too long`)
  return s
}

function bytes(value: unknown, name: string): Uint8Array {
  if (value === undefined) return new Uint8Array(0)
  if (value instanceof Uint8Array) return value
  fail(`${name} is not bytes`)
}

function list(value: unknown, name: string, max: number): unknown[] {
  if (value === undefined) return []
  if (!Array.isArray(value)) fail(`${name} is not a list`)
  if (value.length > max) fail(`${name} has ${value.length} items, more than ${max}`)
  return value
}

function actor(value: unknown, name: string): string {
  const s = text(value, name, leaderlessLimits.actorBytesMax)
  if (s === '') fail(`${name} is empty`)
  return s
}

/** A dot counter: an integer in [min, counterMax]. */
function counter(value: unknown, name: string, min = 0): number {
  const n = count(value, name, min)
  if (n > counterMax) fail(`${name} ${n} is above ${counterMax}`)
  return n
}

function decodeVector(value: unknown, name: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const e of list(value, name, leaderlessLimits.vectorEntriesMax)) {
    const entry = obj(e, `${name} entry`)
    const a = actor(entry.actor, `${name} actor`)
    if (Object.hasOwn(out, a)) fail(`${name} repeats actor ${a}`)
    out[a] = counter(entry.counter, `${name} counter`, 1)
  }
  return out
}

function decodeRecordFields(value: unknown): VersionedRecord {
  const r = obj(value, 'record')
  if (r.format !== formatVersion) fail(`record format ${String(r.format)} is not ${formatVersion}`)
  const vector = decodeVector(r.vector, 'vector')
  const seen = new Set<string>()
  const siblings = list(r.siblings, 'siblings', leaderlessLimits.siblingsMax).map((v) => {
    const s = obj(v, 'sibling')
    const node = actor(s.actor, 'sibling actor')
    const dot = counter(s.counter, 'sibling counter', 1)
    const id = `${node}\u0000${dot}`
    if (seen.has(id)) fail(`sibling ${node}:${dot} appears twice`)
    seen.add(id)
    if ((vector[node] ?? 0) < dot) fail(`sibling ${node}:${dot} is not covered by the vector`)
    const tombstone = s.tombstone === true
    const valueBytes = bytes(s.value, 'sibling value')
    if (tombstone && valueBytes.length > 0) fail('a tombstone sibling carries a value')
    const expiresAtMs = s.expiresAtMs === undefined ? 0 : count(s.expiresAtMs, 'sibling expiry')
    return {
      dot: { node, counter: dot },
      value: {
        value: tombstone ? null : valueBytes,
        hlc: {
          wallMs: count(s.wallMs, 'sibling wall clock'),
          logical: count(s.logical, 'sibling logical clock'),
          node: actor(s.clockNode, 'sibling clock node'),
        },
        ...(expiresAtMs > 0 ? { expiresAtMs } : {}),
      },
    }
  })
  return { vector, siblings }
}

const toObjectOptions = { longs: Number, defaults: false, arrays: true } as const

function decodeWith(type: protobuf.Type, data: Uint8Array, name: string): Obj {
  if (data.length > leaderlessLimits.messageBytesMax)
    fail(`${name} of ${data.length} bytes is too large`)
  let message: protobuf.Message
  try {
    message = type.decode(data)
  } catch (err) {
    throw new DecodeError(what, `${name} is not valid protobuf: ${(err as Error).message}`)
  }
  return type.toObject(message, toObjectOptions) as Obj
}

export function decodeVersionedRecord(data: Uint8Array): VersionedRecord {
  return decodeRecordFields(decodeWith(RecordType, data, 'record'))
}

export function decodeHint(data: Uint8Array): HintRecord {
  const h = decodeWith(HintType, data, 'hint')
  if (h.format !== formatVersion) fail(`hint format ${String(h.format)} is not ${formatVersion}`)
  return { storedAtMs: count(h.storedAtMs, 'hint time'), record: decodeRecordFields(h.record) }
}

function decodeKeyRecords(value: unknown): KeyRecord[] {
  return list(value, 'records', leaderlessLimits.recordsPerMessageMax).map((v) => {
    const kr = obj(v, 'key record')
    return { key: bytes(kr.key, 'key'), record: decodeRecordFields(kr.record) }
  })
}

function oneOf<T extends string>(value: unknown, name: string, values: readonly T[]): T {
  const s = text(value, name)
  if (!(values as readonly string[]).includes(s))
    fail(`${name} ${JSON.stringify(s)} is not one of ${values.join(', ')}`)
  return s as T
}

function decodeBallot(value: unknown, name: string): WireBallot {
  const b = obj(value, name)
  return { round: count(b.round, `${name} round`), proposer: actor(b.proposer, `${name} proposer`) }
}

function decodeRingFields(value: unknown): WireRing {
  const r = obj(value, 'ring')
  if (r.format !== formatVersion) fail(`ring format ${String(r.format)} is not ${formatVersion}`)
  const members = list(r.members, 'ring members', leaderlessLimits.ringMembersMax).map((v) => {
    const m = obj(v, 'ring member')
    return {
      id: actor(m.id, 'ring member id'),
      clientUrl: text(m.clientUrl, 'client URL'),
      peerUrl: text(m.peerUrl, 'peer URL'),
      state: oneOf(m.state, 'member state', ['owner', 'joining', 'leaving'] as const),
      tokens: actor(m.tokens, 'member tokens'),
    }
  })
  let change: WireRingChange | null = null
  if (r.change !== undefined && r.change !== null) {
    const c = obj(r.change, 'ring change')
    const replacing = text(c.replacing, 'replaced member', leaderlessLimits.actorBytesMax)
    change = {
      kind: oneOf(c.kind, 'change kind', ['join', 'leave', 'replace'] as const),
      member: actor(c.member, 'change member'),
      replacing: replacing === '' ? null : replacing,
      phase: oneOf(c.phase, 'change phase', ['streaming', 'switched'] as const),
      startedAtMs: count(c.startedAtMs, 'change start'),
    }
  }
  return {
    version: count(r.version, 'ring version', 1),
    members,
    removed: list(r.removed, 'removed ids', leaderlessLimits.ringRemovedMax).map((id) =>
      actor(id, 'removed id'),
    ),
    change,
  }
}

/** A stored ring (throws DecodeError). */
export function decodeRing(data: Uint8Array): WireRing {
  return decodeRingFields(decodeWith(RingType, data, 'ring'))
}

export function decodeAcceptorState(data: Uint8Array): WireAcceptorState {
  const a = decodeWith(AcceptorStateType, data, 'acceptor state')
  if (a.format !== formatVersion)
    fail(`acceptor state format ${String(a.format)} is not ${formatVersion}`)
  return {
    version: count(a.version, 'acceptor version', 1),
    promised: a.promised === undefined ? null : decodeBallot(a.promised, 'promised ballot'),
    accepted:
      a.acceptedRing === undefined
        ? null
        : {
            ballot: decodeBallot(a.acceptedBallot, 'accepted ballot'),
            ring: decodeRingFields(a.acceptedRing),
          },
  }
}

export function decodeHandoffState(data: Uint8Array): HandoffStateRecord {
  const h = decodeWith(HandoffStateType, data, 'handoff state')
  if (h.format !== formatVersion)
    fail(`handoff state format ${String(h.format)} is not ${formatVersion}`)
  return {
    member: actor(h.member, 'handoff member'),
    startedAtMs: count(h.startedAtMs, 'handoff start'),
    cursors: list(h.cursors, 'handoff cursors', leaderlessLimits.ringMembersMax * 4).map((v) => {
      const c = obj(v, 'handoff cursor')
      return {
        displaced: actor(c.displaced, 'displaced member'),
        source: actor(c.source, 'source member'),
        after: bytes(c.after, 'cursor'),
        done: c.done === true,
      }
    }),
    keys: count(h.keys, 'handoff keys'),
    bytes: count(h.bytes, 'handoff bytes'),
    rangesDone: count(h.rangesDone, 'handoff ranges'),
  }
}

const isU32 = (v: unknown): v is number =>
  typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff

function u32(value: unknown, name: string): number {
  const v = value === undefined ? 0 : value
  if (!isU32(v)) fail(`${name} is not a 32-bit number`)
  return v
}

function u32s(value: unknown, name: string, max: number): number[] {
  return list(value, name, max).map((v) => (isU32(v) ? v : fail(`${name} holds a bad number`)))
}

export function decodePeerRequest(data: Uint8Array): PeerRequest {
  const m = decodeWith(RequestType, data, 'request')
  if (m.format !== formatVersion) fail(`request format ${String(m.format)} is not ${formatVersion}`)
  const head = {
    clusterId: text(m.clusterId, 'cluster id'),
    from: actor(m.from, 'sender'),
    to: actor(m.to, 'receiver'),
    ringVersion: count(m.ringVersion, 'ring version'),
  }
  let body: PeerRequestBody
  if (m.ping !== undefined) body = { kind: 'ping' }
  else if (m.store !== undefined) {
    const s = obj(m.store, 'store')
    body = {
      kind: 'store',
      key: bytes(s.key, 'key'),
      record: decodeRecordFields(s.record),
      hintFor: text(s.hintFor, 'hint target', leaderlessLimits.actorBytesMax),
    }
  } else if (m.fetch !== undefined) {
    const f = obj(m.fetch, 'fetch')
    body = { kind: 'fetch', key: bytes(f.key, 'key'), versionsOnly: f.versionsOnly === true }
  } else if (m.coordinate !== undefined) {
    const c = obj(m.coordinate, 'coordinate')
    const tombstone = c.tombstone === true
    body = {
      kind: 'coordinate',
      key: bytes(c.key, 'key'),
      value: tombstone ? null : bytes(c.value, 'value'),
      context:
        c.hasContext === true
          ? {
              vector: decodeVector(c.context, 'context'),
              hlc: optionalHlc(c.contextWallMs, c.contextLogical, c.contextClockNode),
            }
          : null,
      w: count(c.w, 'w'),
      sloppy: c.sloppy === true,
      requestId: text(c.requestId, 'request id'),
      ...(c.ttlMs !== undefined && count(c.ttlMs, 'ttl') > 0 ? { ttlMs: c.ttlMs as number } : {}),
    }
  } else if (m.rangeRoots !== undefined) {
    const r = obj(m.rangeRoots, 'range roots')
    body = {
      kind: 'rangeRoots',
      sets: list(r.sets, 'sets', leaderlessLimits.setsPerMessageMax).map((s) => text(s, 'set')),
    }
  } else if (m.rangeLeaves !== undefined) {
    body = { kind: 'rangeLeaves', set: text(obj(m.rangeLeaves, 'range leaves').set, 'set') }
  } else if (m.rangeKeys !== undefined) {
    const r = obj(m.rangeKeys, 'range keys')
    body = {
      kind: 'rangeKeys',
      set: text(r.set, 'set'),
      leaves: u32s(r.leaves, 'leaves', leaderlessLimits.leavesPerMessageMax),
      records: decodeKeyRecords(r.records),
    }
  } else if (m.rangeDigests !== undefined) {
    const r = obj(m.rangeDigests, 'range digests')
    body = {
      kind: 'rangeDigests',
      set: text(r.set, 'set'),
      leaves: u32s(r.leaves, 'leaves', leaderlessLimits.leavesPerMessageMax),
      digests: list(r.digests, 'digests', leaderlessLimits.digestsPerMessageMax).map((v) => {
        const d = obj(v, 'key digest')
        return { key: bytes(d.key, 'key'), digest: u32(d.digest, 'digest') }
      }),
    }
  } else if (m.authSync !== undefined) {
    const a = obj(m.authSync, 'auth sync')
    body = {
      kind: 'authSync',
      digest: text(a.digest, 'auth digest', leaderlessLimits.authDigestBytesMax),
      records: list(a.records, 'auth records', leaderlessLimits.authRecordsPerMessageMax).map((r) =>
        bytes(r, 'auth record'),
      ),
    }
  } else if (m.ringFetch !== undefined) body = { kind: 'ringFetch' }
  else if (m.ringPrepare !== undefined) {
    const p = obj(m.ringPrepare, 'ring prepare')
    body = {
      kind: 'ringPrepare',
      version: count(p.version, 'prepared version', 1),
      ballot: decodeBallot(p.ballot, 'ballot'),
    }
  } else if (m.ringAccept !== undefined) {
    const a = obj(m.ringAccept, 'ring accept')
    body = {
      kind: 'ringAccept',
      ballot: decodeBallot(a.ballot, 'ballot'),
      ring: decodeRingFields(a.ring),
    }
  } else if (m.ringCommit !== undefined) {
    body = { kind: 'ringCommit', ring: decodeRingFields(obj(m.ringCommit, 'ring commit').ring) }
  } else if (m.handoffPull !== undefined) {
    const h = obj(m.handoffPull, 'handoff pull')
    body = {
      kind: 'handoffPull',
      target: actor(h.target, 'handoff target'),
      displaced: actor(h.displaced, 'displaced member'),
      after: bytes(h.after, 'handoff cursor'),
      bytesMax: u32(h.bytesMax, 'handoff bytes'),
    }
  } else if (m.handoffPush !== undefined) {
    body = { kind: 'handoffPush', records: decodeKeyRecords(obj(m.handoffPush, 'push').records) }
  } else if (m.handoffProgress !== undefined) {
    const p = obj(m.handoffProgress, 'handoff progress')
    body = {
      kind: 'handoffProgress',
      progress: {
        member: actor(p.member, 'handoff member'),
        startedAtMs: count(p.startedAtMs, 'handoff start'),
        rangesTotal: count(p.rangesTotal, 'ranges total'),
        rangesDone: count(p.rangesDone, 'ranges done'),
        keys: count(p.keys, 'handoff keys'),
        bytes: count(p.bytes, 'handoff bytes'),
      },
    }
  } else fail('request has no body')
  return { ...head, body }
}

export function decodePeerReply(data: Uint8Array): PeerReply {
  return decodePeerReplyEnvelope(data).reply
}

/** A reply and the replier's ring version (0: none known). */
export function decodePeerReplyEnvelope(data: Uint8Array): {
  ringVersion: number
  reply: PeerReply
} {
  const m = decodeWith(ReplyType, data, 'reply')
  if (m.format !== formatVersion) fail(`reply format ${String(m.format)} is not ${formatVersion}`)
  return { ringVersion: count(m.ringVersion, 'ring version'), reply: decodeReplyBody(m) }
}

function decodeReplyBody(m: Obj): PeerReply {
  if (m.refusal !== undefined) {
    const r = obj(m.refusal, 'refusal')
    return { kind: 'refusal', code: text(r.code, 'code'), message: text(r.message, 'message') }
  }
  if (m.pong !== undefined)
    return { kind: 'pong', clockMs: count(obj(m.pong, 'pong').clockMs, 'clock') }
  if (m.storeAck !== undefined)
    return { kind: 'storeAck', changed: obj(m.storeAck, 'ack').changed === true }
  if (m.fetchReply !== undefined) {
    const f = obj(m.fetchReply, 'fetch reply')
    if (f.found !== true) return { kind: 'fetchReply', record: null }
    const record = decodeRecordFields(f.record)
    if (f.versionsOnly !== true) return { kind: 'fetchReply', record }
    if (record.siblings.some((s) => s.value.value !== null && s.value.value.length > 0))
      fail('a versions-only reply carries a value')
    return { kind: 'fetchReply', record, versionsOnly: true }
  }
  if (m.coordinateReply !== undefined) {
    const c = obj(m.coordinateReply, 'coordinate reply')
    return {
      kind: 'coordinateReply',
      status: count(c.status, 'status'),
      bodyJson: text(c.bodyJson, 'body', leaderlessLimits.messageBytesMax),
    }
  }
  if (m.rootsReply !== undefined) {
    return {
      kind: 'rootsReply',
      roots: u32s(obj(m.rootsReply, 'roots').roots, 'roots', leaderlessLimits.setsPerMessageMax),
    }
  }
  if (m.leavesReply !== undefined) {
    return {
      kind: 'leavesReply',
      leaves: u32s(
        obj(m.leavesReply, 'leaves').leaves,
        'leaves',
        leaderlessLimits.leavesPerMessageMax,
      ),
    }
  }
  if (m.authState !== undefined) {
    const a = obj(m.authState, 'auth state')
    return {
      kind: 'authState',
      digest: text(a.digest, 'auth digest', leaderlessLimits.authDigestBytesMax),
      records: list(a.records, 'auth records', leaderlessLimits.authRecordsPerMessageMax).map((r) =>
        bytes(r, 'auth record'),
      ),
    }
  }
  if (m.keysReply !== undefined) {
    return { kind: 'keysReply', records: decodeKeyRecords(obj(m.keysReply, 'keys').records) }
  }
  if (m.digestsReply !== undefined) {
    const d = obj(m.digestsReply, 'digests reply')
    return {
      kind: 'digestsReply',
      records: decodeKeyRecords(d.records),
      wanted: list(d.wanted, 'wanted keys', leaderlessLimits.digestsPerMessageMax).map((k) =>
        bytes(k, 'wanted key'),
      ),
    }
  }
  if (m.ringReply !== undefined) {
    const r = obj(m.ringReply, 'ring reply')
    return { kind: 'ringReply', ring: r.ring === undefined ? null : decodeRingFields(r.ring) }
  }
  if (m.acceptorReply !== undefined) {
    const a = obj(m.acceptorReply, 'acceptor reply')
    const kind = oneOf(a.kind, 'acceptor reply', [
      'promise',
      'accepted',
      'rejected',
      'stale',
      'behind',
    ] as const)
    let reply: WireAcceptorReply
    if (kind === 'promise') {
      reply = {
        kind,
        accepted:
          a.acceptedRing === undefined
            ? null
            : {
                ballot: decodeBallot(a.acceptedBallot, 'accepted ballot'),
                ring: decodeRingFields(a.acceptedRing),
              },
      }
    } else if (kind === 'rejected') {
      reply = { kind, promised: decodeBallot(a.promised, 'promised ballot') }
    } else reply = { kind }
    return { kind: 'acceptorReply', reply }
  }
  if (m.handoffBatch !== undefined) {
    const h = obj(m.handoffBatch, 'handoff batch')
    return {
      kind: 'handoffBatch',
      records: decodeKeyRecords(h.records),
      next: bytes(h.next, 'handoff cursor'),
      done: h.done === true,
    }
  }
  if (m.handoffAck !== undefined) {
    return { kind: 'handoffAck', merged: count(obj(m.handoffAck, 'handoff ack').merged, 'merged') }
  }
  fail('reply has no body')
}

// ---- causal context tokens ------------------------------------------------------------------

function optionalHlc(wallMs: unknown, logical: unknown, node: unknown): HlcStamp | null {
  const clockNode = text(node, 'context clock node', leaderlessLimits.actorBytesMax)
  if (clockNode === '') return null
  return {
    wallMs: count(wallMs, 'context wall clock'),
    logical: count(logical, 'context logical clock'),
    node: clockNode,
  }
}

/** The newest timestamp among a state's siblings (null when it has none). */
export function newestStamp(record: VersionedRecord): HlcStamp | null {
  let newest: HlcStamp | null = null
  for (const s of record.siblings) {
    const h = s.value.hlc
    if (
      newest === null ||
      h.wallMs > newest.wallMs ||
      (h.wallMs === newest.wallMs &&
        (h.logical > newest.logical || (h.logical === newest.logical && h.node > newest.node)))
    ) {
      newest = h
    }
  }
  return newest
}

/**
 * The causal context a client carries between a read and a write (`kv-context`): base64url of
 * the canonical Context message (the vector, and the newest timestamp seen).
 */
export function encodeContext(record: VersionedRecord): string {
  const hlc = newestStamp(record)
  return Buffer.from(
    ContextType.encode({
      format: formatVersion,
      vector: vectorFields(record.vector),
      wallMs: hlc?.wallMs ?? 0,
      logical: hlc?.logical ?? 0,
      clockNode: hlc?.node ?? '',
    }).finish(),
  ).toString('base64url')
}

/** Parses a `kv-context` token; throws DecodeError when it is not one. */
export function decodeContext(token: string): CausalContext {
  if (token.length > 256 * 1024 || !/^[A-Za-z0-9_-]*$/.test(token)) fail('context is not base64url')
  const c = decodeWith(ContextType, Buffer.from(token, 'base64url'), 'context')
  if (c.format !== formatVersion) fail(`context format ${String(c.format)} is not ${formatVersion}`)
  return {
    vector: decodeVector(c.vector, 'context'),
    hlc: optionalHlc(c.wallMs, c.logical, c.clockNode),
  }
}
