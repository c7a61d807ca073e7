import { checkLinearizable } from '../src/checkers/index.js'
import type { LinearizabilityCounterexample } from '../src/checkers/index.js'
import { pairOperations } from '../src/history.js'
import type { Operation } from '../src/history.js'
import { prng } from '../src/nemesis.js'
import { cas, history, r, simulateRegister, w } from './build.js'
import type { OpSpec } from './build.js'

const check = (specs: OpSpec[], maxStates?: number) =>
  checkLinearizable(history(specs), maxStates !== undefined ? { maxStates } : {})

function firstCounterexample(specs: OpSpec[]): LinearizabilityCounterexample & { key: string } {
  const v = check(specs)
  expect(v.valid).toBe(false)
  const invalid = v.details.invalidKeys as (LinearizabilityCounterexample & { key: string })[]
  expect(invalid.length).toBeGreaterThan(0)
  return invalid[0]!
}

describe('checkLinearizable', () => {
  it('accepts an empty history and a sequential one', () => {
    expect(checkLinearizable([]).valid).toBe(true)
    const v = check([r(0, null, 0, 1), w(0, 1, 2, 3), r(1, 1, 4, 5), w(1, 2, 6, 7), r(0, 2, 8, 9)])
    expect(v).toMatchObject({ checker: 'linearizable', valid: true })
    expect(v.summary).toMatch(/^linearizable: 1 keys, 5 ops/)
    expect(JSON.parse(JSON.stringify(v.details))).toEqual(v.details)
  })

  it('accepts concurrent writes and reads in either order', () => {
    // write(1) and write(2) overlap; reads overlapping both may see either, and a later read
    // sees whichever went last.
    const writes = [w(0, 1, 0, 10), w(1, 2, 1, 11)]
    expect(check([...writes, r(2, 1, 2, 12), r(3, 2, 13, 14)]).valid).toBe(true)
    expect(check([...writes, r(2, 2, 2, 12), r(3, 1, 13, 14)]).valid).toBe(true)
    expect(check([...writes, r(2, null, 2, 12), r(3, 1, 13, 14)]).valid).toBe(true)
    // But once both completed, the register holds one of them, and it cannot flip back.
    expect(check([...writes, r(2, 2, 13, 14), r(3, 1, 15, 16)]).valid).toBe(false)
    expect(check([...writes, r(2, null, 13, 14)]).valid).toBe(false)
  })

  it('rejects a stale read after a completed write', () => {
    expect(check([w(0, 1, 0, 1), r(1, null, 2, 3)]).valid).toBe(false)
    expect(check([w(0, 0, 0, 1), w(0, 1, 2, 3), r(1, 0, 4, 5)]).valid).toBe(false)
    // The same read overlapping the write is fine.
    expect(check([w(0, 0, 0, 1), w(0, 1, 2, 6), r(1, 0, 4, 5)]).valid).toBe(true)
  })

  it('explains a stale read: the key, the prefix, the read that cannot be placed', () => {
    const cx = firstCounterexample([w(0, 0, 0, 1), w(0, 1, 2, 3), r(1, 0, 4, 5)])
    expect(cx.key).toBe('x')
    expect(cx.linearizedCount).toBe(2)
    expect(cx.valueAfterPrefix).toBe(1)
    expect(cx.prefixTail.map((o) => o.input)).toEqual([0, 1])
    expect(cx.stuck).toMatchObject({ process: 1, f: 'read', output: 0, invokeTime: 4 })
    expect(cx.window.length).toBeGreaterThan(0)
    const v = check([w(0, 0, 0, 1), w(0, 1, 2, 3), r(1, 0, 4, 5)])
    expect(v.summary).toContain('not linearizable: 1 of 1 keys ("x")')
    expect(v.summary).toContain('process 1 read -> 0')
  })

  it('rejects a lost update: two cas from the same value both succeeding', () => {
    const base = [w(0, 0, 0, 1)]
    expect(check([...base, cas(1, 0, 1, 2, 5), cas(2, 0, 2, 3, 6)]).valid).toBe(false)
    // One of them failing is fine (the fail never happened), and so is a chain.
    expect(check([...base, cas(1, 0, 1, 2, 5), cas(2, 0, 2, 3, 6, { type: 'fail' })]).valid).toBe(
      true,
    )
    expect(check([...base, cas(1, 0, 1, 2, 5), cas(2, 1, 2, 3, 6), r(3, 2, 7, 8)]).valid).toBe(true)
    // The second cas from 1 cannot succeed before the first, which completed before it began.
    expect(check([...base, cas(1, 0, 1, 2, 3), cas(2, 0, 2, 4, 6)]).valid).toBe(false)
    // A cas that succeeded although the value did not match.
    expect(check([w(0, 5, 0, 1), cas(1, 4, 6, 2, 3)]).valid).toBe(false)
    expect(check([cas(1, null, 6, 2, 3), r(1, 6, 4, 5)]).valid).toBe(true)
  })

  it('rejects a read of a value never written', () => {
    expect(check([r(0, 42, 0, 1)]).valid).toBe(false)
    expect(check([w(0, 1, 0, 5), r(1, 42, 1, 4)]).valid).toBe(false)
    // Strict equality: the string "1" is not the number 1.
    expect(check([w(0, 1, 0, 1), r(1, '1', 2, 3)]).valid).toBe(false)
    expect(check([w(0, '1', 0, 1), r(1, '1', 2, 3)]).valid).toBe(true)
  })

  it('lets an info write take effect at any moment after its invoke, or never', () => {
    const base = [w(0, 1, 0, 1), w(1, 2, 2, undefined, { type: 'info' })]
    expect(check([...base, r(2, 2, 10, 11)]).valid).toBe(true)
    expect(check([...base, r(2, 1, 10, 11)]).valid).toBe(true)
    // Seen as 1, then as 2: it took effect in between.
    expect(check([...base, r(2, 1, 10, 11), r(2, 2, 12, 13)]).valid).toBe(true)
    // Seen as 2, then as 1 with no other write of 1: once seen, it had taken effect.
    expect(check([...base, r(2, 2, 10, 11), r(2, 1, 12, 13)]).valid).toBe(false)
    // It cannot take effect before its invoke.
    expect(
      check([w(0, 1, 0, 1), r(2, 2, 2, 3), w(1, 2, 4, undefined, { type: 'info' })]).valid,
    ).toBe(false)
    // Even when a later read also sees it (so it cannot be dropped as unobserved).
    expect(
      check([w(0, 1, 0, 1), r(2, 2, 2, 3), w(1, 2, 4, undefined, { type: 'info' }), r(2, 2, 5, 6)])
        .valid,
    ).toBe(false)
    expect(
      check([w(0, 1, 0, 1), r(2, 1, 2, 3), w(1, 2, 4, undefined, { type: 'info' }), r(2, 2, 5, 6)])
        .valid,
    ).toBe(true)
    // A completed info event behaves the same as an op that never completed.
    expect(check([w(0, 1, 0, 1), w(1, 2, 2, 3, { type: 'info' }), r(2, 2, 10, 11)]).valid).toBe(
      true,
    )
    expect(
      check([w(0, 1, 0, 1), w(1, 2, 2, 3, { type: 'info' }), r(2, 2, 10, 11), r(2, 1, 12, 13)])
        .valid,
    ).toBe(false)
  })

  it('lets an info write take effect after later writes (it has no completion)', () => {
    const base = [w(0, 1, 0, 1), w(1, 2, 2, undefined, { type: 'info' }), w(0, 3, 3, 4)]
    expect(check([...base, r(2, 2, 5, 6)]).valid).toBe(true)
    expect(check([...base, r(2, 3, 5, 6)]).valid).toBe(true)
    expect(check([...base, r(2, 3, 5, 6), r(2, 2, 7, 8), r(2, 2, 9, 10)]).valid).toBe(true)
    // Not undo the completed write(3), though.
    expect(check([...base, r(2, 1, 5, 6)]).valid).toBe(false)
    // And it takes effect once: 2, 3, 2 needs two writes of 2.
    expect(check([...base, r(2, 2, 2.5, 3.5), r(2, 3, 5, 6), r(2, 2, 7, 8)]).valid).toBe(false)
  })

  it('handles info cas: a chain that took effect, or a part of it, or not at all', () => {
    const base = [
      w(0, 0, 0, 1),
      cas(1, 0, 1, 2, undefined, { type: 'info' }),
      cas(2, 1, 2, 3, undefined, { type: 'info' }),
    ]
    expect(check([...base, r(3, 2, 10, 11)]).valid).toBe(true)
    expect(check([...base, r(3, 1, 10, 11)]).valid).toBe(true)
    expect(check([...base, r(3, 0, 10, 11)]).valid).toBe(true)
    expect(check([...base, r(3, 1, 10, 11), r(3, 2, 12, 13)]).valid).toBe(true)
    expect(check([...base, r(3, 2, 10, 11), r(3, 1, 12, 13)]).valid).toBe(false)
    expect(check([...base, r(3, 2, 10, 11), r(3, 0, 12, 13)]).valid).toBe(false)
    // Two timed-out cas from the same value: one took effect, the other must not have.
    const twin = [
      w(0, 0, 0, 1),
      cas(1, 0, 1, 2, undefined, { type: 'info' }),
      cas(2, 0, 1, 2, undefined, { type: 'info' }),
    ]
    expect(check([...twin, r(3, 1, 5, 6), r(3, 1, 7, 8)]).valid).toBe(true)
    expect(check([...twin, r(3, 1, 5, 6), r(3, 0, 7, 8)]).valid).toBe(false)
    // An info cas whose expected value never held never took effect.
    expect(
      check([w(0, 0, 0, 1), cas(1, 9, 1, 2, undefined, { type: 'info' }), r(3, 1, 10, 11)]).valid,
    ).toBe(false)
  })

  it('drops info reads and fail ops of every kind', () => {
    // A failed write certainly did not happen.
    expect(check([w(0, 5, 0, 1, { type: 'fail' }), r(1, 5, 2, 3)]).valid).toBe(false)
    expect(check([w(0, 5, 0, 1, { type: 'fail' }), r(1, null, 2, 3)]).valid).toBe(true)
    expect(check([w(0, 5, 0, 10, { type: 'fail' }), r(1, 5, 2, 3)]).valid).toBe(false)
    // A failed read or cas is not evidence of anything.
    expect(check([w(0, 1, 0, 1), r(1, 99, 2, 3, { type: 'fail' })]).valid).toBe(true)
    expect(check([w(0, 1, 0, 1), cas(1, 1, 2, 2, 3, { type: 'fail' }), r(1, 1, 4, 5)]).valid).toBe(
      true,
    )
    expect(check([w(0, 1, 0, 1), r(1, 99, 2, 3, { type: 'info' })]).valid).toBe(true)
    const v = check([w(0, 5, 0, 1, { type: 'fail' }), r(1, 7, 2, 3, { type: 'info' })])
    expect(v.details.ignored).toMatchObject({ fail: 1, infoReads: 1 })
  })

  it('respects real-time order: overlapping ops go either way, sequential ones in order', () => {
    // The read overlaps the write: before or after it.
    expect(check([w(0, 1, 0, 10), r(1, 1, 5, 6)]).valid).toBe(true)
    expect(check([w(0, 1, 0, 10), r(1, null, 5, 6)]).valid).toBe(true)
    // Two reads inside the write: once one sees it, a later one must too.
    expect(check([w(0, 1, 0, 10), r(1, 1, 2, 3), r(2, null, 4, 5)]).valid).toBe(false)
    expect(check([w(0, 1, 0, 10), r(1, null, 2, 3), r(2, 1, 4, 5)]).valid).toBe(true)
    // Overlapping reads can see it in either order.
    expect(check([w(0, 1, 0, 10), r(1, 1, 2, 5), r(2, null, 3, 6)]).valid).toBe(true)
    // Sequential writes then a read that sees the first: invalid; overlapping the second: fine.
    expect(check([w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 4, 5)]).valid).toBe(false)
    expect(check([w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 2.5, 5)]).valid).toBe(true)
    // A read that began before the write was invoked but saw it: still fine if they overlap.
    expect(check([r(1, 1, 0, 5), w(0, 1, 1, 2)]).valid).toBe(true)
    expect(check([r(1, 1, 0, 0.5), w(0, 1, 1, 2)]).valid).toBe(false)
  })

  it('breaks equal times by the order of the events in the history', () => {
    // The write's completion and the read's invoke share a millisecond; the history wrote the
    // completion first, so the write precedes the read.
    expect(check([w(0, 1, 0, 2), r(1, null, 2, 3)]).valid).toBe(false)
    // Invoked first (the read's invoke precedes the write's completion): concurrent.
    const ops = pairOperations([
      { index: 0, type: 'invoke', process: 0, f: 'write', key: 'x', value: 1, time: 0 },
      { index: 1, type: 'invoke', process: 1, f: 'read', key: 'x', value: null, time: 2 },
      { index: 2, type: 'ok', process: 0, f: 'write', key: 'x', value: 1, time: 2 },
      { index: 3, type: 'ok', process: 1, f: 'read', key: 'x', value: null, time: 3 },
    ])
    expect(checkLinearizable(ops).valid).toBe(true)
  })

  it('checks keys independently and names the invalid one', () => {
    const specs = [
      w(0, 1, 0, 1, { key: 'a' }),
      w(1, 1, 0, 1, { key: 'b' }),
      r(2, 1, 2, 3, { key: 'a' }),
      // Valid for key a alone (a holds 1), invalid for b (it was overwritten with 2).
      w(0, 2, 4, 5, { key: 'b' }),
      r(2, 1, 6, 7, { key: 'b' }),
      r(1, 1, 6, 7, { key: 'a' }),
    ]
    const v = check(specs)
    expect(v.valid).toBe(false)
    expect(v.summary).toContain('1 of 2 keys ("b")')
    const invalid = v.details.invalidKeys as { key: string; stuck: { f: string } }[]
    expect(invalid.map((k) => k.key)).toEqual(['b'])
    expect(invalid[0]!.stuck.f).toBe('read')
    expect(v.details.perKey).toEqual([
      expect.objectContaining({ key: 'a', result: 'linearizable' }),
      expect.objectContaining({ key: 'b', result: 'not linearizable' }),
    ])
    // A value seen on another key does not count.
    expect(check([w(0, 7, 0, 1, { key: 'a' }), r(1, 7, 2, 3, { key: 'b' })]).valid).toBe(false)
  })

  it('gives up as unknown, never valid, when the search bound is hit', () => {
    // A long valid history needs more configurations than allowed.
    const sequential: OpSpec[] = []
    for (let i = 0; i < 20; i++) sequential.push(w(0, i, 2 * i, 2 * i + 1))
    expect(check(sequential).valid).toBe(true)
    const bounded = check(sequential, 5)
    expect(bounded.valid).toBe('unknown')
    expect(bounded.summary).toMatch(/^unknown: gave up after 5 configurations on 1 of 1 keys/)
    expect(bounded.details.unknownKeys).toEqual([{ key: 'x', ops: 20, explored: 6 }])

    // Pathological: twelve concurrent writes, then a read of none of them. Proving it invalid
    // means trying every subset of writes in every position.
    const patho: OpSpec[] = []
    for (let i = 0; i < 12; i++) patho.push(w(i, i + 1, 0, 100))
    patho.push(r(20, 'never', 101, 102))
    expect(check(patho, 1000).valid).toBe('unknown')
    const full = check(patho)
    expect(full.valid).toBe(false)
    expect(full.details.explored as number).toBeGreaterThan(1000)

    // Unknown on one key, invalid on another: invalid wins.
    const mixed = [...patho, w(0, 1, 200, 201, { key: 'y' }), r(1, null, 202, 203, { key: 'y' })]
    const m = check(mixed, 1000)
    expect(m.valid).toBe(false)
    expect((m.details.invalidKeys as { key: string }[]).map((k) => k.key)).toEqual(['y'])
    expect((m.details.unknownKeys as { key: string }[]).map((k) => k.key)).toEqual(['x'])
  })

  it('reports a malformed cas as unknown rather than valid', () => {
    const v = check([{ p: 0, f: 'cas', key: 'x', in: 5, t: [0, 1] }])
    expect(v.valid).toBe('unknown')
    expect(v.details.malformed).toHaveLength(1)
  })

  it('ignores info writes nobody could observe, so many of them stay cheap', () => {
    // 200 timed-out writes of values nobody reads, among reads of the real value.
    const specs: OpSpec[] = [w(0, 'v', 0, 1)]
    for (let i = 0; i < 200; i++)
      specs.push(w(100 + i, `lost${i}`, 2 + i, undefined, { type: 'info' }))
    for (let i = 0; i < 200; i++) specs.push(r(1, 'v', 300 + 2 * i, 301 + 2 * i))
    const v = check(specs)
    expect(v.valid).toBe(true)
    expect(v.details.ignored).toMatchObject({ unobservedInfo: 200 })

    // 30 pending info writes that are each read once, in some order, then one read again:
    // invalid, and proving it does not take every subset of the pending writes.
    const seen: OpSpec[] = [w(0, 0, 0, 1)]
    for (let i = 0; i < 30; i++) seen.push(w(100 + i, i + 1, 2, undefined, { type: 'info' }))
    const order = Array.from({ length: 30 }, (_, i) => ((i * 7) % 30) + 1)
    order.forEach((value, i) => seen.push(r(1, value, 10 + 2 * i, 11 + 2 * i)))
    const ok = check(seen)
    expect(ok.valid).toBe(true)
    const again = check([...seen, r(1, order[3], 100, 101)])
    expect(again.valid).toBe(false)
    expect(again.details.explored as number).toBeLessThan(50_000)
  })

  it('agrees with a brute-force search on 3,000 random small histories', () => {
    const rand = prng(7)
    let invalid = 0
    for (let n = 0; n < 3000; n++) {
      const ops = randomSmallHistory(rand)
      const expected = bruteForce(ops)
      const got = checkLinearizable(ops).valid
      if (got !== expected) {
        throw new Error(`history ${n}: expected ${expected}, got ${got}: ${JSON.stringify(ops)}`)
      }
      if (!expected) invalid++
    }
    // Both kinds were exercised.
    expect(invalid).toBeGreaterThan(300)
    expect(invalid).toBeLessThan(2700)
  })

  it('checks 10,000 operations on 10 keys from 8 clients, with info ops, quickly', () => {
    const events = simulateRegister({
      ops: 10_000,
      keys: 10,
      processes: 8,
      infoRate: 0.03,
      seed: 1,
    })
    const ops = pairOperations(events)
    expect(ops).toHaveLength(10_000)
    const info = ops.filter((o) => o.type === 'info').length
    expect(info).toBeGreaterThan(100)
    expect(ops.filter((o) => o.type === 'fail').length).toBeGreaterThan(100)
    const started = performance.now()
    const v = checkLinearizable(ops)
    const ms = performance.now() - started
    expect(v.valid, v.summary).toBe(true)
    expect(v.details.keys).toBe(10)
    // For the record (the test asserts no timing).
    process.stdout.write(`10,000 ops checked in ${ms.toFixed(0)} ms: ${v.summary}\n`)

    // The same history with one read altered to a value never written: caught, on its key.
    const victim = ops.findIndex((o, i) => i > 5000 && o.f === 'read' && o.type === 'ok')
    const altered = ops.map((o, i) => (i === victim ? { ...o, output: 'phantom' } : o))
    const bad = checkLinearizable(altered)
    expect(bad.valid).toBe(false)
    expect((bad.details.invalidKeys as { key: string }[]).map((k) => k.key)).toEqual([
      ops[victim]!.key,
    ])

    // And with one read turned stale: it returns the value its key held before the last write
    // that completed before the read began.
    const stale = makeStale(ops)
    expect(stale).not.toBeNull()
    expect(checkLinearizable(stale!).valid).toBe(false)
  }, 60_000)

  it('passes simulated histories with many clients per key and many info ops', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const events = simulateRegister({ ops: 600, keys: 2, processes: 10, infoRate: 0.1, seed })
      const v = checkLinearizable(pairOperations(events))
      expect(v.valid, `seed ${seed}: ${v.summary}`).toBe(true)
    }
    // Twenty clients on a single key.
    const crowd = pairOperations(
      simulateRegister({ ops: 5000, keys: 1, processes: 20, infoRate: 0.05, seed: 99 }),
    )
    const v = checkLinearizable(crowd, { maxStates: 200_000 })
    expect(v.valid, v.summary).toBe(true)
  })
})

