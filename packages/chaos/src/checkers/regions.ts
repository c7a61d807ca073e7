/**
 * The checkers of a multi-region run (`--regions`): pure functions over what the workload
 * recorded and what the runner read from the nodes after healing.
 *
 * - `checkRegionConvergence`: every node of every region reports the same
 *   `GET /admin/v1/regions/digest` (live user keys with their values and stamps), whatever
 *   its LSN.
 * - `checkConflictAccounting`: every acknowledged write of the shared keys is (a) the final
 *   value on every region, (b) overwritten by a write that saw it (an acknowledged write whose
 *   `previousStamp` is its stamp), or (c) the loser of a record in `GET /admin/v1/conflicts`
 *   whose winner is a write of the history that did not see it and whose stamp is larger.
 *   Writes whose outcome is unknown (timeouts) may have been applied, and such a write may
 *   have overwritten an acknowledged one after seeing it without anyone learning so; an
 *   unexplained write is excused only when that is possible (see `excuse` below), and the
 *   verdict says how many were, on which keys, and why.
 * - `checkQueuedTickets`: every queued write answered 202 ends `applied` or `failed`; a
 *   session's applied tickets have increasing LSNs in the order they were accepted; on a key
 *   that one queued session alone writes, the final value on every region is the session's
 *   last applied write, and in the region that accepted it the key's version is that ticket's
 *   LSN (a write applied twice shows as a later version).
 *
 * Stamps are `"<wallMs>.<logical>@<region>"`, ordered by wallMs, then logical, then region id.
 */
import type { Verdict } from '../history.js'

/** A parsed stamp. */
export interface Stamp {
  wallMs: number
  logical: number
  region: string
}

const stampPattern = /^(\d+)\.(\d+)@([a-z][a-z0-9-]{0,31})$/

/** Parses `"<wallMs>.<logical>@<region>"`; null when the text is not a stamp. */
export function parseStamp(text: string): Stamp | null {
  const m = stampPattern.exec(text)
  if (m === null) return null
  const wallMs = Number(m[1])
  const logical = Number(m[2])
  if (!Number.isSafeInteger(wallMs) || !Number.isSafeInteger(logical)) return null
  return { wallMs, logical, region: m[3] as string }
}

/** Orders two stamps (negative: a first); throws on a text that is not a stamp. */
export function compareStamps(a: string, b: string): number {
  const x = parseStamp(a)
  const y = parseStamp(b)
  if (x === null) throw new Error(`not a stamp: ${JSON.stringify(a)}`)
  if (y === null) throw new Error(`not a stamp: ${JSON.stringify(b)}`)
  if (x.wallMs !== y.wallMs) return x.wallMs - y.wallMs
  if (x.logical !== y.logical) return x.logical - y.logical
  return x.region < y.region ? -1 : x.region > y.region ? 1 : 0
}

// ---------------------------------------------------------------------------------------------
// Convergence

/** One node's `GET /admin/v1/regions/digest`, or why it gave none. */
export interface RegionDigest {
  node: string
  region: string
  digest: string | null
  keys?: number
  appliedLsn?: number
  error?: string
}

/** Valid iff every node answered and all answered the same digest. */
export function checkRegionConvergence(digests: readonly RegionDigest[], waitedMs = 0): Verdict {
  const missing = digests.filter((d) => d.digest === null)
  const groups = new Map<string, string[]>()
  for (const d of digests) {
    if (d.digest === null) continue
    const list = groups.get(d.digest) ?? []
    list.push(`${d.node}@${d.region}`)
    groups.set(d.digest, list)
  }
  const list = [...groups.entries()]
    .map(([digest, nodes]) => ({ digest, nodes }))
    .sort((a, b) => b.nodes.length - a.nodes.length)
  const regions = [...new Set(digests.map((d) => d.region))]
  const details: Record<string, unknown> = {
    nodes: digests.length,
    regions,
    groups: list,
    missing: missing.map((d) => ({ node: d.node, region: d.region, error: d.error ?? '' })),
    keys: Object.fromEntries(digests.map((d) => [d.node, d.keys ?? null])),
    waitedMs,
  }
  const waited = `after ${(waitedMs / 1000).toFixed(1)} s`
  if (digests.length === 0) {
    return {
      checker: 'region-convergence',
      valid: 'unknown',
      summary: 'no node was asked for its region digest',
      details,
    }
  }
  if (missing.length > 0) {
    return {
      checker: 'region-convergence',
      valid: false,
      summary: `${missing.length} of ${digests.length} nodes gave no region digest ${waited}: ${missing.map((d) => `${d.node} (${d.error ?? 'no answer'})`).join(', ')}`,
      details,
    }
  }
  if (list.length === 1) {
    const keys = digests[0]?.keys
    return {
      checker: 'region-convergence',
      valid: true,
      summary: `converged ${waited}: all ${digests.length} nodes of ${regions.length} regions (${regions.join(', ')}) have digest ${list[0]?.digest}${keys !== undefined ? ` over ${keys} keys` : ''}`,
      details,
    }
  }
  return {
    checker: 'region-convergence',
    valid: false,
    summary: `diverged ${waited}: ${list.length} digests: ${list.map((g) => `[${g.nodes.join(', ')}] ${g.digest}`).join('; ')}`,
    details,
  }
}

