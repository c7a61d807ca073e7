/**
 * The watch checker: each watcher's events must equal the committed history filtered by its
 * prefix, gap-free and in LSN order, across failovers and reconnects to other members.
 *
 * - The committed history is the log as a healed, converged cluster has it (a full watch from
 *   the start position on the leader, after the run, with every entry committed). It is
 *   checked against the workload's acknowledged writes: each must be in it at the LSN it was
 *   acknowledged with, with its key and value, so the reference itself is not taken on trust.
 * - A watcher's expected events are the history's events after its start position whose ops
 *   touch its prefix (a batch shows only those ops), up to the position it reached. Any
 *   missing LSN (a gap), extra LSN (an uncommitted or rolled-back write, or one outside the
 *   prefix), repeat, reordering or different content is a violation.
 * - A watcher that did not reach the final commit LSN after healing is a liveness failure.
 *
 * `watchObservations` turns watch events into the observations of the dirty-read checker
 * (`{ key, value, source: 'watch' }`), so watch events can be checked there too.
 */
import type { Verdict } from '../history.js'

export interface WatchOpRecord {
  type: 'put' | 'delete'
  key: string
  /** Base64 of a put's value. */
  value?: string
}

/** One change event as a watcher received it (or as the reference history holds it). */
export interface WatchEventRecord {
  lsn: number
  type: 'put' | 'delete' | 'batch' | 'expire'
  ops: WatchOpRecord[]
}

export interface WatcherRecord {
  id: string
  prefix: string
  /** The position it started from: it must see the changes after it. */
  fromLsn: number
  /** The position it reached (its last change or progress event). */
  position: number
  events: WatchEventRecord[]
  /** Members it watched on, in order (for the report). */
  nodes: string[]
  reconnects: number
}

export interface AckedWrite {
  key: string
  /** Base64 of the value, or null for a delete. */
  value: string | null
  lsn: number
}

export interface WatchCheckInput {
  watchers: WatcherRecord[]
  /** Every committed change after `fromLsn`, unfiltered, in LSN order. */
  history: WatchEventRecord[]
  historyFromLsn: number
  /** The final commit LSN the history reaches. */
  commitLsn: number
  acked: AckedWrite[]
}

/** What a watcher of `prefix` sees of an event, or null. */
export function filterEvent(event: WatchEventRecord, prefix: string): WatchEventRecord | null {
  const ops = event.ops.filter((op) => op.key.startsWith(prefix) && !op.key.startsWith('\u0000'))
  if (ops.length === 0) return null
  return { ...event, ops }
}

const same = (a: WatchEventRecord, b: WatchEventRecord) =>
  a.lsn === b.lsn && a.type === b.type && JSON.stringify(a.ops) === JSON.stringify(b.ops)

