/**
 * The operator's side of sharding, as an operator runs it: `kv-cluster --groups 2` starts two
 * groups of three behind a kv-router; `kv shard map` shows the slots split between them; `kv
 * shard move --wait` moves slots 0-99 (and the keys in them) from g1 to g2, after which g2
 * serves those keys and g1 refuses them with KV_ERR_WRONG_SHARD; `kv shard status` shows the
 * finished move; `kv shard rebalance` plans the way back to even and runs it. Through the router
 * (when packages/router is built), the same keys read whichever group owns them.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { KvClient, KvError } from '@kvstore/client'
import { configSpec } from '@kvstore/node'
import { slotOfKey } from '@kvstore/protocol'
import { kvBin, kvClusterBin, until } from '@kvstore/testkit'
import { clusterPorts, freePorts } from './support/ports.js'

/** The node's sharding flags land with the node side of sharding (issue 17). */
const nodeHasShardFlags = configSpec.some((s) => s.flag === '--shard-map')
/** kv-cluster starts the router from here (KV_ROUTER_BIN, which it reads too, overrides it). */
const routerBuilt = existsSync(
  process.env.KV_ROUTER_BIN ??
    fileURLToPath(new URL('../packages/router/dist/main.js', import.meta.url)),
)

/** A command that stays in the foreground, with what it printed so far. */
function foreground(args: string[]): { child: ChildProcess; printed: () => string } {
  let printed = ''
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout?.on('data', (c: Buffer) => (printed += c.toString()))
  child.stderr?.on('data', (c: Buffer) => (printed += c.toString()))
  return { child, printed: () => printed }
}

async function stopped(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  await exited
}

/** `count` keys whose slots lie in `first`..`last`. */
function keysInSlots(first: number, last: number, count: number): string[] {
  const keys: string[] = []
  for (let i = 0; keys.length < count; i++) {
    const key = `k/${i}`
    const slot = slotOfKey(key)
    if (slot >= first && slot <= last) keys.push(key)
  }
  return keys
}

