/**
 * Replication frames (proto/replication.proto): typed encoders, validating decoders, and the
 * length-delimited framing used on peer streams.
 *
 * A frame from a peer is validated field by field; anything malformed throws `DecodeError`,
 * and the receiver closes the stream with KV_ERR_BAD_FRAME. Every epoch must be at most
 * `epochMax` and every LSN below `lsnMax` (limits.ts): an out-of-range value is a bad frame,
 * never a new epoch. The entries inside an Append are kept as the leader's exact bytes; the
 * receiver decodes each with `decodeLogEntry` (which applies the same bounds) before it
 * appends them.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import { DecodeError } from './codec.js'
import { epochMax, formatVersion, frameLimits, isEpoch, isLsn, lsnMax } from './limits.js'

const root = protobuf.loadSync(
  fileURLToPath(new URL('../proto/replication.proto', import.meta.url)),
)
const FrameType = root.lookupType('kv.v1.Frame')

/** The protobufjs reflection root of replication.proto, for schema tests. */
export const replicationSchemaRoot: protobuf.Root = root

export interface MemberState {
  id: string
  role: string
  matchLsn: number
  lagEntries: number
  lagMs: number
  lastContactMs: number
  connected: boolean
  /** Applied LSN the member last reported (0 when unknown). */
  appliedLsn: number
  /** Epoch the member last reported (0 when unknown). */
  epoch: number
  /** Set when the member keeps a log archive: the last LSN in it, as it last reported it. */
  archiving?: true
  archivedLsn?: number
}

export type FrameBody =
  | { kind: 'hello'; clusterId: string; to: string; leader: string }
  | {
      kind: 'append'
      prevLsn: number
      prevEpoch: number
      entries: Uint8Array[]
      commitLsn: number
      leaderLastLsn: number
      leaderClockMs: number
    }
  | { kind: 'appendAck'; matchLsn: number; reject: boolean; hintLsn: number; appliedLsn: number }
  | {
      kind: 'heartbeat'
      commitLsn: number
      leaderLastLsn: number
      leaderClockMs: number
      members: MemberState[]
    }
  | {
      kind: 'heartbeatAck'
      matchLsn: number
      appliedLsn: number
      lagMs: number
      /** Set when the follower keeps a log archive: the last LSN in it. */
      archiving?: true
      archivedLsn?: number
    }
  | {
      kind: 'snapshotChunk'
      snapshotLsn: number
      snapshotEpoch: number
      sequence: number
      records: { key: Uint8Array; record: Uint8Array }[]
      last: boolean
      digest: string
      /** Request ids and their encoded RequestRecord. */
      requests: { id: string; record: Uint8Array }[]
    }
  | { kind: 'refusal'; code: string; message: string }
  | { kind: 'vote'; lastLsn: number; lastEpoch: number; preVote: boolean; transfer: boolean }
  | { kind: 'voteAck'; granted: boolean; preVote: boolean }
  | { kind: 'timeoutNow' }

export interface Frame {
  /** Sender node id. */
  from: string
  /** Sender epoch. */
  epoch: number
  body: FrameBody
}

const fieldOf: Record<FrameBody['kind'], string> = {
  hello: 'hello',
  append: 'append',
  appendAck: 'appendAck',
  heartbeat: 'heartbeat',
  heartbeatAck: 'heartbeatAck',
  snapshotChunk: 'snapshotChunk',
  refusal: 'refusal',
  vote: 'vote',
  voteAck: 'voteAck',
  timeoutNow: 'timeoutNow',
}
const kindOf = new Map(
  Object.entries(fieldOf).map(([kind, field]) => [field, kind as FrameBody['kind']]),
)

/** Encodes a frame with its 4-byte big-endian length prefix. */
export function encodeFrame(frame: Frame): Buffer {
  const { kind, ...fields } = frame.body
  const payload = FrameType.encode({
    format: formatVersion,
    from: frame.from,
    epoch: frame.epoch,
    [fieldOf[kind]]: fields,
  }).finish()
  if (payload.length > frameLimits.frameBytesMax) {
    throw new DecodeError(
      'frame',
      `frame of ${payload.length} bytes exceeds ${frameLimits.frameBytesMax}`,
    )
  }
  const out = Buffer.allocUnsafe(4 + payload.length)
  out.writeUInt32BE(payload.length, 0)
  out.set(payload, 4)
  return out
}

const isCount = (v: unknown): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= lsnMax

function bytesOf(value: unknown): Uint8Array | null {
  if (value instanceof Uint8Array) return value
  if (Array.isArray(value) && value.length === 0) return new Uint8Array(0)
  return null
}

function text(value: unknown, what: string, bytesMax: number = frameLimits.textBytesMax): string {
  if (typeof value !== 'string') throw new DecodeError('frame', `${what} is not text`)
  if (Buffer.byteLength(value) > bytesMax) throw new DecodeError('frame', `${what} is too long`)
  return value
}

function flag(value: unknown, what: string): boolean {
  if (typeof value !== 'boolean') throw new DecodeError('frame', `${what} is not a boolean`)
  return value
}