/** A random history of 2 to 7 ops on one key by 3 clients, with ties, fails and infos. */
function randomSmallHistory(rand: () => number): Operation[] {
  const specs: OpSpec[] = []
  const cursor = [0, 0, 0]
  const processOf = [0, 1, 2]
  const count = 2 + Math.floor(rand() * 6)
  const pick = () => [null, 1, 2, 3][Math.floor(rand() * 4)]
  for (let i = 0; i < count; i++) {
    const slot = Math.floor(rand() * 3)
    const t0 = cursor[slot]! + Math.floor(rand() * 3)
    const t1 = t0 + 1 + Math.floor(rand() * 3)
    cursor[slot] = t1
    const roll = rand()
    const typeRoll = rand()
    const type = typeRoll < 0.7 ? 'ok' : typeRoll < 0.85 ? 'info' : 'fail'
    const p = processOf[slot]!
    let spec: OpSpec
    if (roll < 0.4) spec = r(p, pick(), t0, t1, { type })
    else if (roll < 0.75) spec = w(p, pick(), t0, t1, { type })
    else spec = cas(p, pick(), pick(), t0, t1, { type })
    if (type === 'info') {
      processOf[slot] = p + 3
      if (rand() < 0.5) spec.t = [t0]
    }
    specs.push(spec)
  }
  return history(specs)
}

