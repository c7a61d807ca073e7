/**
 * Regions as a user tries them: `kv-cluster --regions 2` (what `bash scripts/start.sh --regions
 * 2` runs once it has built) starts us and eu, three nodes each, with one CA, one regions file
 * and TLS and auth as shipped, and prints how to reach each region. Writes in both regions
 * converge in both; two writes of one key at once, one in each region, are both acknowledged,
 * one value wins in both regions and the other is in `kv conflicts`; `kv regions` and `kv
 * cluster` show the shipping and its lag.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { kvBin, kvClusterBin, until } from '@kvstore/testkit'
import { clusterPorts } from './support/ports.js'

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

let dir: string
let local: ReturnType<typeof foreground>
let us: string[]
let eu: string[]
let env: NodeJS.ProcessEnv
/** Root's client certificate and the deployment's own CA, for direct reads of each node. */
let agent: Agent

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-regions-cli-'))
  // Region k's members on P+10(k-1)..: 13 consecutive ports cover both regions.
  const ports = await clusterPorts(13)
  us = [0, 1, 2].map((i) => `https://127.0.0.1:${ports.client + i}`)
  eu = [0, 1, 2].map((i) => `https://127.0.0.1:${ports.client + 10 + i}`)
  local = foreground([
    kvClusterBin,
    '--regions',
    '2',
    '--data-dir',
    dir,
    '--client-port',
    String(ports.client),
    '--peer-port',
    String(ports.peer),
  ])
  await until(
    'kv-cluster to start both regions',
    () => local.printed().includes('Ctrl-C stops every node') || local.child.exitCode !== null,
    90_000,
    200,
  )
  const certs = join(dir, 'certs')
  env = {
    PATH: process.env.PATH,
    KV_CACERT: join(certs, 'ca.crt'),
    KV_CERT: join(certs, 'root.crt'),
    KV_KEY: join(certs, 'root.key'),
    KV_CREDENTIALS: join(certs, 'no-such-credentials.json'),
  }
  agent = new Agent({
    connect: {
      ca: readFileSync(join(certs, 'ca.crt')),
      cert: readFileSync(join(certs, 'root.crt')),
      key: readFileSync(join(certs, 'root.key')),
    },
  })
}, 120_000)

