/**
 * Queued writes' formats (proto/outbox.proto): an outbox entry and a ticket as a member keeps
 * them on its own disk, and the forward of entries to the leader. Encoders check a message
 * before it is written; decoders validate every field and throw `DecodeError`, so neither a
 * record read from disk nor a peer's message is trusted.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import { DecodeError, EncodeError, EntryKind, OpType } from './codec.js'
import { isErrorCode, type ErrorCode, type ErrorDetails } from './errors.js'
import { formatVersion, isEpoch, isLsn, limitsCeiling, lsnMax } from './limits.js'

const root = protobuf.loadSync(fileURLToPath(new URL('../proto/outbox.proto', import.meta.url)))
const EntryType = root.lookupType('kv.v1.OutboxEntry')
const TicketType = root.lookupType('kv.v1.TicketRecord')
const ApplyRequestType = root.lookupType('kv.v1.OutboxApplyRequest')
const ApplyReplyType = root.lookupType('kv.v1.OutboxApplyReply')

/** The protobufjs reflection root of outbox.proto, for schema tests. */
export const outboxSchemaRoot: protobuf.Root = root

/** One op of a queued write, with its condition (evaluated by the leader when applied). */
export interface QueuedOp {
  type: 'put' | 'delete'
  key: Buffer
  /** Required for puts. */
  value?: Buffer
  ifVersion?: number
  ifAbsent?: boolean
  ifExists?: boolean
}

export interface OutboxEntry {
  seq: number
  kind: 'put' | 'delete' | 'batch'
  ops: QueuedOp[]
  requestId: string
  /** Empty with auth off. */
  user: string
  acceptedAtMs: number
}

export type TicketStatus = 'pending' | 'applied' | 'failed'

/** A coded error as a ticket or an outcome carries it. */
export interface TicketError {
  code: ErrorCode
  message: string
  details: ErrorDetails
}

export interface TicketRecord {
  seq: number
  status: TicketStatus
  acceptedAtMs: number
  /** 0 while pending. */
  finishedAtMs: number
  lsn: number
  epoch: number
  user: string
  requestId: string
  error: TicketError | null
}

/** One entry's outcome at the leader: `retry` is no decision (send it again later). */
export type OutboxOutcome =
  | { seq: number; status: 'applied'; lsn: number; epoch: number }
  | { seq: number; status: 'failed'; error: TicketError }
  | { seq: number; status: 'retry'; error: TicketError }

const kinds = { put: EntryKind.Put, delete: EntryKind.Delete, batch: EntryKind.Batch } as const
const statusNumbers = { pending: 1, applied: 2, failed: 3, retry: 4 } as const
const emptyBuffer = Buffer.alloc(0)

function asBuffer(value: unknown): Buffer | null {
  if (value === undefined || value === null) return emptyBuffer
  if (Array.isArray(value) && value.length === 0) return emptyBuffer
  if (Buffer.isBuffer(value)) return value
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.length)
  return null
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 && value <= lsnMax
}

function decodeWith(type: protobuf.Type, bytes: Uint8Array, what: string): Record<string, unknown> {
  let message: protobuf.Message
  try {
    message = type.decode(bytes)
  } catch (err) {
    throw new DecodeError(what, (err as Error).message, { cause: err })
  }
  const decoded = message as unknown as Record<string, unknown>
  if (decoded.format !== formatVersion) {
    throw new DecodeError(what, `unknown format ${String(decoded.format)}`)
  }
  return decoded
}

function encodeWith(type: protobuf.Type, body: Record<string, unknown>): Uint8Array {
  return type.encode({ format: formatVersion, ...body }).finish()
}

// ---------------------------------------------------------------- entries

function opToWire(op: QueuedOp): Record<string, unknown> {
  return {
    type: op.type === 'put' ? OpType.Put : OpType.Delete,
    key: op.key,
    value: op.value ?? emptyBuffer,
    ifVersion: op.ifVersion ?? 0,
    ifAbsent: op.ifAbsent === true,
    ifExists: op.ifExists === true,
  }
}

function opFromWire(raw: Record<string, unknown>, what: string): QueuedOp {
  const fail = (reason: string): never => {
    throw new DecodeError(what, reason)
  }
  if (raw.type !== OpType.Put && raw.type !== OpType.Delete) fail(`op type ${String(raw.type)}`)
  const key = asBuffer(raw.key)
  if (key === null || key.length === 0 || key.length > limitsCeiling.keyBytesMax)
    fail('op key is empty or too long')
  const value = asBuffer(raw.value)
  if (value === null || value.length > limitsCeiling.valueBytesMax) fail('op value is too long')
  if (raw.type === OpType.Delete && (value as Buffer).length !== 0) fail('a delete has a value')
  if (!isLsn(raw.ifVersion)) fail('ifVersion is out of range')
  const conditions = [raw.ifVersion !== 0, raw.ifAbsent === true, raw.ifExists === true]
  if (conditions.filter(Boolean).length > 1) fail('an op has more than one condition')
  const op: QueuedOp = { type: raw.type === OpType.Put ? 'put' : 'delete', key: key as Buffer }
  if (op.type === 'put') op.value = value as Buffer
  if (raw.ifVersion !== 0) op.ifVersion = raw.ifVersion as number
  if (raw.ifAbsent === true) op.ifAbsent = true
  if (raw.ifExists === true) op.ifExists = true
  return op
}

