/**
 * Linearizability of independent single-key registers (read, write, compare-and-set), checked
 * key by key with the Wing & Gong search as Lowe refined it (and as Porcupine runs it): walk
 * the operations in real-time order, linearize one whose call precedes every pending return,
 * backtrack when a pending operation's return is reached unlinearized, and prune every
 * configuration (set of linearized operations, register value) already explored.
 *
 * The history's outcomes:
 * - `ok`: it took effect, once, between its invoke and its completion, and saw what it says.
 * - `fail`: it certainly did not take effect; dropped.
 * - `info`: it may have taken effect at any moment after its invoke, or never. An info read
 *   changes nothing and is dropped; an info write or cas may be linearized anywhere after its
 *   invoke, or left out. The search ends as soon as every ok operation is linearized.
 *
 * Real-time order: a precedes b when a's completion comes before b's invoke, by time, and for
 * equal times by position in the history (the runner writes events in the order it observed
 * them, so a completion written before an invoke really happened first).
 *
 * Keeping info operations tractable: a history with many info writes that never took effect
 * would otherwise make the search try every subset of them before each later read. The search
 * is restricted to canonical linearizations, which loses nothing: from any valid linearization,
 * delete every info operation that leaves the value unchanged, that is directly followed by a
 * write (which overwrites it), or that comes last; what remains is still valid. So an info
 * operation is only linearized when it changes the value and the next operation observes the
 * new value (a read of it, or a cas expecting it), and an info operation whose new value no
 * later read or cas could observe is dropped before the search.
 *
 * And one more reduction: when an ok read of the current value may go next (nothing still
 * unlinearized must precede it), it goes next and nothing else is tried there, since moving a
 * read of the current value to the front of any valid continuation keeps it valid. With many
 * clients per key this removes most of the backtracking.
 *
 * Both reductions are checked against a plain exhaustive search on random small histories in
 * the tests.
 */
import type { Operation, Verdict } from '../history.js'
import { compactOp, valueKey } from './util.js'
import type { CompactOp } from './util.js'

export interface LinearizableOptions {
  /** Configurations explored per key before giving up on that key as unknown. Default 1e6. */
  maxStates?: number
}

/** Why one key is not linearizable: the deepest point the search reached. */
export interface LinearizabilityCounterexample {
  key: string
  /** The key's operations that took part in the search. */
  opCount: number
  /** How many operations the longest linearizable prefix the search found holds. */
  linearizedCount: number
  /** Its last operations, in linearization order. */
  prefixTail: CompactOp[]
  /** The register's value after that prefix. */
  valueAfterPrefix: unknown
  /** The operation whose completion came while it could not be linearized after that prefix. */
  stuck: CompactOp | null
  /** The operations that could have come next (invoked before `stuck` completed). */
  pending: CompactOp[]
  /** The key's operations around the failure (overlapping the prefix tail through `stuck`). */
  window: CompactOp[]
}

export interface KeyResult {
  key: string
  result: 'linearizable' | 'not linearizable' | 'unknown'
  /** Operations searched (ok, plus info writes and cas that some later operation may observe). */
  ops: number
  /** Configurations explored. */
  explored: number
  counterexample?: LinearizabilityCounterexample
}

const defaultMaxStates = 1_000_000
const registerFunctions = new Set<Operation['f']>(['read', 'write', 'cas'])

const READ = 0
const WRITE = 1
const CAS = 2

/** One operation as the search sees it; values are interned to small integers (null is 0). */
interface SearchOp {
  op: Operation
  kind: typeof READ | typeof WRITE | typeof CAS
  ok: boolean
  /** read: the value read; write: the value written; cas: the expected value. */
  a: number
  /** cas: the new value. */
  b: number
}

