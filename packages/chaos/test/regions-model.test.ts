/**
 * The conflict-accounting checker against a small model of two regions as issue 18's contract
 * describes them: each region stamps its writes with a hybrid logical clock and ships every
 * write, in order, with the stamp it replaced; a receiver applies a write whose previous stamp
 * is its current one (a causal overwrite), and otherwise keeps the larger stamp and records the
 * other as the loser. The link is cut now and then; some writes time out (applied or not).
 *
 * On every seed the correct model must pass (no false alarm, whatever the timeouts did), and
 * the model that never records losers must be caught on most seeds.
 */
import {
  checkConflictAccounting,
  compareStamps,
  type ConflictRecord,
  type FinalRead,
  type RegionWrite,
} from '../src/checkers/index.js'
import { prng } from '../src/nemesis.js'

interface Cell {
  stamp: string
  value: string
}

interface Shipped {
  key: string
  stamp: string
  value: string
  prev: string | null
}

function simulate(seed: number, skipRecord: boolean) {
  const random = prng(seed)
  const regions = ['us', 'eu'] as const
  const keys = ['a', 'b', 'c']
  const store = { us: new Map<string, Cell>(), eu: new Map<string, Cell>() }
  const clock = { us: { wall: 0, logical: 0 }, eu: { wall: 0, logical: 0 } }
  const log = { us: [] as Shipped[], eu: [] as Shipped[] }
  const cursor = { us: 0, eu: 0 }
  const writes: RegionWrite[] = []
  const conflicts: ConflictRecord[] = []
  let now = 1000
  let cut = false
  let seq = 0
  const other = (r: 'us' | 'eu') => (r === 'us' ? 'eu' : 'us')
  /** The region's clock, moved past `now` and past a stamp it saw. */
  const tick = (r: 'us' | 'eu', seen?: string): string => {
    const c = clock[r]
    const [wallText, rest] = (seen ?? '0.0@x').split('.')
    const seenWall = Number(wallText)
    const seenLogical = Number((rest as string).split('@')[0])
    const wall = Math.max(now, c.wall, seenWall)
    c.logical =
      wall === c.wall && wall === seenWall
        ? Math.max(c.logical, seenLogical) + 1
        : wall === c.wall
          ? c.logical + 1
          : wall === seenWall
            ? seenLogical + 1
            : 0
    c.wall = wall
    return `${c.wall}.${c.logical}@${r}`
  }
  const observe = (r: 'us' | 'eu', stamp: string) => {
    const c = clock[r]
    const [wallText, rest] = stamp.split('.')
    const wall = Number(wallText)
    const logical = Number((rest as string).split('@')[0])
    if (wall > c.wall || (wall === c.wall && logical > c.logical)) {
      c.wall = wall
      c.logical = logical
    }
  }
  const ship = (from: 'us' | 'eu') => {
    const to = other(from)
    const entry = log[from][cursor[from]]
    if (entry === undefined) return
    cursor[from]++
    observe(to, entry.stamp)
    const current = store[to].get(entry.key)
    if (current === undefined || current.stamp === entry.prev) {
      store[to].set(entry.key, { stamp: entry.stamp, value: entry.value })
      return
    }
    const entryWins = compareStamps(entry.stamp, current.stamp) > 0
    const winner = entryWins ? { stamp: entry.stamp, value: entry.value } : current
    const loser = entryWins ? current : { stamp: entry.stamp, value: entry.value }
    store[to].set(entry.key, winner)
    if (!skipRecord) {
      const side = (c: Cell) => ({
        stamp: c.stamp,
        region: c.stamp.split('@')[1] as string,
        deleted: false,
        value: c.value,
      })
      conflicts.push({
        id: `${to}-${conflicts.length}`,
        key: entry.key,
        detectedIn: to,
        winner: side(winner),
        loser: side(loser),
      })
    }
  }
  for (let step = 0; step < 400; step++) {
    now += Math.floor(random() * 3)
    const roll = random()
    if (roll < 0.03) cut = !cut
    else if (roll < 0.45) {
      if (!cut) ship(random() < 0.5 ? 'us' : 'eu')
    } else {
      const r = regions[Math.floor(random() * 2)] as 'us' | 'eu'
      const key = keys[Math.floor(random() * keys.length)] as string
      const value = `${r}-${++seq}`
      const outcome = random()
      const base = { process: 0, region: r, key, value, invokeTime: step, completeTime: step }
      if (outcome < 0.05) {
        // Timed out before it reached the leader: never applied.
        writes.push({ ...base, type: 'info', completeTime: Infinity })
        continue
      }
      const prev = store[r].get(key)?.stamp ?? null
      const stamp = tick(r, prev ?? undefined)
      store[r].set(key, { stamp, value })
      log[r].push({ key, stamp, value, prev })
      if (outcome < 0.1) writes.push({ ...base, type: 'info', completeTime: Infinity })
      else writes.push({ ...base, type: 'ok', stamp, previousStamp: prev })
    }
  }
  // Heal: ship everything.
  while (cursor.us < log.us.length || cursor.eu < log.eu.length) {
    ship('us')
    ship('eu')
  }
  const finals: FinalRead[] = regions.map((r) => ({
    region: r,
    node: r,
    items: [...store[r]].map(([key, c]) => ({ key, value: c.value, stamp: c.stamp, version: 1 })),
  }))
  const converged = keys.every((k) => store.us.get(k)?.stamp === store.eu.get(k)?.stamp)
  return { writes, conflicts, finals, converged }
}

describe('conflict accounting against a model of two LWW regions', () => {
  it('never flags a correct run, with timeouts that were and were not applied (200 seeds)', () => {
    let conflictLosers = 0
    let excused = 0
    for (let seed = 1; seed <= 200; seed++) {
      const run = simulate(seed, false)
      expect(run.converged).toBe(true)
      const v = checkConflictAccounting(run)
      expect([seed, v.valid, v.summary]).toEqual([seed, true, v.summary])
      const counts = v.details.counts as Record<string, number>
      conflictLosers += counts['conflict-loser'] ?? 0
      excused += counts.excused ?? 0
    }
    // The model made conflicts, and timeouts that needed excusing.
    expect(conflictLosers).toBeGreaterThan(200)
    expect(excused).toBeGreaterThan(0)
  })

  it('catches the run that never records a loser on most seeds', () => {
    let caught = 0
    for (let seed = 1; seed <= 200; seed++) {
      const v = checkConflictAccounting(simulate(seed, true))
      if (v.valid === false) caught++
    }
    expect(caught).toBeGreaterThan(180)
  })
})