function entryToWire(entry: OutboxEntry): Record<string, unknown> {
  const problem = entryProblem(entry)
  if (problem !== null) throw new EncodeError('outbox entry', problem)
  return {
    seq: entry.seq,
    kind: kinds[entry.kind],
    ops: entry.ops.map(opToWire),
    requestId: entry.requestId,
    user: entry.user,
    acceptedAtMs: entry.acceptedAtMs,
  }
}

function entryProblem(entry: OutboxEntry): string | null {
  if (!isCount(entry.seq) || entry.seq < 1) return `seq ${entry.seq}`
  if (entry.ops.length < 1 || entry.ops.length > limitsCeiling.batchOpsMax)
    return `${entry.ops.length} ops`
  if (entry.kind !== 'batch' && entry.ops.length !== 1) return `a ${entry.kind} holds one op`
  if (entry.kind === 'put' && entry.ops[0]?.type !== 'put') return 'a put holds a put op'
  if (entry.kind === 'delete' && entry.ops[0]?.type !== 'delete') return 'a delete holds a delete'
  // Empty only on the wire, from a member with the unsafe apply-twice switch on.
  if (entry.requestId.length > limitsCeiling.requestIdBytesMax) return 'request id is too long'
  if (entry.user.length > 1024) return 'user name is too long'
  if (!isCount(entry.acceptedAtMs)) return 'acceptedAtMs is out of range'
  return null
}

function entryFromWire(raw: Record<string, unknown>, what: string): OutboxEntry {
  const kind =
    raw.kind === EntryKind.Put
      ? 'put'
      : raw.kind === EntryKind.Delete
        ? 'delete'
        : raw.kind === EntryKind.Batch
          ? 'batch'
          : null
  if (kind === null) throw new DecodeError(what, `kind ${String(raw.kind)}`)
  if (!Array.isArray(raw.ops)) throw new DecodeError(what, 'ops is not a list')
  if (typeof raw.requestId !== 'string' || typeof raw.user !== 'string')
    throw new DecodeError(what, 'requestId and user must be strings')
  const entry: OutboxEntry = {
    seq: raw.seq as number,
    kind,
    ops: (raw.ops as Record<string, unknown>[]).map((op) => opFromWire(op, what)),
    requestId: raw.requestId,
    user: raw.user,
    acceptedAtMs: raw.acceptedAtMs as number,
  }
  const problem = entryProblem(entry)
  if (problem !== null) throw new DecodeError(what, problem)
  return entry
}

export function encodeOutboxEntry(entry: OutboxEntry): Uint8Array {
  return encodeWith(EntryType, entryToWire(entry))
}

export function decodeOutboxEntry(bytes: Uint8Array): OutboxEntry {
  return entryFromWire(decodeWith(EntryType, bytes, 'outbox entry'), 'outbox entry')
}

// ---------------------------------------------------------------- tickets and outcomes

function errorToWire(error: TicketError | null): Record<string, unknown> {
  if (error === null) return { errorCode: '', errorMessage: '', errorDetails: '' }
  return {
    errorCode: error.code,
    errorMessage: error.message,
    errorDetails: JSON.stringify(error.details),
  }
}

function errorFromWire(raw: Record<string, unknown>, what: string): TicketError | null {
  if (raw.errorCode === '') return null
  if (!isErrorCode(raw.errorCode)) throw new DecodeError(what, `unknown error code`)
  if (typeof raw.errorMessage !== 'string' || typeof raw.errorDetails !== 'string')
    throw new DecodeError(what, 'error message and details must be strings')
  let details: unknown
  try {
    details = raw.errorDetails === '' ? {} : JSON.parse(raw.errorDetails)
  } catch {
    throw new DecodeError(what, 'error details are not JSON')
  }
  if (typeof details !== 'object' || details === null || Array.isArray(details))
    throw new DecodeError(what, 'error details are not an object')
  return { code: raw.errorCode, message: raw.errorMessage, details: details as ErrorDetails }
}