/** Checks every key's register history; see the module comment. */
export function checkLinearizable(
  ops: readonly Operation[],
  options: LinearizableOptions = {},
): Verdict {
  const maxStates = options.maxStates ?? defaultMaxStates
  const byKey = new Map<string, Operation[]>()
  const ignored = { fail: 0, infoReads: 0, otherFunctions: 0 }
  const malformed: CompactOp[] = []
  for (const op of ops) {
    if (!registerFunctions.has(op.f)) {
      ignored.otherFunctions++
      continue
    }
    if (op.type === 'fail') {
      ignored.fail++
      continue
    }
    if (op.type === 'info' && op.f === 'read') {
      ignored.infoReads++
      continue
    }
    if (op.f === 'cas' && !(Array.isArray(op.input) && op.input.length === 2)) {
      malformed.push(compactOp(op))
      continue
    }
    const key = op.key ?? ''
    let list = byKey.get(key)
    if (list === undefined) byKey.set(key, (list = []))
    list.push(op)
  }

  const results: KeyResult[] = []
  let unobservedInfo = 0
  for (const [key, keyOps] of byKey) {
    const r = checkKey(key, keyOps, maxStates)
    unobservedInfo += r.unobservedInfo
    results.push(r.result)
  }

  const invalid = results.filter((r) => r.result === 'not linearizable')
  const unknown = results.filter((r) => r.result === 'unknown')
  const explored = results.reduce((n, r) => n + r.explored, 0)
  const searched = results.reduce((n, r) => n + r.ops, 0)
  const valid: boolean | 'unknown' =
    invalid.length > 0 ? false : unknown.length > 0 || malformed.length > 0 ? 'unknown' : true

  let summary: string
  if (invalid.length > 0) {
    const first = invalid[0]!
    const stuck = first.counterexample?.stuck
    summary =
      `not linearizable: ${invalid.length} of ${results.length} keys (${invalid
        .slice(0, 5)
        .map((r) => JSON.stringify(r.key))
        .join(', ')}${invalid.length > 5 ? ', ...' : ''}); key ${JSON.stringify(first.key)}: ` +
      `after ${first.counterexample?.linearizedCount ?? 0} ops (value ${JSON.stringify(
        first.counterexample?.valueAfterPrefix ?? null,
      )}) ` +
      (stuck ? `cannot place ${describeStuck(stuck)}` : 'no linearization')
  } else if (unknown.length > 0) {
    summary = `unknown: gave up after ${maxStates} configurations on ${unknown.length} of ${
      results.length
    } keys (${unknown
      .slice(0, 5)
      .map((r) => JSON.stringify(r.key))
      .join(', ')}${unknown.length > 5 ? ', ...' : ''})`
  } else if (malformed.length > 0) {
    summary = `unknown: ${malformed.length} cas operations without an [expected, new] input`
  } else {
    summary = `linearizable: ${results.length} keys, ${searched} ops searched, ${explored} configurations explored`
  }

  return {
    checker: 'linearizable',
    valid,
    summary,
    details: {
      keys: results.length,
      opsSearched: searched,
      explored,
      maxStatesPerKey: maxStates,
      ignored: { ...ignored, unobservedInfo },
      ...(malformed.length > 0 ? { malformed: malformed.slice(0, 100) } : {}),
      invalidKeys: invalid.map((r) => ({
        key: r.key,
        explored: r.explored,
        ...(r.counterexample ?? {}),
      })),
      unknownKeys: unknown.map((r) => ({ key: r.key, ops: r.ops, explored: r.explored })),
      perKey: results.map((r) => ({
        key: r.key,
        result: r.result,
        ops: r.ops,
        explored: r.explored,
      })),
    },
  }
}

function describeStuck(op: CompactOp): string {
  const out = op.type === 'ok' ? ` -> ${JSON.stringify(op.output ?? null)}` : ` (${op.type})`
  const input = op.f === 'read' ? '' : ` ${JSON.stringify(op.input ?? null)}`
  return `process ${op.process} ${op.f}${input}${out} [${op.invokeTime}, ${op.completeTime ?? 'never'}]`
}

/** Compares two history positions: time first, then the event's index. */
function before(t1: number, i1: number, t2: number, i2: number): boolean {
  return t1 < t2 || (t1 === t2 && i1 < i2)
}

function checkKey(
  key: string,
  keyOps: readonly Operation[],
  maxStates: number,
): { result: KeyResult; unobservedInfo: number } {
  // Intern values: 0 is null (absent), the initial value of every key.
  const valueIds = new Map<string, number>([['null', 0]])
  const values: unknown[] = [null]
  const intern = (v: unknown): number => {
    const k = valueKey(v)
    let id = valueIds.get(k)
    if (id === undefined) {
      id = values.length
      valueIds.set(k, id)
      values.push(v ?? null)
    }
    return id
  }

  let all: SearchOp[] = keyOps.map((op) => {
    const ok = op.type === 'ok'
    if (op.f === 'read') return { op, kind: READ, ok, a: intern(op.output), b: 0 }
    if (op.f === 'write') return { op, kind: WRITE, ok, a: intern(op.input), b: 0 }
    const [expected, next] = op.input as [unknown, unknown]
    return { op, kind: CAS, ok, a: intern(expected), b: intern(next) }
  })

  // Drop info operations that no canonical linearization contains: a cas that writes what it
  // expects, and any info write or cas whose new value no read or cas that may come after it
  // observes. Repeat, since dropping an info cas may leave another one unobserved.
  const searchedBefore = all.length
  all = all.filter((o) => o.ok || o.kind !== CAS || o.a !== o.b)
  for (;;) {
    const observers = new Map<number, SearchOp[]>()
    for (const o of all) {
      if (o.kind === WRITE) continue
      let list = observers.get(o.a)
      if (list === undefined) observers.set(o.a, (list = []))
      list.push(o)
    }
    const kept = all.filter((o) => {
      if (o.ok) return true
      const produced = o.kind === WRITE ? o.a : o.b
      return (observers.get(produced) ?? []).some(
        (obs) =>
          obs !== o &&
          !before(obs.op.completeTime, obs.op.completeIndex, o.op.invokeTime, o.op.invokeIndex),
      )
    })
    if (kept.length === all.length) break
    all = kept
  }
  const unobservedInfo = searchedBefore - all.length

  const search = wgl(all, maxStates)
  const result: KeyResult = {
    key,
    result:
      search.outcome === 'valid'
        ? 'linearizable'
        : search.outcome === 'invalid'
          ? 'not linearizable'
          : 'unknown',
    ops: all.length,
    explored: search.explored,
  }
  if (search.outcome === 'invalid') {
    result.counterexample = counterexample(key, all, values, search.deepest)
  }
  return { result, unobservedInfo }
}

