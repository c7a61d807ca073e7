/**
 * `kv regions`, `kv conflicts` and the region lines of `kv cluster`, rendered from answers as a
 * node in a region gives them (pure), and the usage errors `kv` gives before any request.
 */
import { PassThrough, Readable } from 'node:stream'
import type { RegionConflict, RegionsView, RegionalClusterView } from '@kvstore/client'
import { runKv } from '../src/kv-command.js'
import { clusterRegionLines, conflictsText, regionsText } from '../src/regions-command.js'

const now = 1_764_790_010_000

const view: RegionsView = {
  region: 'us',
  leader: true,
  regions: [
    { id: 'us', members: [{ id: 'n1', url: 'https://127.0.0.1:7001' }] },
    { id: 'eu', members: [{ id: 'n4', url: 'https://127.0.0.1:7011' }] },
  ],
  shipping: [
    {
      to: 'eu',
      state: 'failing',
      cursor: 120,
      commitLsn: 130,
      lagEntries: 10,
      lagMs: 3500,
      shippedEntries: 900,
      shippedBatches: 40,
      lastShippedAtMs: now - 5000,
      error: 'KV_ERR_UNAVAILABLE: connect ECONNREFUSED',
    },
  ],
  receiving: [{ from: 'eu', cursor: 88, lastAppliedAtMs: now - 2000, sourceCommitLsn: 90 }],
  conflicts: { recorded: 3, localLost: 1, remoteLost: 2, collected: 0 },
}

function side(region: string, value: string | null) {
  return {
    stamp: `1764790000123.0@${region}`,
    region,
    deleted: value === null,
    value,
    valueBase64: value === null ? null : Buffer.from(value).toString('base64'),
  }
}

const conflict: RegionConflict = {
  id: '00000000000000000042-0',
  key: 'cart/1',
  keyBase64: Buffer.from('cart/1').toString('base64'),
  detectedIn: 'us',
  lsn: 42,
  atMs: now,
  winner: side('eu', 'eu-pears'),
  loser: side('us', null),
}

describe('kv regions', () => {
  it('shows the region, its leader, shipping and receiving per region, and the conflicts', () => {
    const text = regionsText(view, { leaderId: 'n1', leaderUrl: 'https://127.0.0.1:7001', now })
    expect(text).toContain(
      'region us (leader n1 at https://127.0.0.1:7001); regions: us (n1), eu (n4)',
    )
    const lines = text.split('\n')
    const header = lines.findIndex((l) => l.includes('SHIPPING TO'))
    expect(lines[header]?.split(/\s{2,}/).filter(Boolean)).toEqual([
      'SHIPPING TO',
      'STATE',
      'CURSOR',
      'COMMIT LSN',
      'LAG ENTRIES',
      'LAG MS',
      'SHIPPED',
      'LAST SHIPPED',
      'ERROR',
    ])
    expect(lines[header + 1]?.split(/\s{2,}/).filter(Boolean)).toEqual([
      'eu',
      'failing',
      '120',
      '130',
      '10',
      '3500',
      '900',
      '5 s ago',
      'KV_ERR_UNAVAILABLE: connect ECONNREFUSED',
    ])
    expect(text).toMatch(
      /RECEIVING FROM\s+CURSOR\s+SOURCE COMMIT LSN\s+LAST APPLIED\n\s+eu\s+88\s+90\s+2 s ago/,
    )
    expect(text).toContain(
      'conflicts: 3 recorded (a write of us lost: 1; a write of another region lost: 2; old records collected: 0)',
    )
  })

  it('says that a follower does not know the shipping', () => {
    const text = regionsText({ ...view, leader: false, shipping: [] }, { now })
    expect(text).toContain('region us (no leader known)')
    expect(text).toContain("shipping: known on the region's leader only")
    expect(text).toContain('as this follower counted them')
  })

  it('adds the lag to and from each region to kv cluster, for a node in a region only', () => {
    const cluster = { regions: view } as RegionalClusterView
    expect(clusterRegionLines(cluster, now)).toBe(
      [
        'region us: conflicts recorded 3',
        '  to eu       failing    cursor        120  lag 10 entries, 3500 ms  (KV_ERR_UNAVAILABLE: connect ECONNREFUSED)',
        '  from eu     cursor         88  applied 2 s ago',
        '',
      ].join('\n'),
    )
    expect(clusterRegionLines({} as RegionalClusterView)).toBe('')
  })
})

describe('kv conflicts', () => {
  it('shows key, winner and loser (value, region, stamp) and where it was detected', () => {
    const text = conflictsText([
      conflict,
      { ...conflict, id: '00000000000000000043-0', winner: side('us', 'x'.repeat(40)) },
    ])
    const rows = text
      .trimEnd()
      .split('\n')
      .map((l) => l.trim().split(/\s{2,}/))
    expect(rows[0]).toEqual([
      'ID',
      'KEY',
      'WINNER',
      'REGION',
      'STAMP',
      'LOSER',
      'REGION',
      'STAMP',
      'DETECTED IN',
      'AT',
    ])
    expect(rows[1]).toEqual([
      '00000000000000000042-0',
      'cart/1',
      'eu-pears',
      'eu',
      '1764790000123.0@eu',
      '(deleted)',
      'us',
      '1764790000123.0@us',
      'us',
      new Date(now).toISOString(),
    ])
    // A long value is cut short (--json has it whole).
    expect(rows[2]?.[2]).toBe(`${'x'.repeat(23)}…`)
    expect(conflictsText([])).toBe('no conflicts recorded\n')
  })
})

async function kv(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  let out = ''
  let err = ''
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  stderr.on('data', (c: Buffer) => (err += c.toString()))
  const code = await runKv(['--url', 'http://127.0.0.1:9', ...args], {
    env: { KV_CREDENTIALS: '/nonexistent/credentials.json' },
    stdin: Object.assign(Readable.from([]), { isTTY: true }),
    stdout,
    stderr,
  })
  return { code, out, err }
}

describe('kv regions and kv conflicts usage', () => {
  it('refuses bad options with exit status 2, before any request', async () => {
    for (const [args, message] of [
      [['conflicts', '--limit', '0'], /--limit must be a whole number from 1 to 1000/],
      [['conflicts', '--limit', '1001'], /--limit must be/],
      [['conflicts', '--after', '42'], /--after must be a conflict id/],
      [['regions', '--limit', '5'], /regions takes no --limit/],
      [['regions', 'extra'], /regions takes no arguments/],
    ] as const) {
      const result = await kv([...args])
      expect(result.err, args.join(' ')).toMatch(message)
      expect(result.code).toBe(2)
    }
  })

  it('lists both commands in kv --help', async () => {
    const help = await kv(['--help'])
    expect(help.out).toMatch(/\n {2}regions {16,}this region/)
    expect(help.out).toMatch(/\n {2}conflicts {14,}the conflict record/)
  })
})
