/**
 * The conflict rules of leaderless mode, checked over many seeded random histories: three
 * replicas of one key take writes and deletes (blind or with a context read from some replica)
 * and merge with each other in random order. After a full exchange every replica must hold the
 * same state, and that state must be exactly what the rules promise.
 */
import { describe, expect, it } from 'vitest'
import {
  liveSiblings,
  mergeStates,
  resolve,
  stateDigest,
  survivorsOf,
  writeState,
  type ConflictMode,
  type VersionedState,
} from '../src/conflicts.js'
import { sameState, type VersionVector } from '../src/dvv.js'
import { HybridClock } from '../src/hlc.js'
import { prng } from '../src/prng.js'
import { hash32 } from '../src/ring.js'

type S = VersionedState<string>

interface Outcome {
  states: S[]
  /** Dots of writes no later write superseded (by its context, or as a tombstone it held). */
  alive: Set<string>
  /** Every write: dot -> (value, timestamp). */
  writes: Map<string, { value: string | null; wallMs: number; logical: number; node: string }>
}

const dotId = (d: { node: string; counter: number }) => `${d.node}:${d.counter}`

function covered(vector: VersionVector, id: string): boolean {
  const [node, counter] = id.split(':') as [string, string]
  return (vector[node] ?? 0) >= Number(counter)
}

function simulate(seed: number, mode: ConflictMode, siblingsMax: number, steps = 80): Outcome {
  const random = prng(seed)
  const names = ['a', 'b', 'c']
  const states: S[] = names.map(() => ({ vector: {}, siblings: [] }))
  const clocks = names.map((n) => new HybridClock(n))
  // Each replica's wall clock runs with its own skew (up to a second either way).
  const skew = names.map(() => Math.floor(random() * 2000) - 1000)
  const counters = names.map(() => 0)
  let wall = 1_000_000
  const alive = new Set<string>()
  const writes: Outcome['writes'] = new Map()
  const mergeInto = (j: number, incoming: S) => {
    for (const s of incoming.siblings) clocks[j]?.observe(s.value.hlc, wall + (skew[j] as number))
    states[j] = mergeStates(states[j] as S, incoming, mode, siblingsMax).state
  }
  for (let step = 0; step < steps; step++) {
    wall += Math.floor(random() * 5)
    const i = Math.floor(random() * 3)
    const roll = random()
    if (roll < 0.45) {
      // A write or delete coordinated by replica i, blind or with a context read somewhere.
      const local = states[i] as S
      const contextFrom = random()
      const readFrom = states[Math.floor(random() * 3)] as S
      const context: VersionVector = contextFrom < 0.4 ? {} : { ...readFrom.vector }
      // A context carries the newest timestamp its read saw; the write is stamped after it.
      if (contextFrom >= 0.4) {
        for (const s of readFrom.siblings)
          clocks[i]?.observe(s.value.hlc, wall + (skew[i] as number))
      }
      const isDelete = random() < 0.2
      if (mode === 'siblings' && !isDelete && survivorsOf(local, context) + 1 > siblingsMax)
        continue
      const counter = ++(counters[i] as number)
      const actor = names[i] as string
      const hlc = (clocks[i] as HybridClock).now(wall + (skew[i] as number))
      const value = isDelete ? null : `v${step}`
      // What this write supersedes, by the rules.
      for (const id of [...alive]) {
        const held = local.siblings.find((s) => dotId(s.dot) === id)
        if (
          covered(context, id) ||
          (held !== undefined && held.value.value === null) ||
          (mode === 'lww' && covered(local.vector, id))
        ) {
          alive.delete(id)
        }
      }
      const next = writeState(local, actor, counter, context, { value, hlc }, mode)
      states[i] = resolve(next, mode, siblingsMax).state
      const id = `${actor}:${counter}`
      alive.add(id)
      writes.set(id, { value, ...hlc })
    } else {
      // Replica i sends its state to replica j (read repair, a hint, or anti-entropy).
      const j = Math.floor(random() * 3)
      if (j !== i) mergeInto(j, states[i] as S)
    }
  }
  // Heal: a full exchange, twice round.
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 3; i++)
      for (let j = 0; j < 3; j++) if (i !== j) mergeInto(j, states[i] as S)
  }
  return { states, alive, writes }
}