interface Deepest {
  /** Indices into the search's ops, in linearization order. */
  prefix: number[]
  state: number
  /** The op whose return was reached unlinearized, or -1. */
  stuck: number
  /** Unlinearized ops whose calls came before that return. */
  pending: number[]
}

interface SearchResult {
  outcome: 'valid' | 'invalid' | 'unknown'
  explored: number
  deepest: Deepest
}

/** The search itself, over one key's operations. */
function wgl(ops: readonly SearchOp[], maxStates: number): SearchResult {
  const n = ops.length
  // Entries: op i has call entry 2i and, when ok, return entry 2i+1. Entry 2n is the head.
  const head = 2 * n
  const next = new Int32Array(2 * n + 1).fill(-1)
  const prev = new Int32Array(2 * n + 1).fill(-1)
  const order: { e: number; t: number; i: number; call: boolean }[] = []
  let remainingOk = 0
  for (let i = 0; i < n; i++) {
    const op = ops[i]!.op
    order.push({ e: 2 * i, t: op.invokeTime, i: op.invokeIndex, call: true })
    if (ops[i]!.ok) {
      remainingOk++
      // A completion is never before its own invoke, whatever the clock said.
      const t = Math.max(op.completeTime, op.invokeTime)
      const idx =
        t === op.invokeTime ? Math.max(op.completeIndex, op.invokeIndex) : op.completeIndex
      order.push({ e: 2 * i + 1, t, i: idx, call: false })
    }
  }
  order.sort((x, y) => x.t - y.t || x.i - y.i || (x.call === y.call ? 0 : x.call ? -1 : 1))
  let last = head
  for (const { e } of order) {
    next[last] = e
    prev[e] = last
    last = e
  }

  const lift = (call: number): void => {
    const p = prev[call]!
    const nx = next[call]!
    next[p] = nx
    if (nx >= 0) prev[nx] = p
    if (ops[call >> 1]!.ok) {
      const ret = call + 1
      const rp = prev[ret]!
      const rn = next[ret]!
      next[rp] = rn
      if (rn >= 0) prev[rn] = rp
    }
  }
  const unlift = (call: number): void => {
    if (ops[call >> 1]!.ok) {
      const ret = call + 1
      const rp = prev[ret]!
      const rn = next[ret]!
      next[rp] = ret
      if (rn >= 0) prev[rn] = ret
    }
    const p = prev[call]!
    const nx = next[call]!
    next[p] = call
    if (nx >= 0) prev[nx] = call
  }

  const words = new Uint32Array(Math.ceil(n / 32) || 1)
  const cacheKey = (state: number, lastInfo: boolean): string => {
    let w = 0
    while (w < words.length && words[w] === 0xffffffff) w++
    let end = words.length
    while (end > w && words[end - 1] === 0) end--
    let s = `${state}${lastInfo ? '!' : ':'}${w}`
    for (let i = w; i < end; i++) s += `,${words[i]!.toString(36)}`
    return s
  }
  const cache = new Set<string>()

  interface Frame {
    call: number
    state: number
    lastInfo: boolean
    /** Taken as the only choice (a read of the current value): no alternatives to try. */
    forced: boolean
  }
  const stack: Frame[] = []
  let state = 0
  let lastInfo = false
  let explored = 0
  let bestDepth = 0
  let deepest: Deepest | null = null
  let deepestStale = true

  const snapshot = (ret: number): void => {
    const pending: number[] = []
    for (let e = next[head]!; e >= 0 && e !== ret; e = next[e]!) {
      if ((e & 1) === 0) pending.push(e >> 1)
    }
    deepest = {
      prefix: stack.map((f) => f.call >> 1),
      state,
      stuck: ret >= 0 ? ret >> 1 : -1,
      pending,
    }
    deepestStale = false
  }

  /** Linearizes the op of `call` into `nextState`, unless that configuration was explored. */
  const tryPush = (call: number, nextState: number, forced: boolean): boolean => {
    const i = call >> 1
    const o = ops[i]!
    words[i >> 5]! |= 1 << (i & 31)
    const k = cacheKey(nextState, !o.ok)
    if (cache.has(k)) {
      words[i >> 5]! &= ~(1 << (i & 31))
      return false
    }
    cache.add(k)
    explored++
    stack.push({ call, state, lastInfo, forced })
    state = nextState
    lastInfo = !o.ok
    if (o.ok) remainingOk--
    lift(call)
    if (stack.length > bestDepth) {
      bestDepth = stack.length
      deepestStale = true
    }
    return true
  }

  let entry = next[head]!
  // Whether to look for a forced move: set after every step forward.
  let scan = true
  let backtrack = false
  for (;;) {
    if (remainingOk === 0) {
      return { outcome: 'valid', explored, deepest: deepest ?? emptyDeepest() }
    }
    if (explored > maxStates) {
      return { outcome: 'unknown', explored, deepest: deepest ?? emptyDeepest() }
    }
    if (scan) {
      scan = false
      // A read of the current value that may go next goes next, without loss of generality:
      // it changes nothing, and nothing still unlinearized must precede it. So when there is
      // one, it is the only move tried here.
      let forced = -1
      for (let e = next[head]!; e >= 0 && (e & 1) === 0; e = next[e]!) {
        const o = ops[e >> 1]!
        if (o.ok && o.kind === READ && o.a === state) {
          forced = e
          break
        }
      }
      if (forced >= 0) {
        if (tryPush(forced, state, true)) {
          entry = next[head]!
          scan = true
        } else {
          // Explored before (and refuted): so is this configuration.
          backtrack = true
        }
        continue
      }
    }
    if (!backtrack && entry >= 0 && (entry & 1) === 0) {
      // A call: try to linearize its op now.
      const o = ops[entry >> 1]!
      let nextState = -1
      if (!(lastInfo && o.kind === WRITE)) {
        if (o.kind === READ) nextState = state === o.a ? state : -1
        else if (o.kind === WRITE) nextState = o.a
        else nextState = state === o.a ? o.b : -1
        // An info op is only worth linearizing when it changes the value.
        if (!o.ok && nextState === state) nextState = -1
      }
      if (nextState >= 0 && tryPush(entry, nextState, false)) {
        entry = next[head]!
        scan = true
      } else {
        entry = next[entry]!
      }
      continue
    }
    // A return (or the end of the list): its op must have been linearized by now. Backtrack
    // to the last choice that has alternatives left.
    if (!backtrack && deepestStale && stack.length === bestDepth) snapshot(entry)
    backtrack = false
    for (;;) {
      const frame = stack.pop()
      if (frame === undefined) {
        return { outcome: 'invalid', explored, deepest: deepest ?? emptyDeepest() }
      }
      const i = frame.call >> 1
      words[i >> 5]! &= ~(1 << (i & 31))
      if (ops[i]!.ok) remainingOk++
      state = frame.state
      lastInfo = frame.lastInfo
      unlift(frame.call)
      entry = next[frame.call]!
      if (!frame.forced) break
    }
  }
}

