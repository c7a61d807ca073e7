/**
 * `kv member` against a real single-leader cluster, as an operator runs it: grow a 3-member
 * cluster to 5 (two nodes started with --join, added as learners, promoted), list it, refuse
 * an early promotion (a learner whose node is not running: KV_ERR_LEARNER_BEHIND), shrink it
 * back to 3 (the leader's removal hands leadership over and the command follows it), refuse a
 * removal that would leave no live majority, and replace a killed member by a new one under a
 * new id. The data written before is on every
 * member at the end, the new ones included, and a removed member serves none of it.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import type { Membership } from '@kvstore/protocol'
import { rootEnv, rootTls } from './support/certs.js'
import { kvBin, kvClusterBin, TestCluster, until, type ClusterMember } from '@kvstore/testkit'
import { clusterPorts } from './support/ports.js'

let cluster: TestCluster

beforeAll(async () => {
  cluster = await TestCluster.start(3)
})
afterAll(async () => {
  await cluster?.stop()
})

/**
 * Runs the built `kv` as root against every member the test knows (or with `env`), within
 * 60 s.
 */
function kv(
  args: string[],
  env?: NodeJS.ProcessEnv,
): Promise<{ code: number; out: string; err: string }> {
  const urls = cluster.members.map((m) => m.url).join(',')
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [kvBin, ...args],
      {
        env: { PATH: process.env.PATH, ...(env ?? { ...rootEnv(), KV_ENDPOINTS: urls }) },
        timeout: 60_000,
      },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1
        resolve({ code, out: stdout, err: stderr })
      },
    )
  })
}

/** `kv args`, which must succeed; its standard output. */
async function ok(args: string[]): Promise<string> {
  const result = await kv(args)
  expect(result.code, `kv ${args.join(' ')}: ${result.err}`).toBe(0)
  return result.out
}

async function members(): Promise<Membership> {
  return JSON.parse(await ok(['--json', 'member', 'list'])) as Membership
}

function roles(view: Membership): Record<string, string> {
  return Object.fromEntries(view.members.map((m) => [m.id, m.role]))
}

function urlsOf(m: ClusterMember): string[] {
  return ['--client-url', m.url, '--peer-url', m.peerUrl]
}