/** A count or a time in milliseconds: any safe integer >= 0. */
function count(value: unknown, what: string): number {
  if (!isCount(value))
    throw new DecodeError('frame', `${what} ${String(value)} is not a valid number`)
  return value
}

/** A log position: below lsnMax, so that the next one is still exact. */
function lsn(value: unknown, what: string): number {
  if (!isLsn(value))
    throw new DecodeError('frame', `${what} ${String(value)} is not a valid lsn (below ${lsnMax})`)
  return value
}

/**
 * An epoch: at most epochMax. With `senderEpoch`, also at most the sender's own epoch (the
 * epoch of an entry in the sender's log, or of its snapshot, never passes the sender's).
 */
function epoch(value: unknown, what: string, senderEpoch?: number): number {
  if (!isEpoch(value))
    throw new DecodeError(
      'frame',
      `${what} ${String(value)} is not a valid epoch (at most ${epochMax})`,
    )
  if (senderEpoch !== undefined && value > senderEpoch)
    throw new DecodeError('frame', `${what} ${value} is above the sender's epoch ${senderEpoch}`)
  return value
}

/** A member's log archive, when the message says it keeps one; nothing otherwise. */
function archiveOf(
  value: Record<string, unknown>,
  what: string,
): { archiving?: true; archivedLsn?: number } {
  if (value.archiving === undefined || value.archiving === null || value.archiving === false)
    return {}
  flag(value.archiving, 'archiving')
  return { archiving: true, archivedLsn: lsn(value.archivedLsn, what) }
}

function requestsOf(value: unknown): { id: string; record: Uint8Array }[] {
  const raw = (value ?? []) as unknown[]
  if (!Array.isArray(raw) || raw.length > frameLimits.snapshotRecordsPerFrameMax) {
    throw new DecodeError('frame', 'snapshot chunk holds too many request ids')
  }
  return raw.map((r) => {
    const request = r as Record<string, unknown>
    const id = text(request.id, 'request id', frameLimits.textBytesMax)
    const record = bytesOf(request.record)
    if (id === '' || record === null)
      throw new DecodeError('frame', 'snapshot request is malformed')
    return { id, record }
  })
}