const seeds = Array.from({ length: 1500 }, (_, i) => i + 1)

/** stateDigest as first written (its digests are in every Merkle tree: they must not change). */
function referenceDigest(state: S): number {
  const vector = Object.entries(state.vector)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([actor, counter]) => `${actor}=${counter}`)
    .join(',')
  const dots = state.siblings
    .map((s) => `${s.dot.node}:${s.dot.counter}${s.value.value === null ? 't' : ''}`)
    .sort()
    .join(',')
  return hash32(`${vector}|${dots}`)
}

describe('leaderless conflict rules over seeded histories', () => {
  it('digests states as they always did, whatever their actors and siblings', () => {
    let checked = 0
    for (const seed of seeds.slice(0, 300)) {
      for (const mode of ['siblings', 'lww'] as const) {
        for (const state of simulate(seed, mode, 8).states) {
          expect(stateDigest(state as S)).toBe(referenceDigest(state as S))
          checked++
        }
      }
    }
    expect(checked).toBe(1800)
  })

  it('siblings mode: replicas converge to exactly the writes nothing superseded', () => {
    for (const seed of seeds) {
      const { states, alive } = simulate(seed, 'siblings', 1000)
      const [a, b, c] = states as [S, S, S]
      expect(sameState(a, b) && sameState(b, c), `seed ${seed}`).toBe(true)
      expect(stateDigest(a)).toBe(stateDigest(c))
      const held = new Set(a.siblings.map((s) => dotId(s.dot)))
      expect([...held].sort(), `seed ${seed}`).toEqual([...alive].sort())
    }
  })

  it('siblings mode with a cap: replicas converge, never hold more than the cap, and keep only unsuperseded writes', () => {
    for (const seed of seeds) {
      const { states, alive } = simulate(seed, 'siblings', 3)
      const [a, b, c] = states as [S, S, S]
      expect(sameState(a, b) && sameState(b, c), `seed ${seed}`).toBe(true)
      for (const s of states) expect(s.siblings.length).toBeLessThanOrEqual(3)
      for (const s of a.siblings) expect(alive.has(dotId(s.dot)), `seed ${seed}`).toBe(true)
    }
  })

  it('lww mode: every replica ends with the single write of the highest timestamp', () => {
    for (const seed of seeds) {
      const { states, writes } = simulate(seed, 'lww', 1000)
      const [a, b, c] = states as [S, S, S]
      expect(sameState(a, b) && sameState(b, c), `seed ${seed}`).toBe(true)
      if (writes.size === 0) continue
      const newest = [...writes.entries()].sort(([, x], [, y]) =>
        x.wallMs !== y.wallMs
          ? y.wallMs - x.wallMs
          : x.logical !== y.logical
            ? y.logical - x.logical
            : x.node < y.node
              ? 1
              : -1,
      )[0] as [string, { value: string | null }]
      expect(
        a.siblings.map((s) => dotId(s.dot)),
        `seed ${seed}`,
      ).toEqual([newest[0]])
      const live = liveSiblings(a).map((s) => s.value.value)
      expect(live).toEqual(newest[1].value === null ? [] : [newest[1].value])
    }
  })

  it('a write supersedes the tombstones its coordinator holds, so a value written after a delete reads alone', () => {
    const clock = new HybridClock('a')
    let s: S = writeState(
      { vector: {}, siblings: [] },
      'a',
      1,
      {},
      { value: 'v', hlc: clock.now(1) },
      'siblings',
    )
    s = writeState(s, 'a', 2, s.vector, { value: null, hlc: clock.now(2) }, 'siblings')
    expect(liveSiblings(s)).toEqual([])
    s = writeState(s, 'a', 3, {}, { value: 'again', hlc: clock.now(3) }, 'siblings')
    expect(s.siblings.map((x) => x.value.value)).toEqual(['again'])
  })

  it('a write never moves the vector back, even given a context that claims more of its actor', () => {
    const clock = new HybridClock('a')
    const s: S = writeState(
      { vector: {}, siblings: [] },
      'a',
      3,
      { a: 1_000_000 },
      { value: 'v', hlc: clock.now(1) },
      'siblings',
    )
    expect(s.vector.a).toBe(1_000_000)
  })
})