// ---------------------------------------------------------------------------------------------
// Conflict accounting

/** A write of a shared key, as the workload recorded it. */
export interface RegionWrite {
  /** The client loop's process number when it was invoked. */
  process: number
  /** The region the client wrote to. */
  region: string
  key: string
  /** Unique per write in the run. */
  value: string
  /** ok: acknowledged; fail: certainly not applied; info: unknown (it may have been). */
  type: 'ok' | 'fail' | 'info'
  /** ok: the write's stamp, from the response. */
  stamp?: string
  /** ok: the stamp of the value it replaced in its region (null: none). */
  previousStamp?: string | null
  /** The node that answered (ok, fail) or was asked (info). */
  node?: string
  invokeTime: number
  /** Infinity for info. */
  completeTime: number
  error?: string
}

/** One key as a region holds it after healing. */
export interface FinalItem {
  key: string
  /** The value as UTF-8. */
  value: string
  stamp?: string
  version: number
}

/** What a region holds under the run's prefix after healing (one node's listing). */
export interface FinalRead {
  region: string
  node: string
  /** Null when the listing could not be read. */
  items: FinalItem[] | null
  error?: string
}

/** One side of a conflict record. */
export interface ConflictSide {
  stamp: string
  region: string
  deleted: boolean
  /** UTF-8 value; null or absent for a delete. */
  value?: string | null
}

/** One record of `GET /admin/v1/conflicts`, with the node it was read from. */
export interface ConflictRecord {
  id: string
  key: string
  detectedIn: string
  lsn?: number
  atMs?: number
  winner: ConflictSide
  loser: ConflictSide
  /** The node the record was read from. */
  readFrom?: string
}

export interface ConflictAccountingInput {
  /** Every write of the shared keys (all outcomes). */
  writes: readonly RegionWrite[]
  /** One listing per region. */
  finals: readonly FinalRead[]
  /** Every record read, from every node (duplicates are fine). */
  conflicts: readonly ConflictRecord[]
  /** The keys the checker judges (default: the keys of `writes`). Records of others are ignored. */
  keys?: readonly string[]
  /** False when some node's conflict record could not be read in full. */
  conflictsComplete?: boolean
}

export type WriteExplanation = 'final' | 'overwritten' | 'conflict-loser' | 'excused' | 'lost'

/** An unexplained write, for the verdict's details. */
interface LostWrite {
  key: string
  value: string
  region: string
  stamp: string
  previousStamp: string | null
  node?: string
  /** What each region holds now. */
  finals: Record<string, { value: string; stamp?: string } | null>
  /** Records naming it as the loser whose winner was not acceptable, with why. */
  rejectedRecords: { id: string; detectedIn: string; winner: string; why: string }[]
}

const stampOrNull = (s: string | undefined | null): string | null =>
  typeof s === 'string' && parseStamp(s) !== null ? s : null

/**
 * Accounts for every acknowledged write of the shared keys; see the file's comment. Also
 * fails on a write whose stamp is not above its previousStamp (a hybrid logical clock
 * assigns a write a stamp above every stamp its node has seen, and LWW needs it: a causal
 * overwrite with a smaller stamp loses to the value it overwrote elsewhere), on a record whose
 * winner's stamp is not above its loser's, and on a record whose winner no client wrote.
 */
