/**
 * The history of a chaos run: every client operation as an `invoke` event, then exactly one
 * completion for it: `ok` (it took effect, with what it observed), `fail` (it certainly did
 * not take effect) or `info` (the outcome is unknown: a timeout, a dropped connection, a
 * deposed leader; it may or may not have taken effect, at any time after its invoke).
 * Written as JSONL, one event per line, in the order the runner observed them.
 */

/** What an operation does. */
export type OpFunction =
  /** Register: read one key. ok value: the value read (null when the key is absent). */
  | 'read'
  /** Register: write one key. value: the value written. */
  | 'write'
  /** Register: compare-and-set one key. value: [expected, new]; ok means it matched and wrote. */
  | 'cas'
  /** Set: add one unique element (a key written once). value: the element. */
  | 'add'
  /** Set: read every element (after the run, or periodically). ok value: the elements. */
  | 'readAll'
  /**
   * Regions: a queued write (ack=queued). value: the value; ok: accepted (202), with the
   * ticket in `ticket`; fail: certainly not accepted; info: unknown.
   */
  | 'enqueue'
  /**
   * Dirty reads: a value a watch event showed (its key). ok value: the value. Recorded when
   * the event arrives (invoke and ok together).
   */
  | 'watch'
  /** Locks: take the lock (SDK lock()). ok value: the fencing token. */
  | 'acquire'
  /** Locks: a holder that sleeps past its lease's TTL while it believes it holds the lock. */
  | 'pause'

export type EventType = 'invoke' | 'ok' | 'fail' | 'info'

export interface HistoryEvent {
  /** Position in the history, 0 upward. */
  index: number
  type: EventType
  /**
   * The logical client. A client runs one operation at a time; after an `info` completion it
   * retires and its successor takes a new process number (as in Jepsen), because it cannot
   * know whether its last operation is still in flight.
   */
  process: number
  f: OpFunction
  /** The key (register, session workloads); absent for set operations. */
  key?: string
  /**
   * invoke: the argument (write: the value; cas: [expected, new]; add: the element).
   * ok: the result (read: the value or null; readAll: the elements; write/cas/add: as invoked).
   * fail, info: as invoked.
   */
  value: unknown
  /** Milliseconds since the run started (monotonic clock). */
  time: number
  /** The node that served it, when known. */
  node?: string
  /** The key's version (its LSN) that a read saw or a write made, when known. */
  version?: number
  /** The error code of a fail or info. */
  error?: string
  /** Regions: the region the client wrote to. */
  region?: string
  /** Regions: an acknowledged write's stamp and the stamp it replaced (null: none). */
  stamp?: string
  previousStamp?: string | null
  /** Regions: a queued write's ticket. */
  ticket?: string
}

/** An operation: its invoke and its completion paired. */
export interface Operation {
  process: number
  f: OpFunction
  key?: string
  /** The invoke's argument. */
  input: unknown
  /** The completion's value (for ok), else null. */
  output: unknown
  type: 'ok' | 'fail' | 'info'
  invokeTime: number
  /** Completion time; Infinity for an info (it may take effect at any later moment). */
  completeTime: number
  invokeIndex: number
  completeIndex: number
  node?: string
  version?: number
  error?: string
}

/** Pairs every invoke with its completion. An invoke with no completion counts as info. */
export function pairOperations(events: readonly HistoryEvent[]): Operation[] {
  const open = new Map<number, HistoryEvent>()
  const ops: Operation[] = []
  for (const e of events) {
    if (e.type === 'invoke') {
      if (open.has(e.process)) {
        throw new Error(`process ${e.process} invoked event ${e.index} with another still open`)
      }
      open.set(e.process, e)
      continue
    }
    const inv = open.get(e.process)
    if (inv === undefined) {
      throw new Error(`event ${e.index} completes nothing: process ${e.process} has no open op`)
    }
    open.delete(e.process)
    ops.push({
      process: e.process,
      f: inv.f,
      ...(inv.key !== undefined ? { key: inv.key } : {}),
      input: inv.value,
      output: e.type === 'ok' ? e.value : null,
      type: e.type,
      invokeTime: inv.time,
      completeTime: e.type === 'info' ? Infinity : e.time,
      invokeIndex: inv.index,
      completeIndex: e.type === 'info' ? Infinity : e.index,
      ...(e.node !== undefined ? { node: e.node } : {}),
      ...(e.version !== undefined ? { version: e.version } : {}),
      ...(e.error !== undefined ? { error: e.error } : {}),
    })
  }
  for (const inv of open.values()) {
    ops.push({
      process: inv.process,
      f: inv.f,
      ...(inv.key !== undefined ? { key: inv.key } : {}),
      input: inv.value,
      output: null,
      type: 'info',
      invokeTime: inv.time,
      completeTime: Infinity,
      invokeIndex: inv.index,
      completeIndex: Infinity,
      error: 'never completed',
    })
  }
  return ops.sort((a, b) => a.invokeIndex - b.invokeIndex)
}

/** A checker's verdict. `unknown` when it gave up (a search bound), never silently valid. */
export interface Verdict {
  checker: string
  valid: boolean | 'unknown'
  /** One line for the summary. */
  summary: string
  /** Whatever explains the verdict: counterexamples, counts. JSON-serializable. */
  details: Record<string, unknown>
}