/**
 * Is there an order of all ok ops and some of the info writes and cas, respecting real time,
 * that a register allows? Plain recursion over every choice, no pruning.
 */
function bruteForce(all: readonly Operation[]): boolean {
  const ops = all.filter((o) => o.type === 'ok' || (o.type === 'info' && o.f !== 'read'))
  const precedes = (a: Operation, b: Operation) =>
    a.completeTime < b.invokeTime ||
    (a.completeTime === b.invokeTime && a.completeIndex < b.invokeIndex)
  const used = new Array<boolean>(ops.length).fill(false)
  const okCount = ops.filter((o) => o.type === 'ok').length
  const eq = (a: unknown, b: unknown) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null)
  const go = (value: unknown, done: number): boolean => {
    if (done === okCount) return true
    for (let i = 0; i < ops.length; i++) {
      if (used[i]) continue
      const o = ops[i]!
      // Every ok op that must precede it is already placed.
      if (ops.some((a, j) => !used[j] && a.type === 'ok' && precedes(a, o))) continue
      let next: unknown
      if (o.f === 'read') {
        if (!eq(value, o.output)) continue
        next = value
      } else if (o.f === 'write') {
        next = o.input
      } else {
        const [e, n] = o.input as [unknown, unknown]
        if (!eq(value, e)) continue
        next = n
      }
      used[i] = true
      const found = go(next, done + (o.type === 'ok' ? 1 : 0))
      used[i] = false
      if (found) return true
    }
    return false
  }
  return go(null, 0)
}