export function checkConflictAccounting(input: ConflictAccountingInput): Verdict {
  const keys = new Set(input.keys ?? input.writes.map((w) => w.key))
  const writes = input.writes.filter((w) => keys.has(w.key))
  const acked = writes.filter((w) => w.type === 'ok')
  const infos = writes.filter((w) => w.type === 'info')
  const regions = [...new Set(input.finals.map((f) => f.region))].sort()
  const unreadable = input.finals.filter((f) => f.items === null)

  // Acknowledged writes must carry stamps: without them nothing can be accounted for.
  const unstamped = acked.filter(
    (w) =>
      stampOrNull(w.stamp) === null ||
      (w.previousStamp !== null && stampOrNull(w.previousStamp) === null),
  )
  if (unstamped.length > 0) {
    return {
      checker: 'conflict-accounting',
      valid: false,
      summary: `${unstamped.length} of ${acked.length} acknowledged writes carry no valid stamp or previousStamp (the write response must have stamp and previousStamp in region mode): ${unstamped
        .slice(0, 3)
        .map((w) => `${w.value} stamp ${JSON.stringify(w.stamp)}`)
        .join(', ')}`,
      details: { unstamped: unstamped.slice(0, 50) },
    }
  }

  const byStamp = new Map<string, RegionWrite>()
  /** Stamps two acknowledged writes were given: LWW cannot order them. */
  const duplicateStamps: { stamp: string; values: string[] }[] = []
  for (const w of acked) {
    const other = byStamp.get(w.stamp as string)
    if (other !== undefined)
      duplicateStamps.push({ stamp: w.stamp as string, values: [other.value, w.value] })
    else byStamp.set(w.stamp as string, w)
  }
  const byValue = new Map<string, RegionWrite>()
  for (const w of writes) byValue.set(w.value, w)
  /** (key, stamp) pairs some acknowledged write saw (replaced in its region). */
  const seen = new Set<string>()
  for (const w of acked)
    if (w.previousStamp !== null && w.previousStamp !== undefined)
      seen.add(`${w.key}\u0000${w.previousStamp}`)

  // A hybrid logical clock stamps a write above the stamp it replaced.
  const stampOrder = acked.filter(
    (w) =>
      w.previousStamp !== null &&
      w.previousStamp !== undefined &&
      compareStamps(w.stamp as string, w.previousStamp) <= 0,
  )

  // Finals per region and key.
  const finals = new Map<string, Map<string, FinalItem>>()
  for (const f of input.finals) {
    if (f.items === null) continue
    finals.set(f.region, new Map(f.items.filter((i) => keys.has(i.key)).map((i) => [i.key, i])))
  }

  // The records of the judged keys, deduplicated: by loser stamp and winner stamp.
  const records = input.conflicts.filter((c) => keys.has(c.key))
  const pairs = new Map<string, ConflictRecord>()
  for (const c of records) pairs.set(`${c.loser.stamp}>${c.winner.stamp}`, c)
  const byLoser = new Map<string, ConflictRecord[]>()
  for (const c of pairs.values()) {
    const list = byLoser.get(c.loser.stamp) ?? []
    list.push(c)
    byLoser.set(c.loser.stamp, list)
  }

  /** The write a side of a record names: by stamp (acknowledged writes), else by value. */
  const writeOf = (side: ConflictSide): RegionWrite | undefined =>
    byStamp.get(side.stamp) ??
    (typeof side.value === 'string' ? byValue.get(side.value) : undefined)

  // Records that are wrong whoever they name: a winner not above its loser, a winner that no
  // client wrote (a value from nowhere), sides that are not stamps.
  const badRecords: { id: string; key: string; detectedIn: string; why: string }[] = []
  for (const c of pairs.values()) {
    const winner = stampOrNull(c.winner.stamp)
    const loser = stampOrNull(c.loser.stamp)
    if (winner === null || loser === null) {
      badRecords.push({ id: c.id, key: c.key, detectedIn: c.detectedIn, why: 'a side is no stamp' })
      continue
    }
    if (compareStamps(winner, loser) <= 0) {
      badRecords.push({
        id: c.id,
        key: c.key,
        detectedIn: c.detectedIn,
        why: `the winner ${winner} is not above the loser ${loser}`,
      })
      continue
    }
    const w = writeOf(c.winner)
    if (w === undefined || w.key !== c.key) {
      badRecords.push({
        id: c.id,
        key: c.key,
        detectedIn: c.detectedIn,
        why: `the winner ${winner} (${JSON.stringify(c.winner.value ?? null)}) is no write of this key in the history`,
      })
    } else if (w.type === 'fail') {
      badRecords.push({
        id: c.id,
        key: c.key,
        detectedIn: c.detectedIn,
        why: `the winner ${winner} is ${w.value}, a write that was refused (never applied)`,
      })
    }
  }

  // Stamps that show up after the run but belong to no acknowledged write: traces of writes
  // whose outcome was unknown and which were applied. An info write that was applied shows
  // up somewhere at the end of its chain of overwrites: as a final value, as a conflict
  // record's side, or as the previousStamp of an acknowledged write.
  const traces = new Map<string, Set<string>>()
  /** Keys whose final value is no acknowledged write's and comes without a stamp. */
  const unboundedTraces = new Set<string>()
  const trace = (key: string, stamp: string | null | undefined) => {
    if (stamp === null || stamp === undefined || byStamp.has(stamp) || parseStamp(stamp) === null)
      return
    const set = traces.get(key) ?? new Set<string>()
    set.add(stamp)
    traces.set(key, set)
  }
  /** Info writes whose stamp became known (their value showed up with it). */
  const infoStamp = new Map<RegionWrite, string>()
  const learn = (value: string | null | undefined, stamp: string | undefined) => {
    if (typeof value !== 'string' || stamp === undefined) return
    const w = byValue.get(value)
    if (w !== undefined && w.type === 'info') infoStamp.set(w, stamp)
  }
  for (const [, items] of finals) {
    for (const item of items.values()) {
      trace(item.key, item.stamp)
      learn(item.value, item.stamp)
      if (item.stamp === undefined && byValue.get(item.value)?.type !== 'ok')
        unboundedTraces.add(item.key)
    }
  }
  for (const c of pairs.values()) {
    trace(c.key, c.winner.stamp)
    trace(c.key, c.loser.stamp)
    learn(c.winner.value, c.winner.stamp)
    learn(c.loser.value, c.loser.stamp)
  }
  for (const w of acked) trace(w.key, w.previousStamp)

  const explained = new Map<RegionWrite, WriteExplanation>()
  const counts: Record<WriteExplanation, number> = {
    final: 0,
    overwritten: 0,
    'conflict-loser': 0,
    excused: 0,
    lost: 0,
  }
  const unexplained = new Map<string, RegionWrite[]>()
  const rejected = new Map<RegionWrite, LostWrite['rejectedRecords']>()
  for (const w of acked) {
    const stamp = w.stamp as string
    const finalEverywhere =
      finals.size > 0 &&
      [...finals.keys()].every((r) => {
        const item = finals.get(r)?.get(w.key)
        // A listing without stamps: the value (unique per write) says as much.
        return (
          item !== undefined &&
          (item.stamp === undefined ? item.value === w.value : item.stamp === stamp)
        )
      })
    if (finalEverywhere) {
      explained.set(w, 'final')
      continue
    }
    if (seen.has(`${w.key}\u0000${stamp}`)) {
      explained.set(w, 'overwritten')
      continue
    }
    const why: LostWrite['rejectedRecords'] = []
    const accepted = (byLoser.get(stamp) ?? []).some((c) => {
      const reject = (text: string) => {
        why.push({ id: c.id, detectedIn: c.detectedIn, winner: c.winner.stamp, why: text })
        return false
      }
      if (c.key !== w.key) return reject(`the record is of key ${c.key}`)
      if (stampOrNull(c.winner.stamp) === null) return reject('the winner is no stamp')
      if (compareStamps(c.winner.stamp, stamp) <= 0) return reject('the winner is not above it')
      const winner = writeOf(c.winner)
      if (winner === undefined || winner.key !== w.key)
        return reject('the winner is no write of this key in the history')
      if (winner === w) return reject('the winner is the write itself')
      if (winner.type === 'fail') return reject('the winner was refused (never applied)')
      if (winner.type === 'ok' && winner.previousStamp === stamp)
        return reject('the winner saw it (not concurrent)')
      return true
    })
    if (accepted) {
      explained.set(w, 'conflict-loser')
      continue
    }
    if (why.length > 0) rejected.set(w, why)
    const list = unexplained.get(w.key) ?? []
    list.push(w)
    unexplained.set(w.key, list)
  }

  // Excuses. An unexplained write W may have been overwritten by an info write X that saw it
  // (X.previousStamp = W's stamp) without anyone learning so. Such an X has a stamp above W's,
  // and the end of X's chain of overwrites left a trace above W's stamp. Each info write
  // replaced one value only, so it excuses one write at most: the most constrained (largest
  // stamps) are matched first, to info writes whose stamp is known and above theirs, then to
  // info writes whose stamp is unknown.
  const excusedKeys: {
    key: string
    excused: number
    unexplained: number
    infoWrites: number
    traces: string[]
    reason: string
  }[] = []
  const lost: RegionWrite[] = []
  for (const [key, list] of unexplained) {
    const keyTraces = [...(traces.get(key) ?? [])].sort(compareStamps)
    const top = keyTraces[keyTraces.length - 1]
    const keyInfos = infos.filter((x) => x.key === key)
    const known = keyInfos
      .filter((x) => infoStamp.has(x))
      .map((x) => ({ write: x, stamp: infoStamp.get(x) as string, used: false }))
      .sort((a, b) => compareStamps(a.stamp, b.stamp))
    let unknown = keyInfos.filter((x) => !infoStamp.has(x)).length
    let excused = 0
    const sorted = [...list].sort((a, b) => compareStamps(b.stamp as string, a.stamp as string))
    for (const w of sorted) {
      const stamp = w.stamp as string
      if (!unboundedTraces.has(key) && (top === undefined || compareStamps(top, stamp) <= 0)) {
        lost.push(w)
        continue
      }
      const match = known.find((k) => !k.used && compareStamps(k.stamp, stamp) > 0)
      if (match !== undefined) match.used = true
      else if (unknown > 0) unknown--
      else {
        lost.push(w)
        continue
      }
      explained.set(w, 'excused')
      excused++
    }
    if (excused > 0) {
      excusedKeys.push({
        key,
        excused,
        unexplained: list.length,
        infoWrites: keyInfos.length,
        traces: keyTraces.slice(-5),
        reason: `${keyInfos.length} write${keyInfos.length === 1 ? '' : 's'} of unknown outcome, and ${unboundedTraces.has(key) ? 'a final value no acknowledgement names' : `stamps of writes no acknowledgement names (up to ${top})`}: such a write may have been applied over an acknowledged one after seeing it`,
      })
    }
  }
  for (const w of lost) explained.set(w, 'lost')
  for (const e of explained.values()) counts[e]++

  const finalsOf = (key: string) =>
    Object.fromEntries(
      regions.map((r) => {
        const item = finals.get(r)?.get(key)
        return [
          r,
          item === undefined
            ? null
            : { value: item.value, ...(item.stamp !== undefined ? { stamp: item.stamp } : {}) },
        ]
      }),
    )
  const lostDetails: LostWrite[] = lost.slice(0, 50).map((w) => ({
    key: w.key,
    value: w.value,
    region: w.region,
    stamp: w.stamp as string,
    previousStamp: w.previousStamp ?? null,
    ...(w.node !== undefined ? { node: w.node } : {}),
    finals: finalsOf(w.key),
    rejectedRecords: rejected.get(w) ?? [],
  }))
  const lostKeys = [...new Set(lost.map((w) => w.key))]
  const excusedTotal = counts.excused
  const details: Record<string, unknown> = {
    keys: keys.size,
    regions,
    writes: {
      ok: acked.length,
      info: infos.length,
      fail: writes.filter((w) => w.type === 'fail').length,
    },
    counts,
    conflictRecords: { read: input.conflicts.length, distinct: pairs.size, losers: byLoser.size },
    excusedKeys,
    lost: lostDetails,
    lostKeys,
    stampOrder: stampOrder.slice(0, 20).map((w) => ({
      key: w.key,
      value: w.value,
      stamp: w.stamp,
      previousStamp: w.previousStamp,
    })),
    badRecords: badRecords.slice(0, 50),
    duplicateStamps: duplicateStamps.slice(0, 20),
    unreadableFinals: unreadable.map((f) => ({ region: f.region, node: f.node, error: f.error })),
    conflictsComplete: input.conflictsComplete ?? true,
  }
  const excusedText =
    excusedTotal === 0
      ? 'none excused'
      : `${excusedTotal} excused on ${excusedKeys.length} key${excusedKeys.length === 1 ? '' : 's'} (${excusedKeys.map((k) => `${k.key}: ${k.excused}`).join(', ')}) because writes of unknown outcome on them were applied and may have overwritten them after seeing them`
  const tally = `${acked.length} acknowledged writes on ${keys.size} keys: ${counts.final} final everywhere, ${counts.overwritten} overwritten by a write that saw them, ${counts['conflict-loser']} conflict losers of a named concurrent winner (${byLoser.size} losers in ${pairs.size} distinct records); ${excusedText}`
  // Without every region's listing or every record, an unexplained write is undecided.
  const incomplete = unreadable.length > 0 || input.conflictsComplete === false
  const problems: string[] = []
  if (lost.length > 0 && !incomplete)
    problems.push(
      `${lost.length} acknowledged writes lost without a record on ${lostKeys.length} key${lostKeys.length === 1 ? '' : 's'} (e.g. ${lost
        .slice(0, 3)
        .map((w) => `${w.value} ${w.stamp}`)
        .join(', ')})`,
    )
  if (stampOrder.length > 0)
    problems.push(
      `${stampOrder.length} acknowledged writes whose stamp is not above their previousStamp`,
    )
  if (duplicateStamps.length > 0)
    problems.push(
      `${duplicateStamps.length} stamps were given to two acknowledged writes (e.g. ${duplicateStamps[0]?.stamp}: ${duplicateStamps[0]?.values.join(', ')})`,
    )
  if (badRecords.length > 0)
    problems.push(`${badRecords.length} bad conflict records (${badRecords[0]?.why})`)
  if (problems.length > 0) {
    return {
      checker: 'conflict-accounting',
      valid: false,
      summary: `${problems.join('; ')}. ${tally}`,
      details,
    }
  }
  if (incomplete) {
    const why: string[] = []
    if (unreadable.length > 0)
      why.push(`no final listing of ${unreadable.map((f) => f.region).join(', ')}`)
    if (input.conflictsComplete === false) why.push('a conflict record was not read in full')
    return {
      checker: 'conflict-accounting',
      valid: 'unknown',
      summary: `cannot decide: ${why.join('; ')}${lost.length > 0 ? `, and ${lost.length} acknowledged writes are not accounted for without it` : ''}. ${tally}`,
      details,
    }
  }
  return {
    checker: 'conflict-accounting',
    valid: true,
    summary: `every write accounted for: ${tally}`,
    details,
  }
}