it('grows a cluster to 5 members, shrinks it to 3 and replaces a dead member', async () => {
  const client = new KvClient({ url: cluster.leader.url, ...rootTls() })
  try {
    for (let i = 0; i < 50; i++) await client.put(`before/${i}`, `value ${i}`)
  } finally {
    await client.close()
  }

  // Grow: two nodes join (--join), are added as learners and promoted.
  const n4 = await cluster.startJoining('n4')
  const n5 = await cluster.startJoining('n5')
  const added = await ok(['member', 'add', 'n4', ...urlsOf(n4), '--promote', '--timeout', '30s'])
  expect(added).toMatch(/OK n4 is a voter/)
  const learner = await ok(['member', 'add', 'n5', ...urlsOf(n5)])
  expect(learner).toMatch(/OK added n5 as a learner/)
  expect(learner).toMatch(/n5\s+learner\s+https:/)
  expect(await ok(['cluster'])).toMatch(/n5\s+learner/)
  expect(await ok(['member', 'promote', 'n5', '--timeout', '30s'])).toMatch(/OK n5 is a voter/)
  // Promoting a voter again is a no-op, as a retry after a lost answer would be.
  expect(await ok(['member', 'promote', 'n5'])).toMatch(/OK n5 is a voter/)

  const five = await members()
  expect(roles(five)).toEqual({ n1: 'voter', n2: 'voter', n3: 'voter', n4: 'voter', n5: 'voter' })
  const table = await ok(['member', 'list'])
  expect(table).toMatch(/^5 members \(single-leader\)/)
  for (const id of ['n1', 'n2', 'n3', 'n4', 'n5'])
    expect(table).toMatch(new RegExp(`\\b${id}\\s+voter\\s+https://127\\.0\\.0\\.1:\\d+\\s+`))
  expect(table).toMatch(/ID\s+ROLE\s+CLIENT URL\s+LAG\s+CONNECTED/)

  // An early promotion: a learner whose node is not running is refused, with its lag.
  const n6 = await cluster.allocateMember('n6')
  expect(await ok(['member', 'add', 'n6', ...urlsOf(n6)])).toMatch(/as a learner/)
  const early = await kv(['member', 'promote', 'n6'])
  expect(early.code).toBe(1)
  expect(early.err).toMatch(/^kv: KV_ERR_LEARNER_BEHIND: .*connected=false/m)
  expect(roles(await members()).n6).toBe('learner')
  await ok(['member', 'remove', 'n6'])
  cluster.retired.add('n6')

  // Shrink: remove the leader (it hands leadership over; kv follows to the new leader), then
  // another member.
  const first = await cluster.waitForLeader()
  expect(await ok(['member', 'remove', first.id])).toMatch(new RegExp(`OK removed ${first.id}`))
  cluster.retired.add(first.id)
  // The removed node serves no data, once it knows.
  await until(
    `${first.id} refusing reads`,
    async () => {
      const res = await fetch(`${first.url}/v1/kv/before/1`)
      const text = await res.text()
      return !res.ok && text.includes('"KV_ERR_NOT_A_MEMBER"')
    },
    10_000,
    100,
  )
  await cluster.stopMember(first.id)
  const leader = await cluster.waitForLeader()
  expect(leader.id).not.toBe(first.id)
  const second = ['n4', 'n5'].find((id) => id !== leader.id) as string
  expect(await ok(['member', 'remove', second])).toMatch(new RegExp(`OK removed ${second}`))
  cluster.retired.add(second)
  await cluster.stopMember(second)
  const three = await members()
  expect(three.members).toHaveLength(3)
  expect(Object.values(roles(three))).toEqual(['voter', 'voter', 'voter'])
  expect(three.removed).toEqual(expect.arrayContaining(['n6', first.id, second]))

  // A member dies; a new one (a new id, an empty data directory) replaces it.
  const dead = cluster.followers[0] as ClusterMember
  await cluster.kill(dead.id)
  // With one voter of three dead, removing another live one would leave no live majority.
  const alive = cluster.followers.find((m) => m.id !== dead.id) as ClusterMember
  const refused = await kv(['member', 'remove', alive.id])
  expect(refused.code).toBe(1)
  expect(refused.err).toMatch(/^kv: KV_ERR_WOULD_LOSE_QUORUM: .*liveVoters=1 majority=2/m)
  const n7 = await cluster.startJoining('n7')
  const replace = ['member', 'replace', dead.id, '--id', 'n7', ...urlsOf(n7)]
  const replaced = await kv(replace)
  expect(replaced.code, replaced.err).toBe(0)
  expect(replaced.out).toMatch(new RegExp(`OK n7 replaced ${dead.id} and is a voter`))
  cluster.retired.add(dead.id)
  const after = await members()
  expect(after.members.map((m) => m.id).sort()).toEqual(
    [...cluster.active().map((m) => m.id)].sort(),
  )
  expect(roles(after).n7).toBe('voter')
  expect(after.removed).toContain(dead.id)
  expect(after.changeInProgress).toBe(false)

  // Every member left holds the data, the ones added since too.
  await ok(['put', 'after/replace', 'yes'])
  await cluster.waitForLeader()
  await cluster.waitForApplied()
  const digests = await Promise.all(cluster.active().map((m) => cluster.digest(m.id)))
  expect(new Set(digests.map((d) => d.digest)).size).toBe(1)
  expect(await ok(['get', 'before/7', '--url', n7.url])).toBe('value 7')
}, 90_000)

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

it('kv-cluster add-member grows a local cluster by a fourth member', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kv-cluster-add-'))
  const { client: clientPort, peer: peerPort } = await clusterPorts(4)
  const ports = ['--client-port', String(clientPort), '--peer-port', String(peerPort)]
  const local = foreground([kvClusterBin, '--data-dir', dir, ...ports])
  let add: ReturnType<typeof foreground> | null = null
  try {
    await until(
      'kv-cluster to start its cluster',
      () =>
        local.printed().includes('Ctrl-C stops every node cleanly') ||
        local.child.exitCode !== null,
      60_000,
      100,
    )
    expect(local.printed()).toMatch(/A 3-node single-leader cluster is running/)
    add = foreground([
      kvClusterBin,
      'add-member',
      '--data-dir',
      dir,
      '--promote',
      '--timeout',
      '30s',
    ])
    const output = add.printed
    await until(
      'add-member to add n4',
      () => output().includes('Ctrl-C stops n4') || add?.child.exitCode !== null,
      60_000,
      100,
    )
    expect(output()).toMatch(/made n4's certificate/)
    expect(output()).toMatch(
      new RegExp(`started n4 .* on https://127\\.0\\.0\\.1:${clientPort + 3} `),
    )
    expect(output()).toMatch(/n4 is a voter/)
    const certs = join(dir, 'certs')
    const listed = await kv(['--json', 'member', 'list'], {
      KV_URL: `https://127.0.0.1:${clientPort}`,
      KV_CACERT: join(certs, 'ca.crt'),
      KV_CERT: join(certs, 'root.crt'),
      KV_KEY: join(certs, 'root.key'),
      KV_CREDENTIALS: join(certs, 'no-such-credentials.json'),
    })
    expect(listed.code, listed.err).toBe(0)
    expect(roles(JSON.parse(listed.out) as Membership)).toEqual({
      n1: 'voter',
      n2: 'voter',
      n3: 'voter',
      n4: 'voter',
    })
  } finally {
    if (add !== null) await stopped(add.child)
    await stopped(local.child)
    await rm(dir, { recursive: true, force: true })
  }
}, 90_000)