/** Turns one late ok read stale: it returns the value before a write that preceded it. */
function makeStale(ops: readonly Operation[]): Operation[] | null {
  const writes = ops.filter((o) => o.f === 'write' && o.type === 'ok')
  for (let i = ops.length - 1; i > ops.length / 2; i--) {
    const read = ops[i]!
    if (read.f !== 'read' || read.type !== 'ok') continue
    // Two ok writes of this key, both completed before the read began, the later one invoked
    // after the earlier one completed; no other op on the key overlaps the read, and none
    // after the first write, so the read must see the second write's value or later.
    const before = writes.filter((x) => x.key === read.key && x.completeTime < read.invokeTime)
    const last = before.at(-1)
    if (last === undefined) continue
    const older = before.filter((x) => x.completeTime < last.invokeTime).at(-1)
    if (older === undefined || older.input === read.output) continue
    // Nothing else may have written the older value back after `last` completed.
    const rewritten = ops.some(
      (x) =>
        x.key === read.key &&
        x.type !== 'fail' &&
        x.completeTime > older.completeTime &&
        ((x.f === 'write' && x.input === older.input) ||
          (x.f === 'cas' && (x.input as unknown[])[1] === older.input)),
    )
    if (rewritten) continue
    return ops.map((o, j) => (j === i ? { ...o, output: older.input } : o))
  }
  return null
}