// ---------------------------------------------------------------------------------------------
// Queued writes

/** One queued write (`ack=queued`) as the workload sent it. */
export interface QueuedSubmission {
  /** The queued session (client loop) that sent it; it writes its own keys. */
  session: number
  /** Order within the session (increasing). */
  seq: number
  region: string
  /** The member it was sent to (and that holds its ticket when accepted). */
  node: string
  key: string
  value: string
  /** accepted: 202 with a ticket; refused: certainly not accepted; unknown: no answer. */
  outcome: 'accepted' | 'refused' | 'unknown'
  ticket?: string
  error?: string
}

/** A ticket's last known state after the drain. */
export interface TicketState {
  ticket: string
  /** not-found: the holding node does not know it; unknown: it could not be asked. */
  status: 'pending' | 'applied' | 'failed' | 'not-found' | 'unknown'
  lsn?: number
  error?: string
}

export interface QueuedInput {
  submissions: readonly QueuedSubmission[]
  tickets: readonly TicketState[]
  /** One listing per region. */
  finals: readonly FinalRead[]
  /** How long the drain waited. */
  drainedMs?: number
}

/** See the file's comment. */
export function checkQueuedTickets(input: QueuedInput): Verdict {
  const tickets = new Map(input.tickets.map((t) => [t.ticket, t]))
  const accepted = input.submissions.filter((s) => s.outcome === 'accepted')
  const status = { applied: 0, failed: 0, pending: 0, 'not-found': 0, unknown: 0 }
  const notEnded: { ticket: string; key: string; node: string; status: string }[] = []
  const noLsn: string[] = []
  const failedCodes: Record<string, number> = {}
  for (const s of accepted) {
    const t = s.ticket === undefined ? undefined : tickets.get(s.ticket)
    const st = t?.status ?? 'unknown'
    status[st]++
    if (st !== 'applied' && st !== 'failed')
      notEnded.push({ ticket: s.ticket ?? '?', key: s.key, node: s.node, status: st })
    if (st === 'applied' && !Number.isSafeInteger(t?.lsn)) noLsn.push(s.ticket ?? '?')
    if (st === 'failed')
      failedCodes[t?.error ?? 'unknown'] = (failedCodes[t?.error ?? 'unknown'] ?? 0) + 1
  }
  const appliedOf = (s: QueuedSubmission): TicketState | undefined => {
    const t = s.ticket === undefined ? undefined : tickets.get(s.ticket)
    return t?.status === 'applied' && Number.isSafeInteger(t.lsn) ? t : undefined
  }

  // Per-session order: applied tickets, in the order they were accepted, have increasing LSNs.
  const sessions = new Map<number, QueuedSubmission[]>()
  for (const s of input.submissions) {
    const list = sessions.get(s.session) ?? []
    list.push(s)
    sessions.set(s.session, list)
  }
  const orderViolations: {
    session: number
    earlier: { ticket: string; lsn: number }
    later: { ticket: string; lsn: number }
  }[] = []
  for (const [session, list] of sessions) {
    let last: { ticket: string; lsn: number } | null = null
    for (const s of [...list].sort((a, b) => a.seq - b.seq)) {
      const t = appliedOf(s)
      if (t === undefined) continue
      const now = { ticket: t.ticket, lsn: t.lsn as number }
      if (last !== null && now.lsn <= last.lsn)
        orderViolations.push({ session, earlier: last, later: now })
      last = now
    }
  }

  // Per key: the final value and version.
  const finals = new Map<string, Map<string, FinalItem>>()
  for (const f of input.finals)
    if (f.items !== null) finals.set(f.region, new Map(f.items.map((i) => [i.key, i])))
  const unreadable = input.finals.filter((f) => f.items === null)
  const regions = [...finals.keys()].sort()
  const byKey = new Map<string, QueuedSubmission[]>()
  for (const s of input.submissions) {
    const list = byKey.get(s.key) ?? []
    list.push(s)
    byKey.set(s.key, list)
  }
  const wrongFinals: Record<string, unknown>[] = []
  const wrongVersions: Record<string, unknown>[] = []
  const excused: { key: string; value: string; reason: string }[] = []
  let keysChecked = 0
  let sharedKeys = 0
  for (const [key, list] of byKey) {
    if (new Set(list.map((s) => s.session)).size > 1) {
      sharedKeys++
      continue
    }
    // Undecided tickets make the key's final value undecidable.
    if (
      list.some(
        (s) =>
          s.outcome === 'accepted' &&
          appliedOf(s) === undefined &&
          tickets.get(s.ticket ?? '')?.status !== 'failed',
      )
    )
      continue
    keysChecked++
    const ordered = [...list].sort((a, b) => a.seq - b.seq)
    const applied = ordered.filter((s) => appliedOf(s) !== undefined)
    const last = applied[applied.length - 1]
    // A write of unknown outcome may have been accepted (and applied) at any place in the
    // node's order: its value is an acceptable final value too.
    const alternatives = ordered.filter((s) => s.outcome === 'unknown')
    for (const region of regions) {
      const item = finals.get(region)?.get(key)
      const value = item?.value ?? null
      if (value === (last?.value ?? null)) {
        const t = last === undefined ? undefined : appliedOf(last)
        if (
          last !== undefined &&
          t !== undefined &&
          region === last.region &&
          item?.version !== t.lsn
        ) {
          wrongVersions.push({
            key,
            region,
            ticket: t.ticket,
            ticketLsn: t.lsn,
            version: item?.version ?? null,
          })
        }
        continue
      }
      const alt = alternatives.find((s) => s.value === value)
      if (alt !== undefined) {
        excused.push({
          key,
          value: alt.value,
          reason: `${region} holds a write whose 202 never came (it may have been accepted)`,
        })
        continue
      }
      wrongFinals.push({
        key,
        region,
        expected: last?.value ?? null,
        expectedTicket: last?.ticket ?? null,
        actual: value,
        actualVersion: item?.version ?? null,
      })
    }
  }
  const details: Record<string, unknown> = {
    submissions: input.submissions.length,
    accepted: accepted.length,
    refused: input.submissions.filter((s) => s.outcome === 'refused').length,
    unknown: input.submissions.filter((s) => s.outcome === 'unknown').length,
    sessions: sessions.size,
    status,
    failedCodes,
    notEnded: notEnded.slice(0, 50),
    appliedWithoutLsn: noLsn.slice(0, 50),
    orderViolations: orderViolations.slice(0, 50),
    keysChecked,
    keysSharedBySessions: sharedKeys,
    wrongFinals: wrongFinals.slice(0, 50),
    wrongVersions: wrongVersions.slice(0, 50),
    excused,
    drainedMs: input.drainedMs ?? null,
    unreadableFinals: unreadable.map((f) => ({ region: f.region, node: f.node, error: f.error })),
  }
  const tally = `${accepted.length} of ${input.submissions.length} queued writes accepted by ${sessions.size} sessions: ${status.applied} applied, ${status.failed} failed${
    Object.keys(failedCodes).length > 0
      ? ` (${Object.entries(failedCodes)
          .map(([c, n]) => `${c} ${n}`)
          .join(', ')})`
      : ''
  }; ${keysChecked} keys checked${excused.length > 0 ? `, ${excused.length} final values excused (a write whose 202 never came)` : ''}`
  const problems: string[] = []
  const lostTickets = notEnded.filter((t) => t.status === 'pending' || t.status === 'not-found')
  if (lostTickets.length > 0)
    problems.push(
      `${lostTickets.length} accepted writes did not end applied or failed${input.drainedMs !== undefined ? ` within ${(input.drainedMs / 1000).toFixed(1)} s` : ''} (${status.pending} pending, ${status['not-found']} unknown to their node; e.g. ${lostTickets[0]?.ticket} on ${lostTickets[0]?.node})`,
    )
  if (noLsn.length > 0) problems.push(`${noLsn.length} applied tickets carry no lsn`)
  if (orderViolations.length > 0)
    problems.push(
      `${orderViolations.length} applied out of the order they were accepted in a session (e.g. ${orderViolations[0]?.later.ticket} at LSN ${orderViolations[0]?.later.lsn} after ${orderViolations[0]?.earlier.ticket} at ${orderViolations[0]?.earlier.lsn})`,
    )
  if (wrongFinals.length > 0)
    problems.push(
      `${wrongFinals.length} final values are not the session's last applied write (e.g. ${JSON.stringify(wrongFinals[0])})`,
    )
  if (wrongVersions.length > 0)
    problems.push(
      `${wrongVersions.length} keys' versions in the accepting region are not their last ticket's LSN: applied again after the ticket's outcome (e.g. ${JSON.stringify(wrongVersions[0])})`,
    )
  if (problems.length > 0)
    return {
      checker: 'queued-tickets',
      valid: false,
      summary: `${problems.join('; ')}. ${tally}`,
      details,
    }
  const undecided: string[] = []
  if (status.unknown > 0) undecided.push(`${status.unknown} tickets could not be asked`)
  if (unreadable.length > 0)
    undecided.push(`no final listing of ${unreadable.map((f) => f.region).join(', ')}`)
  if (accepted.length === 0) undecided.push('no queued write was accepted')
  if (undecided.length > 0)
    return {
      checker: 'queued-tickets',
      valid: 'unknown',
      summary: `cannot decide: ${undecided.join('; ')}. ${tally}`,
      details,
    }
  return {
    checker: 'queued-tickets',
    valid: true,
    summary: `every accepted write ended: ${tally}`,
    details,
  }
}
