import {
  checkConflictAccounting,
  checkQueuedTickets,
  checkRegionConvergence,
  compareStamps,
  parseStamp,
  type ConflictRecord,
  type FinalRead,
  type QueuedSubmission,
  type RegionWrite,
  type TicketState,
} from '../src/checkers/index.js'

let time = 0

/** An acknowledged write: `stamp` and `prev` as the write response gave them. */
function ok(
  region: string,
  key: string,
  value: string,
  stamp: string,
  prev: string | null,
): RegionWrite {
  time += 10
  return {
    process: 0,
    region,
    key,
    value,
    type: 'ok',
    stamp,
    previousStamp: prev,
    invokeTime: time,
    completeTime: time + 5,
  }
}

/** A write whose outcome is unknown (a timeout). */
function info(region: string, key: string, value: string): RegionWrite {
  time += 10
  return { process: 1, region, key, value, type: 'info', invokeTime: time, completeTime: Infinity }
}

/** A write certainly not applied. */
function fail(region: string, key: string, value: string): RegionWrite {
  time += 10
  return { process: 2, region, key, value, type: 'fail', invokeTime: time, completeTime: time + 1 }
}

/** The same final items on both regions (us and eu): [key, value, stamp]. */
function finals(items: [string, string, string | undefined][], version = 1): FinalRead[] {
  return ['us', 'eu'].map((region) => ({
    region,
    node: region === 'us' ? 'n1' : 'n4',
    items: items.map(([key, value, stamp]) => ({
      key,
      value,
      version,
      ...(stamp !== undefined ? { stamp } : {}),
    })),
  }))
}

function conflict(
  key: string,
  detectedIn: string,
  winner: [string, string],
  loser: [string, string],
): ConflictRecord {
  const side = ([stamp, value]: [string, string]) => ({
    stamp,
    region: (stamp.split('@')[1] as string) ?? '',
    deleted: false,
    value,
  })
  return {
    id: `${detectedIn}-${loser[0]}`,
    key,
    detectedIn,
    winner: side(winner),
    loser: side(loser),
  }
}

describe('stamps', () => {
  it('parses "<wallMs>.<logical>@<region>" and refuses anything else', () => {
    expect(parseStamp('1764790000123.4@us')).toEqual({
      wallMs: 1764790000123,
      logical: 4,
      region: 'us',
    })
    expect(parseStamp('1764790000123@us')).toBeNull()
    expect(parseStamp('1.2@US')).toBeNull()
    expect(parseStamp('')).toBeNull()
  })

  it('orders by wallMs, then logical, then region id', () => {
    expect(compareStamps('100.0@us', '99.9@us')).toBeGreaterThan(0)
    expect(compareStamps('100.1@eu', '100.0@us')).toBeGreaterThan(0)
    expect(compareStamps('100.1@eu', '100.1@us')).toBeLessThan(0)
    expect(compareStamps('100.1@us', '100.1@us')).toBe(0)
    expect(() => compareStamps('x', '1.0@us')).toThrow(/not a stamp/)
  })
})

describe('checkRegionConvergence', () => {
  const d = (node: string, region: string, digest: string | null) => ({
    node,
    region,
    digest,
    keys: 3,
  })

  it('is valid when all six nodes have the same digest, whatever their LSNs', () => {
    const v = checkRegionConvergence(
      [
        d('n1', 'us', 'ab'),
        d('n2', 'us', 'ab'),
        d('n3', 'us', 'ab'),
        { ...d('n4', 'eu', 'ab'), appliedLsn: 900 },
        d('n5', 'eu', 'ab'),
        d('n6', 'eu', 'ab'),
      ],
      1500,
    )
    expect(v.valid).toBe(true)
    expect(v.summary).toBe(
      'converged after 1.5 s: all 6 nodes of 2 regions (us, eu) have digest ab over 3 keys',
    )
  })

  it('is invalid when a region differs, and groups the nodes', () => {
    const v = checkRegionConvergence([
      d('n1', 'us', 'ab'),
      d('n2', 'us', 'ab'),
      d('n4', 'eu', 'cd'),
      d('n5', 'eu', 'ab'),
    ])
    expect(v.valid).toBe(false)
    expect(v.details.groups).toEqual([
      { digest: 'ab', nodes: ['n1@us', 'n2@us', 'n5@eu'] },
      { digest: 'cd', nodes: ['n4@eu'] },
    ])
  })

  it('is invalid when a node gives no digest', () => {
    const v = checkRegionConvergence([
      d('n1', 'us', 'ab'),
      { ...d('n4', 'eu', null), error: 'HTTP 404' },
    ])
    expect(v.valid).toBe(false)
    expect(v.summary).toContain('n4 (HTTP 404)')
  })
})

