/**
 * Builds small histories for the checker tests: each operation is given with its invoke and
 * completion times; the builder orders the events by time (at equal times: completions, then
 * invokes, then completions of ops that took no time), numbers them and pairs them with `pairOperations`, as the runner's file
 * would be read.
 */
import { pairOperations } from '../src/history.js'
import { prng } from '../src/nemesis.js'
import type { HistoryEvent, OpFunction, Operation } from '../src/history.js'

export interface OpSpec {
  p: number
  f: OpFunction
  key?: string
  in?: unknown
  /** The ok completion's value; defaults to the input (null for reads and readAll). */
  out?: unknown
  /** [invoke, completion]; no completion time: the op never completes (an info). */
  t: readonly [number, number?]
  type?: 'ok' | 'fail' | 'info'
  version?: number
  node?: string
}

export function events(specs: readonly OpSpec[]): HistoryEvent[] {
  const raw: { time: number; completion: boolean; n: number; e: Omit<HistoryEvent, 'index'> }[] = []
  specs.forEach((s, n) => {
    const [t0, t1] = s.t
    raw.push({
      time: t0,
      completion: false,
      n,
      e: {
        type: 'invoke',
        process: s.p,
        f: s.f,
        ...(s.key !== undefined ? { key: s.key } : {}),
        value: s.in ?? null,
        time: t0,
      },
    })
    if (t1 === undefined) return
    if (t1 < t0) throw new Error(`op ${n} completes before it is invoked`)
    const type = s.type ?? 'ok'
    const value =
      type === 'ok'
        ? s.out !== undefined
          ? s.out
          : s.f === 'read' || s.f === 'readAll'
            ? null
            : (s.in ?? null)
        : (s.in ?? null)
    raw.push({
      time: t1,
      completion: true,
      n,
      e: {
        type,
        process: s.p,
        f: s.f,
        ...(s.key !== undefined ? { key: s.key } : {}),
        value,
        time: t1,
        ...(s.version !== undefined ? { version: s.version } : {}),
        ...(s.node !== undefined ? { node: s.node } : {}),
        ...(type !== 'ok' ? { error: type === 'fail' ? 'rejected' : 'timeout' } : {}),
      },
    })
  })
  // At equal times: completions, then invokes, then the completions of ops that took no time.
  const phase = (x: (typeof raw)[number]) =>
    !x.completion ? 1 : specs[x.n]!.t[0] === x.time ? 2 : 0
  raw.sort((a, b) => a.time - b.time || phase(a) - phase(b) || a.n - b.n)
  return raw.map((r, index) => ({ index, ...r.e }) as HistoryEvent)
}

export function history(specs: readonly OpSpec[]): Operation[] {
  return pairOperations(events(specs))
}

interface RegOpts {
  key?: string
  type?: 'ok' | 'fail' | 'info'
}

/** A register read of `key` (default 'x') that returned `out`. */
export function r(p: number, out: unknown, t0: number, t1?: number, o: RegOpts = {}): OpSpec {
  return { p, f: 'read', key: o.key ?? 'x', out, t: [t0, t1], type: o.type ?? 'ok' }
}

/** A register write. */
export function w(p: number, v: unknown, t0: number, t1?: number, o: RegOpts = {}): OpSpec {
  return { p, f: 'write', key: o.key ?? 'x', in: v, t: [t0, t1], type: o.type ?? 'ok' }
}

/** A compare-and-set from `expected` to `next`. */
export function cas(
  p: number,
  expected: unknown,
  next: unknown,
  t0: number,
  t1?: number,
  o: RegOpts = {},
): OpSpec {
  return { p, f: 'cas', key: o.key ?? 'x', in: [expected, next], t: [t0, t1], type: o.type ?? 'ok' }
}

export interface SimulationOptions {
  ops: number
  keys: number
  processes: number
  /** Share of operations whose client gives up (info); half of those took effect. */
  infoRate: number
  seed: number
}

/**
 * A history of a correct (linearizable) register store: each operation takes effect at a
 * random moment inside its interval, in that order. Cas that does not match fails. An info
 * operation took effect or not (a coin), and its client retires: the slot continues as a new
 * process number.
 */
export function simulateRegister(o: SimulationOptions): HistoryEvent[] {
  const rand = prng(o.seed)
  interface Planned {
    spec: OpSpec
    lin: number
    applies: boolean
  }
  const planned: Planned[] = []
  const cursor = new Array<number>(o.processes).fill(0)
  const processOf = Array.from({ length: o.processes }, (_, i) => i)
  const lastWritten = new Map<string, unknown>()
  let nextValue = 1
  for (let n = 0; n < o.ops; n++) {
    const slot = Math.floor(rand() * o.processes)
    const t0 = cursor[slot]! + rand() * 2
    const duration = 0.2 + rand() * 6
    const t1 = t0 + duration
    const lin = t0 + rand() * duration
    cursor[slot] = t1 + rand()
    const key = `k${Math.floor(rand() * o.keys)}`
    const roll = rand()
    const info = rand() < o.infoRate
    const p = processOf[slot]!
    let spec: OpSpec
    if (roll < 0.5) spec = { p, f: 'read', key, t: [t0, t1] }
    else if (roll < 0.8) spec = { p, f: 'write', key, in: nextValue++, t: [t0, t1] }
    else {
      const expected = rand() < 0.7 ? (lastWritten.get(key) ?? null) : nextValue - 1
      spec = { p, f: 'cas', key, in: [expected, nextValue++], t: [t0, t1] }
    }
    if (spec.f !== 'read')
      lastWritten.set(key, spec.f === 'write' ? spec.in : (spec.in as unknown[])[1])
    if (info) {
      spec.type = 'info'
      if (rand() < 0.3) spec.t = [t0] // never completes at all
      processOf[slot] = p + o.processes
    }
    planned.push({ spec, lin, applies: !info || rand() < 0.5 })
  }
  const state = new Map<string, unknown>()
  for (const pl of [...planned].sort((a, b) => a.lin - b.lin)) {
    const s = pl.spec
    const current = state.get(s.key!) ?? null
    if (s.f === 'read') {
      if (s.type !== 'info') s.out = current
    } else if (s.f === 'write') {
      if (pl.applies) state.set(s.key!, s.in)
    } else {
      const [expected, next] = s.in as [unknown, unknown]
      if (current === expected) {
        if (pl.applies) state.set(s.key!, next)
      } else if (s.type !== 'info') {
        s.type = 'fail'
      }
    }
  }
  return events(planned.map((pl) => pl.spec))
}