/** Decodes and validates one frame payload (without its length prefix). */
export function decodeFrame(payload: Uint8Array): Frame {
  let message: protobuf.Message & Record<string, unknown>
  try {
    message = FrameType.decode(payload) as protobuf.Message & Record<string, unknown>
  } catch (err) {
    throw new DecodeError('frame', (err as Error).message, { cause: err })
  }
  if (message.format !== formatVersion) {
    throw new DecodeError('frame', `unknown format ${String(message.format)}`)
  }
  const from = text(message.from, 'sender id', frameLimits.nodeIdBytesMax)
  if (from.length === 0) throw new DecodeError('frame', 'sender id is empty')
  const frameEpoch = epoch(message.epoch, 'epoch')
  const field = message.body
  const kind = typeof field === 'string' ? kindOf.get(field) : undefined
  if (kind === undefined) throw new DecodeError('frame', 'frame has no body')
  const b = message[field as string] as Record<string, unknown>
  let body: FrameBody
  switch (kind) {
    case 'hello':
      body = {
        kind,
        clusterId: text(b.clusterId, 'cluster id'),
        to: text(b.to, 'receiver id', frameLimits.nodeIdBytesMax),
        leader: text(b.leader, 'leader id', frameLimits.nodeIdBytesMax),
      }
      break
    case 'append': {
      const raw = b.entries as unknown[]
      if (!Array.isArray(raw) || raw.length > frameLimits.entriesPerFrameMax) {
        throw new DecodeError('frame', 'append holds too many entries')
      }
      const entries = raw.map((e) => {
        const bytes = bytesOf(e)
        if (bytes === null || bytes.length === 0)
          throw new DecodeError('frame', 'append holds an empty entry')
        return bytes
      })
      body = {
        kind,
        prevLsn: lsn(b.prevLsn, 'prev lsn'),
        prevEpoch: epoch(b.prevEpoch, 'prev epoch', frameEpoch),
        entries,
        commitLsn: lsn(b.commitLsn, 'commit lsn'),
        leaderLastLsn: lsn(b.leaderLastLsn, 'leader last lsn'),
        leaderClockMs: count(b.leaderClockMs, 'leader clock'),
      }
      break
    }
    case 'appendAck':
      if (typeof b.reject !== 'boolean') throw new DecodeError('frame', 'reject is not a boolean')
      body = {
        kind,
        matchLsn: lsn(b.matchLsn, 'match lsn'),
        reject: b.reject,
        hintLsn: lsn(b.hintLsn, 'hint lsn'),
        appliedLsn: lsn(b.appliedLsn, 'applied lsn'),
      }
      break
    case 'heartbeat': {
      const raw = b.members as unknown[]
      if (!Array.isArray(raw) || raw.length > frameLimits.membersPerFrameMax) {
        throw new DecodeError('frame', 'heartbeat holds too many members')
      }
      body = {
        kind,
        commitLsn: lsn(b.commitLsn, 'commit lsn'),
        leaderLastLsn: lsn(b.leaderLastLsn, 'leader last lsn'),
        leaderClockMs: count(b.leaderClockMs, 'leader clock'),
        members: raw.map((m) => {
          const member = m as Record<string, unknown>
          if (typeof member.connected !== 'boolean')
            throw new DecodeError('frame', 'member state is malformed')
          return {
            id: text(member.id, 'member id', frameLimits.nodeIdBytesMax),
            role: text(member.role, 'member role', 32),
            matchLsn: lsn(member.matchLsn, 'member match lsn'),
            lagEntries: count(member.lagEntries, 'member lag'),
            lagMs: count(member.lagMs, 'member lag ms'),
            lastContactMs: count(member.lastContactMs, 'member last contact'),
            connected: member.connected,
            appliedLsn: lsn(member.appliedLsn, 'member applied lsn'),
            epoch: epoch(member.epoch, 'member epoch'),
            ...archiveOf(member, 'member archived lsn'),
          }
        }),
      }
      break
    }
    case 'heartbeatAck':
      body = {
        kind,
        matchLsn: lsn(b.matchLsn, 'match lsn'),
        appliedLsn: lsn(b.appliedLsn, 'applied lsn'),
        lagMs: count(b.lagMs, 'lag ms'),
        ...archiveOf(b, 'archived lsn'),
      }
      break
    case 'snapshotChunk': {
      const raw = b.records as unknown[]
      if (!Array.isArray(raw) || raw.length > frameLimits.snapshotRecordsPerFrameMax) {
        throw new DecodeError('frame', 'snapshot chunk holds too many records')
      }
      if (typeof b.last !== 'boolean') throw new DecodeError('frame', 'last is not a boolean')
      body = {
        kind,
        snapshotLsn: lsn(b.snapshotLsn, 'snapshot lsn'),
        snapshotEpoch: epoch(b.snapshotEpoch, 'snapshot epoch', frameEpoch),
        sequence: count(b.sequence, 'sequence'),
        records: raw.map((r) => {
          const record = r as Record<string, unknown>
          const key = bytesOf(record.key)
          const value = bytesOf(record.record)
          if (key === null || key.length === 0 || value === null) {
            throw new DecodeError('frame', 'snapshot record is malformed')
          }
          return { key, record: value }
        }),
        last: b.last,
        digest: text(b.digest, 'digest', 128),
        requests: requestsOf(b.requests),
      }
      break
    }
    case 'refusal':
      body = {
        kind,
        code: text(b.code, 'refusal code', 64),
        message: text(b.message, 'refusal message'),
      }
      break
    case 'vote':
      body = {
        kind,
        lastLsn: lsn(b.lastLsn, 'last lsn'),
        lastEpoch: epoch(b.lastEpoch, 'last epoch', frameEpoch),
        preVote: flag(b.preVote, 'pre-vote'),
        transfer: flag(b.transfer, 'transfer'),
      }
      break
    case 'voteAck':
      body = { kind, granted: flag(b.granted, 'granted'), preVote: flag(b.preVote, 'pre-vote') }
      break
    case 'timeoutNow':
      body = { kind }
      break
  }
  return { from, epoch: frameEpoch, body }
}

/**
 * Splits a byte stream into frames. Feed it chunks as they arrive; it returns the complete
 * frames and keeps the rest. A length prefix above `frameBytesMax` throws at once, before
 * any of that frame is buffered.
 */
export class FrameDecoder {
  private readonly frameBytesMax: number
  private chunks: Buffer[] = []
  private buffered = 0

  constructor(frameBytesMax: number = frameLimits.frameBytesMax) {
    this.frameBytesMax = frameBytesMax
  }

  /** Bytes held that do not form a whole frame yet. */
  get pendingBytes(): number {
    return this.buffered
  }

  push(chunk: Uint8Array): Frame[] {
    this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length))
    this.buffered += chunk.length
    const frames: Frame[] = []
    for (;;) {
      if (this.buffered < 4) break
      const head = this.peek(4)
      const length = head.readUInt32BE(0)
      if (length > this.frameBytesMax) {
        throw new DecodeError('frame', `frame length ${length} exceeds ${this.frameBytesMax}`)
      }
      if (this.buffered < 4 + length) break
      const whole = this.take(4 + length)
      frames.push(decodeFrame(whole.subarray(4)))
    }
    return frames
  }

  private peek(bytes: number): Buffer {
    const first = this.chunks[0] as Buffer
    if (first.length >= bytes) return first
    const joined = Buffer.concat(this.chunks)
    this.chunks = [joined]
    return joined
  }

  private take(bytes: number): Buffer {
    const joined =
      this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks)
    const out = joined.subarray(0, bytes)
    const rest = joined.subarray(bytes)
    this.chunks = rest.length > 0 ? [rest] : []
    this.buffered = rest.length
    return out
  }
}