afterAll(async () => {
  await agent?.close()
  if (local !== undefined) await stopped(local.child)
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

function kv(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [kvBin, ...args], { env, timeout: 60_000 }, (error, out, err) => {
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

/** GET `path` of one node, as root: status and body text. */
async function get(url: string, path: string): Promise<{ status: number; text: string }> {
  const res = await request(`${url}${path}`, { dispatcher: agent })
  return { status: res.statusCode, text: await res.body.text() }
}

/** The value of `key` on every member of both regions (null: not there). */
async function everywhere(key: string): Promise<(string | null)[]> {
  return Promise.all(
    [...us, ...eu].map(async (url) => {
      const r = await get(url, `/v1/kv/${encodeURIComponent(key)}`)
      return r.status === 200 ? r.text : null
    }),
  )
}

it('starts two regions of three and says how to reach each and what to try', async () => {
  const printed = local.printed()
  expect(printed).toMatch(
    /2 regions of 3 single-leader nodes are running \(regions file .*regions\.json/,
  )
  expect(printed).toMatch(new RegExp(`\\n  us  to eu streaming[^\\n]*\\n    n1 .*${us[0]}`))
  expect(printed).toMatch(new RegExp(`\\n  eu  to us streaming[^\\n]*\\n    n4 .*${eu[0]}`))
  // curl does not follow NOT_LEADER hints: the example names us's leader, whichever it is.
  expect(printed).toMatch(
    new RegExp(`-X PUT --data-binary 'hello from us' (${us.join('|')})/v1/kv/greeting`),
  )
  expect(printed).toContain(`kv.js regions --url ${us[0]}`)
  expect(printed).toContain(`kv.js conflicts --url ${eu[0]}`)
  // One CA and one regions file for the deployment, naming each region's members.
  expect(existsSync(join(dir, 'certs', 'ca.crt'))).toBe(true)
  const file = JSON.parse(readFileSync(join(dir, 'regions.json'), 'utf8')) as {
    regions: { id: string; members: { id: string; url: string }[] }[]
  }
  expect(file.regions.map((r) => [r.id, r.members.map((m) => `${m.id} ${m.url}`)])).toEqual([
    ['us', us.map((u, i) => `n${i + 1} ${u}`)],
    ['eu', eu.map((u, i) => `n${i + 4} ${u}`)],
  ])
})

it('writes in both regions and both converge; concurrent writes leave one winner and a record', async () => {
  await ok(['put', 'greeting', 'hello from us', '--url', us[0] as string])
  await ok(['put', 'eu/greeting', 'hello from eu', '--url', eu[1] as string])
  await until(
    'both writes on all six nodes',
    async () =>
      (await everywhere('greeting')).every((v) => v === 'hello from us') &&
      (await everywhere('eu/greeting')).every((v) => v === 'hello from eu'),
    30_000,
    100,
  )

  // Two writes of one key, one per region, while neither region can reach the other: the
  // regions file names unreachable URLs and every node reads it again (SIGHUP). Both are
  // acknowledged; once the file is back, one wins everywhere and the other is recorded.
  const regionsFile = join(dir, 'regions.json')
  const original = readFileSync(regionsFile, 'utf8')
  const pids = [...local.printed().matchAll(/pid ([0-9]+)\)/g)].map((m) => Number(m[1]))
  expect(pids).toHaveLength(6)
  const reloadAll = () => pids.forEach((pid) => process.kill(pid, 'SIGHUP'))
  writeFileSync(
    regionsFile,
    original.replace(/https:\/\/127\.0\.0\.1:[0-9]+/g, 'https://127.0.0.1:1'),
  )
  reloadAll()
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const key = 'cart/1'
  try {
    const [a, b] = await Promise.all([
      kv(['put', key, 'us-apples', '--url', us[0] as string]),
      kv(['put', key, 'eu-pears', '--url', eu[0] as string]),
    ])
    expect([a.code, b.code]).toEqual([0, 0])
  } finally {
    writeFileSync(regionsFile, original)
    reloadAll()
  }
  await until(
    'cart/1 converges',
    async () => new Set(await everywhere(key)).size === 1,
    30_000,
    100,
  )
  let conflicts: { key: string; winner: { value: string }; loser: { value: string } }[] = []
  await until(
    'the conflict is recorded',
    async () => {
      const page = JSON.parse(
        await ok(['conflicts', '--all', '--json', '--url', eu[0] as string]),
      ) as { conflicts: typeof conflicts }
      conflicts = page.conflicts.filter((c) => c.key === key)
      return conflicts.length > 0
    },
    30_000,
    200,
  )
  expect(conflicts).toHaveLength(1)
  const recorded = conflicts[0] as (typeof conflicts)[number]
  const final = (await everywhere(recorded.key))[0]
  expect(recorded.winner.value).toBe(final)
  expect(recorded.loser.value).not.toBe(final)
  const table = await ok(['conflicts', '--url', eu[2] as string])
  expect(table).toMatch(/ID\s+KEY\s+WINNER\s+REGION\s+STAMP\s+LOSER\s+REGION\s+STAMP\s+DETECTED IN/)
  expect(table).toMatch(
    new RegExp(`${recorded.key}\\s+${recorded.winner.value}\\s+(us|eu)\\s+\\d+\\.\\d+@`),
  )

  // Both regions hold the same live keys, values and stamps.
  await until(
    'equal digests on all six nodes',
    async () => {
      const digests = await Promise.all(
        [...us, ...eu].map(async (url) => {
          const r = await get(url, '/admin/v1/regions/digest')
          return (JSON.parse(r.text) as { digest: string }).digest
        }),
      )
      return digests.every((d) => d === digests[0])
    },
    30_000,
    250,
  )
}, 180_000)

it('kv regions and kv cluster show the shipping, its cursors and lag', async () => {
  const text = await ok(['regions', '--url', us[1] as string])
  expect(text).toMatch(
    /^region us \(leader n\d at https:\/\/127\.0\.0\.1:\d+\); regions: us \(n1, n2, n3\), eu \(n4, n5, n6\)/,
  )
  expect(text).toMatch(/SHIPPING TO\s+STATE\s+CURSOR\s+COMMIT LSN\s+LAG ENTRIES\s+LAG MS/)
  expect(text).toMatch(/\n\s+eu\s+streaming\s+\d+\s+\d+\s+\d+\s+\d+/)
  expect(text).toMatch(/RECEIVING FROM\s+CURSOR[^\n]*\n\s+eu\s+\d+/)
  expect(text).toMatch(/conflicts: \d+ recorded/)
  const json = JSON.parse(await ok(['regions', '--json', '--url', eu[2] as string])) as {
    region: string
    leader: boolean
    shipping: { to: string; state: string }[]
  }
  // Asked of the region's leader, whichever member --url names.
  expect(json).toMatchObject({ region: 'eu', leader: true })
  expect(json.shipping.map((s) => s.to)).toEqual(['us'])
  const cluster = await ok(['cluster', '--url', eu[1] as string])
  expect(cluster).toMatch(
    /\nregion eu: conflicts recorded \d+\n\s+to us\s+\w+\s+cursor\s+\d+\s+lag \d+ entries, \d+ ms\n\s+from us\s+cursor\s+\d+/,
  )
})
