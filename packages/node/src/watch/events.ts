/**
 * Watch events: what one log entry looks like to a watcher of a prefix, in NDJSON (one JSON
 * object a line) or Server-Sent Events (`id:` = the LSN, so `Last-Event-ID` resumes).
 *
 * - put, delete: an entry of one op on a key under the prefix;
 * - batch: an entry of several ops, with the ops under the prefix only (an entry with none is
 *   not shown);
 * - expire: a lease's end (EntryKind.Expiry), its deletes under the prefix;
 * - progress: the watcher's position (`lsn`: every change up to it was sent) and this node's
 *   commit LSN;
 * - error: the last event of a stream that the node ends (too slow, compacted, shutting down),
 *   with the position to watch again from.
 *
 * Reserved keys (U+0000 first) are never shown. An event's JSON is built once per entry and
 * shape (prefix for a batch, values or not, transport) and shared by every watcher.
 */
import { EntryKind, OpType, type LogEntry, type Op } from '@kvstore/protocol'

export type WatchFormat = 'ndjson' | 'sse'

export type WatchEventType = 'put' | 'delete' | 'batch' | 'expire'

/** One op of a batch or expire event. */
export interface WatchOpJson {
  type: 'put' | 'delete'
  key: string
  valueBase64?: string
}

/** A change event as sent (before framing). */
export interface WatchChangeJson {
  type: WatchEventType
  lsn: number
  /** The version the entry gave the keys it wrote: its LSN. */
  version: number
  key?: string
  valueBase64?: string
  ops?: WatchOpJson[]
}

/** A key of the reserved space (auth store, membership, leases): never shown. */
export function isReservedKey(key: Buffer): boolean {
  return key.length > 0 && key[0] === 0
}

function startsWith(key: Buffer, prefix: Buffer): boolean {
  return (
    prefix.length === 0 ||
    (key.length >= prefix.length && key.compare(prefix, 0, prefix.length, 0, prefix.length) === 0)
  )
}

/** Whether the op is visible to a watcher of `prefix`. */
export function opVisible(op: Op, prefix: Buffer): boolean {
  return !isReservedKey(op.key) && startsWith(op.key, prefix)
}

/** The kinds of entries a watcher may see; the others (no-ops, membership) never are. */
function shownKind(kind: EntryKind): boolean {
  return (
    kind === EntryKind.Put ||
    kind === EntryKind.Delete ||
    kind === EntryKind.Batch ||
    kind === EntryKind.Expiry
  )
}

function opJson(op: Op, values: boolean): WatchOpJson {
  if (op.type === OpType.Put) {
    return values
      ? { type: 'put', key: op.key.toString('utf8'), valueBase64: op.value.toString('base64') }
      : { type: 'put', key: op.key.toString('utf8') }
  }
  return { type: 'delete', key: op.key.toString('utf8') }
}

/**
 * The one user-key op of an entry that changed one key: a put or delete, or a batch that is
 * one client write plus reserved ops (a PUT with `?lease=`, `?ttlMs=` or `If-Fence` carries its
 * lease or fence record along), which a watcher sees as that put or delete. Null otherwise.
 */
function singleChange(entry: LogEntry): Op | null {
  const ops = entry.ops
  if (entry.kind === EntryKind.Put || entry.kind === EntryKind.Delete)
    return ops.length === 1 ? (ops[0] as Op) : null
  if (entry.kind !== EntryKind.Batch) return null
  let user: Op | null = null
  let reserved = 0
  for (const op of ops) {
    if (isReservedKey(op.key)) reserved++
    else if (user === null) user = op
    else return null
  }
  return reserved > 0 ? user : null
}

/** The event an entry is for a watcher of `prefix`, or null when it shows it nothing. */
export function changeOf(entry: LogEntry, prefix: Buffer, values: boolean): WatchChangeJson | null {
  if (!shownKind(entry.kind)) return null
  const ops = entry.ops
  const one = singleChange(entry)
  if (one === null) {
    const shown: WatchOpJson[] = []
    for (const op of ops) if (opVisible(op, prefix)) shown.push(opJson(op, values))
    if (shown.length === 0) return null
    return {
      type: entry.kind === EntryKind.Expiry ? 'expire' : 'batch',
      lsn: entry.lsn,
      version: entry.lsn,
      ops: shown,
    }
  }
  if (!opVisible(one, prefix)) return null
  const single = opJson(one, values)
  return { ...single, lsn: entry.lsn, version: entry.lsn }
}

/** Frames one event for the transport. */
export function frame(format: WatchFormat, type: string, id: number | null, body: object): string {
  const json = JSON.stringify(body)
  if (format === 'ndjson') return `${json}\n`
  return `${id === null ? '' : `id: ${id}\n`}event: ${type}\ndata: ${json}\n\n`
}

/**
 * The framed event of `entry` for a watcher of `prefix`, or '' when it shows nothing; cached
 * per entry, so many watchers of one node share one encoding.
 */
export class EventCache {
  private readonly cache = new WeakMap<LogEntry, Map<string, string>>()

  framed(
    entry: LogEntry,
    prefix: Buffer,
    prefixText: string,
    values: boolean,
    format: WatchFormat,
  ): string {
    // A single-op entry frames the same for every prefix that shows it.
    const op = singleChange(entry)
    const single = op !== null
    if (op !== null && !opVisible(op, prefix)) return ''
    const id = `${format}${values ? 'v' : ''}${single ? '' : `|${prefixText}`}`
    let byShape = this.cache.get(entry)
    const hit = byShape?.get(id)
    if (hit !== undefined) return hit
    const change = changeOf(entry, prefix, values)
    const text = change === null ? '' : frame(format, change.type, entry.lsn, change)
    if (byShape === undefined) {
      byShape = new Map()
      this.cache.set(entry, byShape)
    }
    // Batches: one shape per prefix watched; bounded by what a node's watchers watch.
    if (byShape.size < 64) byShape.set(id, text)
    return text
  }
}