export function encodeTicket(ticket: TicketRecord): Uint8Array {
  if (!isCount(ticket.seq) || ticket.seq < 1) throw new EncodeError('ticket', `seq ${ticket.seq}`)
  if ((ticket.status === 'failed') !== (ticket.error !== null))
    throw new EncodeError('ticket', 'a failed ticket, and only it, has an error')
  return encodeWith(TicketType, {
    seq: ticket.seq,
    status: statusNumbers[ticket.status],
    acceptedAtMs: ticket.acceptedAtMs,
    finishedAtMs: ticket.finishedAtMs,
    lsn: ticket.lsn,
    epoch: ticket.epoch,
    user: ticket.user,
    requestId: ticket.requestId,
    ...errorToWire(ticket.error),
  })
}

export function decodeTicket(bytes: Uint8Array): TicketRecord {
  const what = 'ticket'
  const raw = decodeWith(TicketType, bytes, what)
  const status =
    raw.status === 1 ? 'pending' : raw.status === 2 ? 'applied' : raw.status === 3 ? 'failed' : null
  if (status === null) throw new DecodeError(what, `status ${String(raw.status)}`)
  for (const field of ['seq', 'acceptedAtMs', 'finishedAtMs', 'lsn'] as const)
    if (!isCount(raw[field])) throw new DecodeError(what, `${field} is out of range`)
  if (!isEpoch(raw.epoch)) throw new DecodeError(what, 'epoch is out of range')
  if (typeof raw.user !== 'string' || typeof raw.requestId !== 'string')
    throw new DecodeError(what, 'user and requestId must be strings')
  const error = errorFromWire(raw, what)
  if ((status === 'failed') !== (error !== null))
    throw new DecodeError(what, 'a failed ticket, and only it, has an error')
  if (status === 'applied' && (raw.lsn as number) < 1)
    throw new DecodeError(what, 'an applied ticket has an LSN')
  return {
    seq: raw.seq as number,
    status,
    acceptedAtMs: raw.acceptedAtMs as number,
    finishedAtMs: raw.finishedAtMs as number,
    lsn: raw.lsn as number,
    epoch: raw.epoch as number,
    user: raw.user,
    requestId: raw.requestId,
    error,
  }
}

export function encodeOutboxApplyRequest(
  from: string,
  entries: readonly OutboxEntry[],
): Uint8Array {
  return encodeWith(ApplyRequestType, { from, entries: entries.map(entryToWire) })
}

export function decodeOutboxApplyRequest(bytes: Uint8Array): {
  from: string
  entries: OutboxEntry[]
} {
  const what = 'outbox apply request'
  const raw = decodeWith(ApplyRequestType, bytes, what)
  if (typeof raw.from !== 'string' || raw.from.length === 0 || raw.from.length > 256)
    throw new DecodeError(what, 'from must name a member')
  if (!Array.isArray(raw.entries) || raw.entries.length === 0)
    throw new DecodeError(what, 'no entries')
  const entries = (raw.entries as Record<string, unknown>[]).map((e) => entryFromWire(e, what))
  for (let i = 1; i < entries.length; i++) {
    // Duplicates in a row are allowed: the unsafe apply-twice switch sends each entry twice.
    if ((entries[i] as OutboxEntry).seq < (entries[i - 1] as OutboxEntry).seq)
      throw new DecodeError(what, 'entries are not in acceptance order')
  }
  return { from: raw.from, entries }
}

export function encodeOutboxApplyReply(outcomes: readonly OutboxOutcome[]): Uint8Array {
  return encodeWith(ApplyReplyType, {
    outcomes: outcomes.map((o) => ({
      seq: o.seq,
      status: statusNumbers[o.status],
      lsn: o.status === 'applied' ? o.lsn : 0,
      epoch: o.status === 'applied' ? o.epoch : 0,
      ...errorToWire(o.status === 'applied' ? null : o.error),
    })),
  })
}

export function decodeOutboxApplyReply(bytes: Uint8Array): OutboxOutcome[] {
  const what = 'outbox apply reply'
  const raw = decodeWith(ApplyReplyType, bytes, what)
  if (!Array.isArray(raw.outcomes)) throw new DecodeError(what, 'outcomes is not a list')
  return (raw.outcomes as Record<string, unknown>[]).map((o): OutboxOutcome => {
    if (!isCount(o.seq) || !isCount(o.lsn) || !isEpoch(o.epoch))
      throw new DecodeError(what, 'seq, lsn or epoch is out of range')
    const seq = o.seq
    if (o.status === 2) {
      if (o.lsn < 1) throw new DecodeError(what, 'an applied outcome has an LSN')
      return { seq, status: 'applied', lsn: o.lsn, epoch: o.epoch }
    }
    const error = errorFromWire(o, what)
    if (error === null) throw new DecodeError(what, 'a failed or retry outcome has an error')
    if (o.status === 3) return { seq, status: 'failed', error }
    if (o.status === 4) return { seq, status: 'retry', error }
    throw new DecodeError(what, `status ${String(o.status)}`)
  })
}
