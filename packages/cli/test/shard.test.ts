/**
 * `kv shard` against small HTTP/2 servers standing in for the leaders of sharded groups (the
 * node's shard routes live in another package): each fake group owns slots, takes a move of
 * slots it owns (WRONG_SHARD otherwise, SHARD_MOVE_IN_PROGRESS while one runs), and advances
 * the move one phase each time its view is read, handing the slots to the target at `done`.
 * Covers the argument handling, the map and status output, a move followed to the end, the
 * refusals, abort, and a rebalance planned and run.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Http2Server, type Http2ServerResponse } from 'node:http2'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import {
  formatSlotRanges,
  mergeClaims,
  parseSlotRanges,
  slotCount,
  type GroupShardView,
  type MovePhase,
  type ShardMapFile,
  type ShardMove,
  type SlotClaim,
} from '@kvstore/protocol'
import { runKv } from '../src/kv-command.js'
import { planText } from '../src/shard-command.js'

interface FakeGroup {
  id: string
  url: string
  server: Http2Server
  /** Owner and version per slot, as this group knows it. */
  calls: string[]
  move: ShardMove | null
  history: ShardMove[]
  /** Answer to the next POST instead of the usual, when set. */
  refuse: { status: number; code: string } | null
  /** Phases the move still goes through, one per GET /v1/shards. */
  phases: MovePhase[]
  /** Keep a new move in its first phase (until aborted). */
  hold: boolean
}

const groups: FakeGroup[] = []
/** The true owner and version of each slot (the groups' claims are cut from it). */
let owner: { group: string; version: number }[] = []
let moveCount = 0
let dir: string

function group(id: string): FakeGroup {
  return groups.find((g) => g.id === id) as FakeGroup
}

function directory() {
  return groups.map((g) => ({ id: g.id, members: [{ id: `${g.id}n1`, url: g.url }] }))
}

function claimsOf(id: string | null): SlotClaim[] {
  const out: SlotClaim[] = []
  owner.forEach((o, s) => {
    if (id === null || o.group === id)
      out.push({ first: s, last: s, group: o.group, version: o.version, sinceLsn: 0 })
  })
  return mergeClaims(out)
}

function view(g: FakeGroup): GroupShardView {
  // The move goes one phase further each time the group is asked.
  if (g.move !== null) {
    const next = g.phases.shift()
    if (next !== undefined) {
      g.move = { ...g.move, phase: next, updatedAtMs: Date.now() }
      if (next === 'done') {
        const version = Math.max(...owner.map((o) => o.version)) + 1
        for (const r of g.move.slots)
          for (let s = r.first; s <= r.last; s++) owner[s] = { group: g.move.target, version }
        g.move = { ...g.move, version }
      }
      if (next === 'done' || next === 'aborted') {
        g.history.push(g.move)
        g.move = null
      }
    }
  }
  const slots = claimsOf(null)
  return {
    group: g.id,
    appliedLsn: 42,
    claims: claimsOf(g.id),
    fenced: g.move?.phase === 'fenced' ? formatSlotRanges(g.move.slots) : '',
    map: {
      version: Math.max(...slots.map((c) => c.version)),
      slotCount,
      groups: directory(),
      slots,
    },
    move: g.move,
    history: g.history,
    imports: [],
  }
}