describe.runIf(nodeHasShardFlags)('kv shard against kv-cluster --groups 2', () => {
  let dir: string
  let local: ReturnType<typeof foreground>
  let clientPort: number
  let routerPort: number
  let env: NodeJS.ProcessEnv
  let shardMap: string
  const groupUrls = (k: number) =>
    [0, 1, 2].map((i) => `https://127.0.0.1:${clientPort + 10 * (k - 1) + i}`)

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kv-shard-cli-'))
    // Group k's members on P+10(k-1)..: 13 consecutive ports cover both groups.
    const ports = await clusterPorts(13)
    clientPort = ports.client
    routerPort = await freePorts(1)
    local = foreground([
      kvClusterBin,
      '--groups',
      '2',
      '--data-dir',
      dir,
      '--client-port',
      String(clientPort),
      '--peer-port',
      String(ports.peer),
      '--router-port',
      String(routerPort),
    ])
    await until(
      'kv-cluster to start both groups',
      () => local.printed().includes('Ctrl-C stops every process') || local.child.exitCode !== null,
      90_000,
      200,
    )
    expect(local.printed()).toMatch(/2 groups of 3 single-leader nodes are running/)
    const certs = join(dir, 'certs')
    shardMap = join(dir, 'shard-map.json')
    env = {
      PATH: process.env.PATH,
      KV_CACERT: join(certs, 'ca.crt'),
      KV_CERT: join(certs, 'root.crt'),
      KV_KEY: join(certs, 'root.key'),
      KV_CREDENTIALS: join(certs, 'no-such-credentials.json'),
    }
  }, 120_000)

  afterAll(async () => {
    if (local !== undefined) await stopped(local.child)
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  function kv(args: string[]): Promise<{ code: number; out: string; err: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, [kvBin, ...args], { env, timeout: 120_000 }, (error, out, err) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1
        resolve({ code, out, err })
      })
    })
  }

  async function ok(args: string[]): Promise<string> {
    const result = await kv(args)
    expect(result.code, `kv ${args.join(' ')}: ${result.err}`).toBe(0)
    return result.out
  }

  it('moves slots between the groups, and rebalances them', async () => {
    const tlsOf = () => ({
      ca: readFileSync(env.KV_CACERT as string),
      cert: readFileSync(env.KV_CERT as string),
      key: readFileSync(env.KV_KEY as string),
    })
    const g1 = new KvClient({ url: groupUrls(1), tls: tlsOf() })
    const g2 = new KvClient({ url: groupUrls(2), tls: tlsOf() })
    try {
      const moving = keysInSlots(0, 99, 20)
      for (const key of moving) await g1.put(key, `value of ${key}`)

      const map = await ok(['shard', 'map', '--shard-map', shardMap])
      expect(map).toMatch(/^shard map version 1: 4096 slots over 2 groups \(claims of g1, g2\)/)
      expect(map).toMatch(/\n\s+0-2047\s+g1\s+1\s+0\n\s+2048-4095\s+g2\s+1\s+0\n/)

      const moved = await kv([
        'shard',
        'move',
        '--slots',
        '0-99',
        '--to',
        'g2',
        '--wait',
        '--timeout',
        '60s',
        '--shard-map',
        shardMap,
      ])
      expect(moved.code, moved.err).toBe(0)
      expect(moved.out).toMatch(/^OK move \S+ done: slots 0-99 belong to g2 \(claim version 2\)/)

      const after = await ok(['--json', 'shard', 'map', '--shard-map', shardMap])
      const parsed = JSON.parse(after) as {
        version: number
        slots: { first: number; last: number; group: string; version: number }[]
        slotsPerGroup: Record<string, number>
      }
      expect(parsed.version).toBe(2)
      expect(parsed.slots[0]).toMatchObject({ first: 0, last: 99, group: 'g2', version: 2 })
      expect(parsed.slotsPerGroup).toEqual({ g1: 1948, g2: 2148 })

      // The keys moved with their slots: g2 serves them, g1 refuses them.
      for (const key of moving) {
        const got = await g2.get(key, { consistency: 'linearizable' })
        expect(got?.value.toString(), key).toBe(`value of ${key}`)
      }
      const refused = await g1.get(moving[0] as string).catch((err: unknown) => err)
      expect(refused).toBeInstanceOf(KvError)
      expect((refused as KvError).code).toBe('KV_ERR_WRONG_SHARD')
      expect((refused as KvError).details).toMatchObject({ group: 'g2' })

      const status = await ok(['shard', 'status', '--shard-map', shardMap])
      expect(status).toMatch(/^g1: 1948 slots, fenced none/m)
      expect(status).toMatch(/finished moves \(newest first\):\n\s+\S+\s+0-99 -> g2\s+done/)

      // Back to even: g2 gives its highest 100 slots to g1.
      const plan = await ok(['shard', 'rebalance', '--dry-run', '--shard-map', shardMap])
      expect(plan).toMatch(/1 move, 100 slots:\n\s+1\. 100 slots 3996-4095: g2 -> g1\n/)
      const rebalanced = await kv([
        'shard',
        'rebalance',
        '--wait',
        '--timeout',
        '60s',
        '--shard-map',
        shardMap,
      ])
      expect(rebalanced.code, rebalanced.err).toBe(0)
      expect(rebalanced.out).toMatch(/OK rebalanced: 1 move done/)
      const even = JSON.parse(await ok(['--json', 'shard', 'map', '--shard-map', shardMap])) as {
        slotsPerGroup: Record<string, number>
      }
      expect(even.slotsPerGroup).toEqual({ g1: 2048, g2: 2048 })

      // A move aborted at once rolls back (or, if it was quick, had finished already).
      await ok(['shard', 'move', '--slots', '200-299', '--to', 'g2', '--shard-map', shardMap])
      const aborted = await ok([
        'shard',
        'move',
        '--abort',
        '--group',
        'g1',
        '--shard-map',
        shardMap,
      ])
      expect(aborted).toMatch(
        /^OK move \S+ aborted: slots 200-299 stay with g1|could not be rolled back/,
      )
      const last = JSON.parse(await ok(['--json', 'shard', 'status', '--shard-map', shardMap])) as {
        groups: { group: string; move: unknown; history: { phase: string }[] }[]
      }
      const g1View = last.groups.find((g) => g.group === 'g1')
      expect(g1View?.move).toBeNull()
      expect(['aborted', 'done']).toContain(g1View?.history.at(-1)?.phase)
    } finally {
      await g1.close()
      await g2.close()
    }
  }, 240_000)

  it.runIf(routerBuilt)(
    'reads and writes every group through the router',
    async () => {
      const routerUrl = `https://127.0.0.1:${routerPort}`
      const keys = [...keysInSlots(0, 99, 3), ...keysInSlots(3000, 3100, 3)]
      for (const key of keys)
        await ok(['put', key, `through the router ${key}`, '--url', routerUrl])
      for (const key of keys)
        expect(await ok(['get', key, '--url', routerUrl])).toBe(`through the router ${key}`)
      const map = await ok(['shard', 'map', '--url', routerUrl])
      expect(map).toMatch(/4096 slots over 2 groups/)
    },
    120_000,
  )
})