describe('checkConflictAccounting', () => {
  // us writes W1 then W2 (which saw W1); eu writes V1 concurrently with W2 (it saw W1, which
  // had been shipped), and V1's stamp is larger: W2 loses, in both regions' records.
  const W1 = ok('us', 'k', 'us-c0-1', '100.0@us', null)
  const W2 = ok('us', 'k', 'us-c0-2', '101.0@us', '100.0@us')
  const V1 = ok('eu', 'k', 'eu-c0-1', '101.5@eu', '100.0@us')
  const records = [
    conflict('k', 'us', ['101.5@eu', 'eu-c0-1'], ['101.0@us', 'us-c0-2']),
    conflict('k', 'eu', ['101.5@eu', 'eu-c0-1'], ['101.0@us', 'us-c0-2']),
  ]

  it('accounts for final values, writes overwritten after being seen and recorded conflict losers', () => {
    const v = checkConflictAccounting({
      writes: [W1, W2, V1],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: records,
    })
    expect(v.valid).toBe(true)
    expect(v.details.counts).toEqual({
      final: 1,
      overwritten: 1,
      'conflict-loser': 1,
      excused: 0,
      lost: 0,
    })
    // Both regions recorded the same conflict: it counts once.
    expect(v.details.conflictRecords).toEqual({ read: 2, distinct: 1, losers: 1 })
    expect(v.summary).toContain('none excused')
  })

  it('fails when a concurrent loser is not in any conflict record (nothing may disappear silently)', () => {
    const v = checkConflictAccounting({
      writes: [W1, W2, V1],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: [],
    })
    expect(v.valid).toBe(false)
    expect(v.details.counts).toMatchObject({ lost: 1 })
    expect(v.details.lostKeys).toEqual(['k'])
    expect(v.summary).toMatch(
      /^1 acknowledged writes lost without a record on 1 key \(e\.g\. us-c0-2 101\.0@us\)/,
    )
    expect((v.details.lost as { finals: unknown }[])[0]?.finals).toEqual({
      eu: { value: 'eu-c0-1', stamp: '101.5@eu' },
      us: { value: 'eu-c0-1', stamp: '101.5@eu' },
    })
  })

  it('refuses a record whose winner saw the loser, or is not above it, or no client wrote', () => {
    const saw = ok('eu', 'k', 'eu-c0-1', '101.5@eu', '101.0@us')
    // The winner saw W2, so W2 is explained as overwritten; but a winner below its loser is a
    // bad record whatever else holds.
    const low = checkConflictAccounting({
      writes: [W1, W2, saw],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: [conflict('k', 'us', ['100.0@us', 'us-c0-1'], ['101.0@us', 'us-c0-2'])],
    })
    expect(low.valid).toBe(false)
    expect(low.summary).toContain(
      'bad conflict records (the winner 100.0@us is not above the loser 101.0@us)',
    )
    const phantom = checkConflictAccounting({
      writes: [W1, W2, V1],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: [conflict('k', 'us', ['102.0@eu', 'nobody-wrote-this'], ['101.0@us', 'us-c0-2'])],
    })
    expect(phantom.valid).toBe(false)
    expect(phantom.details.counts).toMatchObject({ lost: 1 })
    expect(phantom.summary).toContain('no write of this key in the history')
    const refused = fail('eu', 'k', 'eu-c1-1')
    const fromRefused = checkConflictAccounting({
      writes: [W1, W2, V1, refused],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: [conflict('k', 'us', ['101.7@eu', 'eu-c1-1'], ['101.0@us', 'us-c0-2'])],
    })
    expect(fromRefused.valid).toBe(false)
    expect(fromRefused.summary).toContain('a write that was refused')
  })

  it('excuses an unexplained write when an applied write of unknown outcome may have seen it, and says so', () => {
    // X timed out, yet it was applied after W2 (seeing it): it is final, with a stamp above W2's.
    const X = info('us', 'k', 'us-c1-1')
    const v = checkConflictAccounting({
      writes: [W1, W2, X],
      finals: finals([['k', 'us-c1-1', '103.0@us']]),
      conflicts: [],
    })
    expect(v.valid).toBe(true)
    expect(v.details.counts).toMatchObject({ overwritten: 1, excused: 1, lost: 0 })
    expect(v.summary).toContain('1 excused on 1 key (k: 1)')
    expect(v.details.excusedKeys).toEqual([
      expect.objectContaining({
        key: 'k',
        excused: 1,
        unexplained: 1,
        infoWrites: 1,
        traces: ['103.0@us'],
      }),
    ])
  })

  it('excuses no more writes than there were writes of unknown outcome', () => {
    // W2 and V2 both vanished (no records), one timed-out write was applied: one stays lost.
    const V2 = ok('eu', 'k', 'eu-c0-2', '101.2@eu', '100.0@us')
    const X = info('eu', 'k', 'eu-c1-1')
    const v = checkConflictAccounting({
      writes: [W1, W2, V2, X],
      finals: finals([['k', 'eu-c1-1', '104.0@eu']]),
      conflicts: [],
    })
    expect(v.valid).toBe(false)
    expect(v.details.counts).toMatchObject({ excused: 1, lost: 1 })
  })

  it('excuses nothing when no write of unknown outcome left a trace (none was applied)', () => {
    const X = info('us', 'k', 'us-c1-1')
    const v = checkConflictAccounting({
      writes: [W1, W2, V1, X],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: [],
    })
    expect(v.valid).toBe(false)
    expect(v.details.counts).toMatchObject({ excused: 0, lost: 1 })
  })

  it('excuses nothing when the only trace is below the lost write (it cannot have seen it)', () => {
    // An unacknowledged stamp 100.5@us shows (V1 saw it), but W2 (101.0) came later.
    const X = info('us', 'k', 'us-c1-1')
    const V = ok('eu', 'k', 'eu-c0-1', '101.5@eu', '100.5@us')
    const v = checkConflictAccounting({
      writes: [W1, W2, V, X],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: [],
    })
    expect(v.details.counts).toMatchObject({ excused: 0 })
    expect(v.valid).toBe(false)
  })

  it('uses values when the listing has no stamps', () => {
    const v = checkConflictAccounting({
      writes: [W1, W2, V1],
      finals: finals([['k', 'eu-c0-1', undefined]]),
      conflicts: records,
    })
    expect(v.valid).toBe(true)
    expect(v.details.counts).toMatchObject({ final: 1 })
  })

  it('fails on writes without stamps, on a stamp not above its previousStamp, and on shared stamps', () => {
    const bare = { ...W1, stamp: undefined }
    expect(
      checkConflictAccounting({ writes: [bare], finals: finals([]), conflicts: [] }).summary,
    ).toMatch(/carry no valid stamp/)
    const backwards = ok('us', 'k', 'us-c0-3', '100.5@us', '101.0@us')
    const v = checkConflictAccounting({
      writes: [W1, W2, backwards],
      finals: finals([['k', 'us-c0-3', '100.5@us']]),
      conflicts: [],
    })
    expect(v.valid).toBe(false)
    expect(v.summary).toContain(
      '1 acknowledged writes whose stamp is not above their previousStamp',
    )
    const twin = ok('us', 'k', 'us-c0-9', '101.0@us', '100.0@us')
    const dup = checkConflictAccounting({
      writes: [W1, W2, twin],
      finals: finals([['k', 'us-c0-9', '101.0@us']]),
      conflicts: [],
    })
    expect(dup.valid).toBe(false)
    expect(dup.summary).toContain('stamps were given to two acknowledged writes')
  })

  it("cannot decide without every region's listing or every conflict record", () => {
    const v = checkConflictAccounting({
      writes: [W1, W2, V1],
      finals: [
        {
          region: 'us',
          node: 'n1',
          items: [{ key: 'k', value: 'eu-c0-1', stamp: '101.5@eu', version: 3 }],
        },
        { region: 'eu', node: 'n4', items: null, error: 'timeout' },
      ],
      conflicts: records,
    })
    expect(v.valid).toBe('unknown')
    const partial = checkConflictAccounting({
      writes: [W1, W2, V1],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: records,
      conflictsComplete: false,
    })
    expect(partial.valid).toBe('unknown')
  })

  it('ignores records and writes of keys it was not asked to judge', () => {
    const other = conflict('other', 'us', ['5.0@eu', 'x'], ['6.0@us', 'y'])
    const v = checkConflictAccounting({
      writes: [W1, W2, V1],
      finals: finals([['k', 'eu-c0-1', '101.5@eu']]),
      conflicts: [...records, other],
      keys: ['k'],
    })
    expect(v.valid).toBe(true)
  })
})