export function checkWatch(input: WatchCheckInput): Verdict {
  const problems: string[] = []
  // The reference: in order, and holding every acknowledged write.
  const byLsn = new Map<number, WatchEventRecord>()
  let last = input.historyFromLsn
  for (const event of input.history) {
    if (event.lsn <= last) problems.push(`the history repeats or reorders lsn ${event.lsn}`)
    last = event.lsn
    byLsn.set(event.lsn, event)
  }
  let ackedMissing = 0
  for (const write of input.acked) {
    if (write.lsn <= input.historyFromLsn) continue
    const event = byLsn.get(write.lsn)
    const op = event?.ops.find((o) => o.key === write.key)
    const ok =
      op !== undefined &&
      (write.value === null ? op.type === 'delete' : op.type === 'put' && op.value === write.value)
    if (!ok) {
      ackedMissing++
      if (ackedMissing <= 10)
        problems.push(
          `acknowledged write of ${write.key} at lsn ${write.lsn} is not in the committed history`,
        )
    }
  }
  const perWatcher: Record<string, unknown>[] = []
  let violations = 0
  for (const w of input.watchers) {
    const expected = input.history
      .filter((e) => e.lsn > w.fromLsn && e.lsn <= w.position)
      .map((e) => filterEvent(e, w.prefix))
      .filter((e): e is WatchEventRecord => e !== null)
    const got = w.events
    const gotLsns = new Set<number>()
    const duplicates: number[] = []
    const outOfOrder: number[] = []
    let prev = w.fromLsn
    for (const e of got) {
      if (gotLsns.has(e.lsn)) duplicates.push(e.lsn)
      gotLsns.add(e.lsn)
      if (e.lsn <= prev) outOfOrder.push(e.lsn)
      prev = Math.max(prev, e.lsn)
    }
    const expectedLsns = new Set(expected.map((e) => e.lsn))
    const missing = expected.filter((e) => !gotLsns.has(e.lsn)).map((e) => e.lsn)
    const extra = got.filter((e) => !expectedLsns.has(e.lsn)).map((e) => e.lsn)
    const differing: number[] = []
    const expectedBy = new Map(expected.map((e) => [e.lsn, e]))
    for (const e of got) {
      const x = expectedBy.get(e.lsn)
      if (x !== undefined && !same(x, e)) differing.push(e.lsn)
    }
    const behind = w.position < input.commitLsn
    const bad =
      missing.length + extra.length + duplicates.length + outOfOrder.length + differing.length > 0
    if (bad) violations++
    if (bad || behind) {
      problems.push(
        `${w.id} (prefix ${JSON.stringify(w.prefix)}, from ${w.fromLsn}, at ${w.position}${behind ? `, behind the commit LSN ${input.commitLsn}` : ''}): ${missing.length} missing (${missing.slice(0, 5).join(', ')}), ${extra.length} extra (${extra.slice(0, 5).join(', ')}), ${duplicates.length} repeated, ${outOfOrder.length} out of order, ${differing.length} different`,
      )
    }
    perWatcher.push({
      id: w.id,
      prefix: w.prefix,
      fromLsn: w.fromLsn,
      position: w.position,
      events: got.length,
      expected: expected.length,
      missing: missing.slice(0, 50),
      extra: extra.slice(0, 50),
      duplicates: duplicates.slice(0, 50),
      outOfOrder: outOfOrder.slice(0, 50),
      differing: differing.slice(0, 50),
      reconnects: w.reconnects,
      nodes: w.nodes,
    })
  }
  const behind = input.watchers.filter((w) => w.position < input.commitLsn).length
  const events = input.watchers.reduce((n, w) => n + w.events.length, 0)
  const reconnects = input.watchers.reduce((n, w) => n + w.reconnects, 0)
  return {
    checker: 'watch',
    valid: problems.length === 0,
    summary:
      problems.length === 0
        ? `${input.watchers.length} watchers received ${events} events through ${reconnects} reconnects, each exactly the committed history under its prefix (${input.history.length} changes to lsn ${input.commitLsn}; ${input.acked.length} acknowledged writes all in it)`
        : `${violations} of ${input.watchers.length} watchers saw a history other than the committed one, ${behind} did not catch up, ${ackedMissing} acknowledged writes missing from the history: ${problems.slice(0, 3).join('; ')}`,
    details: { problems: problems.slice(0, 100), watchers: perWatcher, commitLsn: input.commitLsn },
  }
}

/** A watch event's writes as observations for the dirty-read checker. */
export function watchObservations(
  events: readonly WatchEventRecord[],
): { key: string; value: string | null; source: 'watch'; lsn: number }[] {
  const out: { key: string; value: string | null; source: 'watch'; lsn: number }[] = []
  for (const e of events) {
    for (const op of e.ops) {
      out.push({
        key: op.key,
        value: op.type === 'put' ? Buffer.from(op.value ?? '', 'base64').toString('utf8') : null,
        source: 'watch',
        lsn: e.lsn,
      })
    }
  }
  return out
}