function send(res: Http2ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

function fail(res: Http2ServerResponse, status: number, code: string, extra = {}) {
  send(res, status, { error: { code, message: `${code} (fake)`, ...extra } })
}

async function startGroup(id: string): Promise<void> {
  const g: FakeGroup = {
    id,
    url: '',
    server: null as unknown as Http2Server,
    calls: [],
    move: null,
    history: [],
    refuse: null,
    phases: [],
    hold: false,
  }
  g.server = createServer((req, res) => {
    void (async () => {
      let text = ''
      for await (const chunk of req) text += String(chunk)
      if (req.url === '/v1/shards') return send(res, 200, view(g))
      if (req.method !== 'POST') return fail(res, 404, 'KV_ERR_ROUTE_NOT_FOUND')
      g.calls.push(`${req.method} ${req.url} ${text}`)
      if (g.refuse !== null) return fail(res, g.refuse.status, g.refuse.code)
      if (req.url === '/admin/v1/shards/moves/abort') {
        if (g.move === null) return fail(res, 400, 'KV_ERR_INVALID_ARGUMENT')
        g.move = { ...g.move, phase: 'aborted', error: 'aborted by an operator' }
        g.history.push(g.move)
        const ended = g.move
        g.move = null
        return send(res, 200, { move: ended })
      }
      if (req.url !== '/admin/v1/shards/moves') return fail(res, 404, 'KV_ERR_ROUTE_NOT_FOUND')
      const body = JSON.parse(text) as { slots: string; to: string }
      const ranges = parseSlotRanges(body.slots)
      for (const r of ranges)
        for (let s = r.first; s <= r.last; s++) {
          const o = owner[s] as { group: string }
          if (o.group !== g.id)
            return fail(res, 421, 'KV_ERR_WRONG_SHARD', {
              slot: s,
              group: o.group,
              endpoints: [group(o.group).url],
              mapVersion: 1,
            })
        }
      if (g.move !== null) return fail(res, 409, 'KV_ERR_SHARD_MOVE_IN_PROGRESS')
      const now = Date.now()
      g.move = {
        id: `m${++moveCount}`,
        slots: ranges,
        target: body.to,
        phase: 'copying',
        fenceLsn: 0,
        version: 0,
        startedAtMs: now,
        updatedAtMs: now,
        targetLsn: 0,
        error: '',
      }
      g.phases = g.hold ? [] : ['copying', 'fenced', 'switching', 'done']
      return send(res, 202, { move: g.move })
    })()
  })
  await new Promise<void>((resolve) => g.server.listen(0, '127.0.0.1', resolve))
  g.url = `http://127.0.0.1:${(g.server.address() as AddressInfo).port}`
  groups.push(g)
}

/** Slots per group at the start: `{ g1: '0-2047', g2: '2048-4095', g3: '' }`. */
function reset(slots: Record<string, string>): void {
  owner = new Array(slotCount)
  for (const [id, text] of Object.entries(slots))
    for (const r of parseSlotRanges(text))
      for (let s = r.first; s <= r.last; s++) owner[s] = { group: id, version: 1 }
  for (const g of groups) {
    g.calls = []
    g.move = null
    g.history = []
    g.refuse = null
    g.phases = []
    g.hold = false
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-shard-'))
  for (const id of ['g1', 'g2', 'g3']) await startGroup(id)
})
afterAll(async () => {
  for (const g of groups) await new Promise((resolve) => g.server.close(resolve))
  await rm(dir, { recursive: true, force: true })
})
beforeEach(() => reset({ g1: '0-2047', g2: '2048-4095', g3: '' }))

async function kv(
  args: string[],
  options: { url?: string | null } = {},
): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  let out = ''
  let err = ''
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  stderr.on('data', (c: Buffer) => (err += c.toString()))
  const url = options.url === undefined ? group('g2').url : options.url
  const code = await runKv([...(url === null ? [] : ['--url', url]), ...args], {
    env: { KV_CREDENTIALS: join(dir, 'none.json') },
    stdin: Object.assign(Readable.from([]), { isTTY: true }),
    stdout,
    stderr,
  })
  return { code, out, err }
}