function emptyDeepest(): Deepest {
  return { prefix: [], state: 0, stuck: -1, pending: [] }
}

function counterexample(
  key: string,
  ops: readonly SearchOp[],
  values: readonly unknown[],
  deepest: Deepest,
): LinearizabilityCounterexample {
  const tail = deepest.prefix.slice(-10)
  const stuck = deepest.stuck >= 0 ? ops[deepest.stuck]!.op : null
  // The window: operations overlapping [the invoke of the prefix tail's last few, stuck's end].
  const tailOps = deepest.prefix.slice(-3).map((i) => ops[i]!.op)
  const from = Math.min(...tailOps.map((o) => o.invokeTime), stuck?.invokeTime ?? Infinity)
  const to = stuck?.completeTime ?? Math.max(...tailOps.map((o) => o.invokeTime), -Infinity)
  const windowOps = ops
    .map((o) => o.op)
    .filter((o) => (Number.isFinite(from) ? o.completeTime >= from : true) && o.invokeTime <= to)
    .sort((a, b) => a.invokeIndex - b.invokeIndex)
  return {
    key,
    opCount: ops.length,
    linearizedCount: deepest.prefix.length,
    prefixTail: tail.map((i) => compactOp(ops[i]!.op)),
    valueAfterPrefix: values[deepest.state] ?? null,
    stuck: stuck ? compactOp(stuck) : null,
    pending: deepest.pending.slice(0, 20).map((i) => compactOp(ops[i]!.op)),
    window: (windowOps.length > 0 ? windowOps : ops.map((o) => o.op)).slice(0, 50).map(compactOp),
  }
}