describe('checkQueuedTickets', () => {
  const sub = (
    seq: number,
    key: string,
    outcome: QueuedSubmission['outcome'],
    ticket?: string,
  ): QueuedSubmission => ({
    session: 7,
    seq,
    region: 'us',
    node: 'n2',
    key,
    value: `q-7-${seq}`,
    outcome,
    ...(ticket !== undefined ? { ticket } : {}),
  })
  const subs = [
    sub(1, 'a', 'accepted', 'n2.1'),
    sub(2, 'b', 'accepted', 'n2.2'),
    sub(3, 'a', 'accepted', 'n2.3'),
    sub(4, 'a', 'accepted', 'n2.4'),
    sub(5, 'b', 'refused'),
  ]
  const tickets: TicketState[] = [
    { ticket: 'n2.1', status: 'applied', lsn: 10 },
    { ticket: 'n2.2', status: 'applied', lsn: 11 },
    { ticket: 'n2.3', status: 'applied', lsn: 14 },
    { ticket: 'n2.4', status: 'failed', error: 'KV_ERR_PRECONDITION_FAILED' },
  ]
  /** us is the accepting region (versions are its LSNs); eu's versions are its own. */
  const queuedFinals = (a: [string, number], b: [string, number]): FinalRead[] => [
    {
      region: 'us',
      node: 'n1',
      items: [
        { key: 'a', value: a[0], version: a[1] },
        { key: 'b', value: b[0], version: b[1] },
      ],
    },
    {
      region: 'eu',
      node: 'n4',
      items: [
        { key: 'a', value: a[0], version: 77 },
        { key: 'b', value: b[0], version: 78 },
      ],
    },
  ]

  it('is valid when every ticket ended, in order, and each key holds its last applied write at its LSN', () => {
    const v = checkQueuedTickets({
      submissions: subs,
      tickets,
      finals: queuedFinals(['q-7-3', 14], ['q-7-2', 11]),
    })
    expect(v.valid).toBe(true)
    expect(v.details.status).toMatchObject({ applied: 3, failed: 1, pending: 0 })
    expect(v.details.failedCodes).toEqual({ KV_ERR_PRECONDITION_FAILED: 1 })
    expect(v.details.keysChecked).toBe(2)
  })

  it('fails when a ticket is still pending after the drain, or its node does not know it', () => {
    const pending = checkQueuedTickets({
      submissions: subs,
      tickets: [...tickets.slice(0, 3), { ticket: 'n2.4', status: 'pending' }],
      finals: queuedFinals(['q-7-3', 14], ['q-7-2', 11]),
      drainedMs: 30_000,
    })
    expect(pending.valid).toBe(false)
    expect(pending.summary).toMatch(
      /^1 accepted writes did not end applied or failed within 30\.0 s/,
    )
    const missing = checkQueuedTickets({
      submissions: subs,
      tickets: tickets.slice(1),
      finals: queuedFinals(['q-7-3', 14], ['q-7-2', 11]),
    })
    expect(missing.valid).toBe('unknown')
    const notFound = checkQueuedTickets({
      submissions: subs,
      tickets: [{ ticket: 'n2.1', status: 'not-found' }, ...tickets.slice(1)],
      finals: queuedFinals(['q-7-3', 14], ['q-7-2', 11]),
    })
    expect(notFound.valid).toBe(false)
  })

  it("fails when a write was applied twice: the version in the accepting region is not the ticket's LSN", () => {
    const v = checkQueuedTickets({
      submissions: subs,
      tickets,
      finals: queuedFinals(['q-7-3', 15], ['q-7-2', 11]),
    })
    expect(v.valid).toBe(false)
    expect(v.details.wrongVersions).toEqual([
      { key: 'a', region: 'us', ticket: 'n2.3', ticketLsn: 14, version: 15 },
    ])
  })

  it('fails when applied tickets are out of the order they were accepted in', () => {
    const v = checkQueuedTickets({
      submissions: subs,
      tickets: tickets.map((t) => (t.ticket === 'n2.3' ? { ...t, lsn: 9 } : t)),
      finals: queuedFinals(['q-7-3', 9], ['q-7-2', 11]),
    })
    expect(v.valid).toBe(false)
    expect(v.summary).toContain('applied out of the order they were accepted')
  })

  it("fails when a key does not hold the session's last applied write", () => {
    const v = checkQueuedTickets({
      submissions: subs,
      tickets,
      finals: queuedFinals(['q-7-1', 10], ['q-7-2', 11]),
    })
    expect(v.valid).toBe(false)
    expect(v.details.wrongFinals).toHaveLength(2)
  })

  it('excuses a final value written by a submission whose 202 never came', () => {
    const v = checkQueuedTickets({
      submissions: [...subs, sub(6, 'b', 'unknown')],
      tickets,
      finals: queuedFinals(['q-7-3', 14], ['q-7-6', 20]),
    })
    expect(v.valid).toBe(true)
    expect(v.details.excused).toHaveLength(2)
    expect(v.summary).toContain('2 final values excused')
  })
})