describe('kv shard arguments', () => {
  it('refuses bad usage with exit status 2 and the shard usage', async () => {
    const cases: [string[], RegExp][] = [
      [['shard'], /shard needs map, status, move or rebalance/],
      [['shard', 'split'], /unknown shard command "split"/],
      [['shard', 'map', 'extra'], /takes no arguments/],
      [['shard', 'map', '--to', 'g1'], /shard map takes no --to/],
      [['shard', 'move', '--slots', '0-99'], /needs --slots A-B and --to GROUP/],
      [['shard', 'move', '--slots', '5000', '--to', 'g2'], /--slots: slot 5000 is out of range/],
      [['shard', 'move', '--slots', '9-3', '--to', 'g2'], /ends before it starts/],
      [
        ['shard', 'move', '--slots', '0-9', '--to', 'g2', '--timeout', '1m'],
        /--timeout goes with --wait/,
      ],
      [
        ['shard', 'move', '--slots', '0-9', '--to', 'g2', '--wait', '--timeout', 'soon'],
        /--timeout must be a duration/,
      ],
      [['shard', 'move', '--abort', '--slots', '0-9'], /--abort takes only --group/],
      [
        ['shard', 'move', '--slots', '0-9', '--to', 'g2', '--group', 'g1'],
        /--group goes with shard move --abort/,
      ],
      [['shard', 'rebalance', '--max-slots', '0'], /--max-slots must be a positive whole number/],
      [['shard', 'rebalance', '--dry-run', '--timeout', '1m'], /not --dry-run/],
      [['shard', 'status', '--slots', '1'], /shard status takes no --slots/],
    ]
    for (const [args, message] of cases) {
      const result = await kv(args)
      expect(result.code, args.join(' ')).toBe(2)
      expect(result.err, args.join(' ')).toMatch(message)
      expect(result.err).toMatch(/Shards \(a sharded deployment/)
    }
    // Nothing was sent to any group.
    expect(groups.flatMap((g) => g.calls)).toEqual([])
  })

  it('refuses a shard map file that is missing or wrong', async () => {
    const bad = join(dir, 'bad.json')
    await writeFile(bad, JSON.stringify({ groups: [{ id: 'g1', members: [], slots: '0-4095' }] }))
    const wrong = await kv(['shard', 'map', '--shard-map', bad])
    expect(wrong.code).toBe(2)
    expect(wrong.err).toMatch(/is not a valid shard map: group g1 has no members/)
    const missing = await kv(['shard', 'map', '--shard-map', join(dir, 'nope.json')])
    expect(missing.code).toBe(2)
    expect(missing.err).toMatch(/cannot read the shard map/)
  })
})

describe('kv shard map and status', () => {
  it('prints the merged map as a table and as JSON', async () => {
    const text = await kv(['shard', 'map'])
    expect(text.code, text.err).toBe(0)
    expect(text.out).toMatch(
      /^shard map version 1: 4096 slots over 3 groups \(claims of g1, g2, g3\)/,
    )
    expect(text.out).toMatch(
      /SLOTS\s+GROUP\s+VERSION\s+SINCE LSN\n\s+0-2047\s+g1\s+1\s+0\n\s+2048-4095\s+g2\s+1\s+0\n/,
    )
    expect(text.out).toMatch(/g1\s+2048\s+50\.0%\s+g1n1 http:/)
    expect(text.out).toMatch(/g3\s+0\s+0\.0%/)
    const json = JSON.parse((await kv(['--json', 'shard', 'map'])).out) as {
      version: number
      slots: SlotClaim[]
      slotsPerGroup: Record<string, number>
      unreachable: unknown[]
    }
    expect(json.slotsPerGroup).toEqual({ g1: 2048, g2: 2048, g3: 0 })
    expect(json.slots.map((c) => c.group)).toEqual(['g1', 'g2'])
    expect(json.unreachable).toEqual([])
  })

  it('finds every group from a shard map file, without --url', async () => {
    const file: ShardMapFile = {
      groups: directory().map((g) => ({
        ...g,
        slots: g.id === 'g1' ? '0-2047' : g.id === 'g2' ? '2048-4095' : '',
      })),
    }
    const path = join(dir, 'map.json')
    await writeFile(path, JSON.stringify(file))
    const result = await kv(['shard', 'map', '--shard-map', path], { url: null })
    expect(result.code, result.err).toBe(0)
    expect(result.out).toMatch(/claims of g1, g2, g3/)
  })

  it('says which group did not answer, and exits 1', async () => {
    const file: ShardMapFile = {
      groups: [
        ...directory().map((g) => ({
          ...g,
          slots: g.id === 'g1' ? '0-2047' : g.id === 'g2' ? '2048-4095' : '',
        })),
        { id: 'g4', members: [{ id: 'g4n1', url: 'http://127.0.0.1:1' }], slots: '' },
      ],
    }
    const path = join(dir, 'map4.json')
    await writeFile(path, JSON.stringify(file))
    const result = await kv(['shard', 'status', '--shard-map', path])
    expect(result.code).toBe(1)
    expect(result.err).toMatch(/no member of group g4 answered \(KV_ERR_UNAVAILABLE\)/)
    expect(result.out).toMatch(
      /^g1: 2048 slots, fenced none, applied LSN 42\n {2}move out: none\n/m,
    )
    expect(result.out).toMatch(/g4: UNREACHABLE/)
  })
})

describe('kv shard through a kv-router whose groups are out of reach', () => {
  let router: Http2Server
  let routerUrl: string
  const routerCalls: string[] = []

  beforeAll(async () => {
    router = createServer((req, res) => {
      void (async () => {
        let text = ''
        for await (const chunk of req) text += String(chunk)
        if (req.url === '/v1/shards') {
          const slots = claimsOf(null)
          return send(res, 200, {
            version: 1,
            slotCount,
            // Members named by addresses this machine cannot reach (inside a compose network).
            groups: groups.map((g) => ({
              id: g.id,
              members: [{ id: `${g.id}n1`, url: 'http://127.0.0.1:1' }],
            })),
            slots,
            router: 'r1',
          })
        }
        routerCalls.push(`${req.method} ${req.url} ${text}`)
        return send(res, 202, {
          move: { id: 'm99', slots: parseSlotRanges('0-9'), target: 'g3', phase: 'copying' },
        })
      })()
    })
    await new Promise<void>((resolve) => router.listen(0, '127.0.0.1', resolve))
    routerUrl = `http://127.0.0.1:${(router.address() as AddressInfo).port}`
  })
  afterAll(async () => {
    await new Promise((resolve) => router.close(resolve))
  })

  it("shows the router's map, says status needs a member, and sends moves to the router", async () => {
    const map = await kv(['shard', 'map'], { url: routerUrl })
    expect(map.code, map.err).toBe(0)
    expect(map.out).toMatch(/as kv-router r1 routes by; no group answered directly/)
    expect(map.err).toMatch(/note: no group's member could be reached from here \(g1, g2, g3\)/)
    const status = await kv(['shard', 'status'], { url: routerUrl })
    expect(status.code).toBe(1)
    expect(status.err).toMatch(/KV_ERR_UNAVAILABLE: kv-router r1 answered, but no member/)
    const moved = await kv(['shard', 'move', '--slots', '0-9', '--to', 'g3'], { url: routerUrl })
    expect(moved.code, moved.err).toBe(0)
    expect(moved.out).toMatch(/OK move m99 started: slots 0-9 from g1 to g3/)
    expect(routerCalls).toEqual(['POST /admin/v1/shards/moves {"slots":"0-9","to":"g3"}'])
    const abort = await kv(['shard', 'move', '--abort'], { url: routerUrl })
    expect(abort.code).toBe(2)
    expect(abort.err).toMatch(/name its source group with --group/)
  })
})

describe('kv shard move', () => {
  it('moves slots to a group and follows the move to the end with --wait', async () => {
    // Sent to g2's member: the move goes to g1, which owns the slots.
    const result = await kv(['shard', 'move', '--slots', '0-99', '--to', 'g3', '--wait'])
    expect(result.code, result.err).toBe(0)
    expect(result.out).toMatch(/^OK move m\d+ done: slots 0-99 belong to g3 \(claim version 2\)\n$/)
    expect(result.err).toMatch(/slots 0-99 from g1 to g3\n/)
    expect(result.err).toMatch(/: fenced \(/)
    expect(group('g1').calls).toEqual(['POST /admin/v1/shards/moves {"slots":"0-99","to":"g3"}'])
    expect(group('g2').calls).toEqual([])
    const map = await kv(['shard', 'map'])
    expect(map.out).toMatch(/\n\s+0-99\s+g3\s+2\s+0\n\s+100-2047\s+g1\s+1\s+0\n/)
    const status = await kv(['shard', 'status'])
    expect(status.out).toMatch(
      /g1: 1948 slots[\s\S]*finished moves \(newest first\):\n\s+m\d+\s+0-99 -> g3\s+done\s+ended/,
    )
  })

  it('starts a move without waiting, and prints JSON', async () => {
    const result = await kv(['--json', 'shard', 'move', '--slots', '3000', '--to', 'g1'])
    expect(result.code, result.err).toBe(0)
    const started = JSON.parse(result.out) as { move: ShardMove; group: string }
    expect(started.group).toBe('g2')
    expect(started.move).toMatchObject({ target: 'g1', phase: 'copying' })
    expect(formatSlotRanges(started.move.slots)).toBe('3000')
  })

  it('refuses slots of several groups, slots the target owns, and an unknown group', async () => {
    const split = await kv(['shard', 'move', '--slots', '2000-2100', '--to', 'g3'])
    expect(split.code).toBe(1)
    expect(split.err).toMatch(
      /slots 2000-2100 belong to several groups \(g1: 2000-2047; g2: 2048-2100\)/,
    )
    const own = await kv(['shard', 'move', '--slots', '0-9', '--to', 'g1'])
    expect(own.code).toBe(1)
    expect(own.err).toMatch(/KV_ERR_INVALID_ARGUMENT: slots 0-9 already belong to g1/)
    const unknown = await kv(['shard', 'move', '--slots', '0-9', '--to', 'g9'])
    expect(unknown.code).toBe(1)
    expect(unknown.err).toMatch(/group g9 is not in the shard map \(groups: g1, g2, g3\)/)
    expect(groups.flatMap((g) => g.calls)).toEqual([])
  })

  it("reports the group's refusal with its code", async () => {
    group('g1').refuse = { status: 409, code: 'KV_ERR_SHARD_MOVE_IN_PROGRESS' }
    const result = await kv(['shard', 'move', '--slots', '0-9', '--to', 'g2'])
    expect(result.code).toBe(1)
    expect(result.err).toMatch(/^kv: KV_ERR_SHARD_MOVE_IN_PROGRESS: /)
  })

  it('exits 1 when the move it waits for is aborted', async () => {
    group('g1').hold = true
    const waiting = kv(['shard', 'move', '--slots', '0-9', '--to', 'g2', '--wait'])
    for (let i = 0; i < 500 && group('g1').move === null; i++)
      await new Promise((resolve) => setTimeout(resolve, 10))
    const aborted = await kv(['shard', 'move', '--abort'])
    expect(aborted.code, aborted.err).toBe(0)
    expect(aborted.out).toMatch(/^OK move m\d+ aborted: slots 0-9 stay with g1\n$/)
    const result = await waiting
    expect(result.code).toBe(1)
    expect(result.err).toMatch(
      /move m\d+ was aborted \(aborted by an operator\): slots 0-9 stay with g1/,
    )
  })

  it('abort says when no move is in flight', async () => {
    const result = await kv(['shard', 'move', '--abort'])
    expect(result.code).toBe(1)
    expect(result.err).toMatch(/no group has a move in flight/)
  })
})

describe('kv shard rebalance', () => {
  it('plans with --dry-run and moves nothing', async () => {
    const result = await kv(['shard', 'rebalance', '--dry-run'])
    expect(result.code, result.err).toBe(0)
    expect(result.out).toMatch(
      /GROUP\s+NOW\s+AFTER\n\s+g1\s+2048\s+1366\n\s+g2\s+2048\s+1365\n\s+g3\s+0\s+1365\n/,
    )
    expect(result.out).toMatch(
      /2 moves, 1365 slots:\n\s+1\. 682 slots 1366-2047: g1 -> g3\n\s+2\. 683 slots 3413-4095: g2 -> g3\n/,
    )
    expect(groups.flatMap((g) => g.calls)).toEqual([])
    const json = JSON.parse((await kv(['--json', 'shard', 'rebalance', '--dry-run'])).out) as {
      moves: unknown[]
    }
    expect(json.moves).toHaveLength(2)
  })

  it('runs the moves one after another, each from its source group', async () => {
    const result = await kv(['shard', 'rebalance', '--wait'])
    expect(result.code, result.err).toBe(0)
    expect(group('g1').calls).toEqual([
      'POST /admin/v1/shards/moves {"slots":"1366-2047","to":"g3"}',
    ])
    expect(group('g2').calls).toEqual([
      'POST /admin/v1/shards/moves {"slots":"3413-4095","to":"g3"}',
    ])
    expect(result.out).toMatch(/OK rebalanced: 2 moves done/)
    const again = await kv(['shard', 'rebalance', '--dry-run'])
    expect(again.out).toMatch(/the slots are spread evenly: nothing to move/)
  })

  it('refuses to start while a move is in flight', async () => {
    group('g1').hold = true
    const first = await kv(['shard', 'move', '--slots', '0-9', '--to', 'g3'])
    expect(first.code).toBe(0)
    const result = await kv(['shard', 'rebalance'])
    expect(result.code).toBe(1)
    expect(result.err).toMatch(/KV_ERR_SHARD_MOVE_IN_PROGRESS: a move is in flight \(g1: m\d+\)/)
  })

  it('prints a plan for an even map', () => {
    expect(
      planText({ targets: { g1: 2048, g2: 2048 }, current: { g1: 2048, g2: 2048 }, moves: [] }),
    ).toMatch(/nothing to move/)
  })
})
