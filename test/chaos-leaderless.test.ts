/**
 * Chaos runs of the leaderless mode: 5 nodes with N=3, the ll-set workload (distinct keys
 * written at W, read back once at R right after healing), then the replicas must converge
 * (every member of each replica set reports the same Merkle root) within 60 s, with
 * anti-entropy every second.
 *
 * The process backend kills and pauses local kv-node processes and changes the ring
 * (member-churn: a new member joins and an old one leaves, or a killed one is replaced); the
 * docker backend adds partitions. The docker tests need a Docker engine and the node image (scripts/test.sh and
 * CI run scripts/docker-build.sh first); without them they fail, naming the missing piece.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { runChaos, type ChaosOptions } from '@kvstore/chaos'
import { testCertsDir } from './support/certs.js'
import { useTempDir } from './support/temp.js'

const out = useTempDir('kv-chaos-ll-test-')

function run(options: Partial<ChaosOptions> & Pick<ChaosOptions, 'backend' | 'nemeses'>) {
  return runChaos({
    mode: 'leaderless',
    workload: 'll-set',
    ack: 'quorum',
    replicas: 3,
    w: 'quorum',
    r: 'quorum',
    durationMs: 25_000,
    seed: 1,
    nodes: 5,
    clients: 6,
    out: out(),
    // The test run's certificates: the same root credentials as every other process test.
    certsDir: testCertsDir(),
    healthyMs: 2500,
    faultMs: 3500,
    log: () => {},
    ...options,
  })
}

type Result = Awaited<ReturnType<typeof run>>

const verdictOf = (result: Result, checker: string) =>
  result.summary.verdicts.find((v) => v.checker === checker)

/** Every verdict valid, acknowledged adds really happened and really were read back. */
async function expectSafe(result: Result): Promise<void> {
  const { summary } = result
  expect(result.windows.length).toBeGreaterThan(0)
  for (const v of summary.verdicts)
    expect([v.checker, v.valid, v.summary]).toEqual([v.checker, true, v.summary])
  expect(summary.verdicts.map((v) => v.checker).sort()).toEqual([
    'lost-writes',
    'recovery',
    'replica-convergence',
  ])
  const counts = (
    verdictOf(result, 'lost-writes')?.details as { counts: { ok: number; present: number } }
  ).counts
  expect(counts.ok).toBeGreaterThan(100)
  expect(counts.present).toBeGreaterThanOrEqual(counts.ok)
  const convergence = verdictOf(result, 'replica-convergence')?.details as { replicaSets: number }
  expect(convergence.replicaSets).toBeGreaterThan(0)
  const html = await readFile(join(result.dir, 'report.html'), 'utf8')
  expect(html).toContain('<svg')
}

describe('leaderless chaos (ll-set, W=R=quorum, N=3 of 5 nodes)', () => {
  it('process backend, kill and pause: nothing acknowledged is lost, the replicas converge', async () => {
    const result = await run({ backend: 'process', nemeses: ['kill', 'pause'], seed: 11 })
    await expectSafe(result)
    expect(result.windows.some((w) => w.nemesis === 'kill')).toBe(true)
  }, 240_000)

  it('docker backend, kill and an isolated node: nothing acknowledged is lost, the replicas converge', async () => {
    const result = await run({ backend: 'docker', nemeses: ['kill', 'partition-one'], seed: 12 })
    await expectSafe(result)
    expect(result.windows.some((w) => w.nemesis === 'partition-one')).toBe(true)
  }, 240_000)

  it('process backend, ring changes (join then leave, kill -9 and replace) and kill: nothing acknowledged is lost, the final ring converges', async () => {
    // Seed 23: a kill -9 and replacement, then a join and a leave, then a kill (of the newest).
    const result = await run({ backend: 'process', nemeses: ['member-churn', 'kill'], seed: 23 })
    await expectSafe(result)
    const changes = result.windows.filter((w) => w.nemesis === 'member-churn')
    for (const w of changes) expect(w.description).not.toContain('INCOMPLETE')
    expect(changes.map((w) => w.description).join('; ')).toMatch(/replace n\d by n\d.*stop n\d/)
    expect(changes.map((w) => w.description).join('; ')).toMatch(/add n\d.*remove n\d.*stop n\d/)
    // The recovery check saw every node hold one ring with the new members in it.
    expect(verdictOf(result, 'recovery')?.summary).toMatch(/holds the same ring \(v([2-9]|\d\d)/)
  }, 240_000)

  it('refuses nemeses aimed at a leader, and workloads that need one', async () => {
    await expect(run({ backend: 'process', nemeses: ['pause-leader'] })).rejects.toThrow(
      /pause-leader aims at the leader, and a leaderless cluster has none/,
    )
    await expect(
      run({ backend: 'process', nemeses: ['kill'], workload: 'register' }),
    ).rejects.toThrow(/the register workload needs a leader/)
    await expect(run({ backend: 'process', nemeses: ['member-split'] })).rejects.toThrow(
      /member-split promotes learners of a single-leader cluster/,
    )
  })
})

describe('the teeth: quorums that do not overlap let acknowledged writes go unread', () => {
  // Anti-entropy every 10 minutes: nothing but the quorums, hints and read repair can bring
  // an isolated node's writes to the rest within the run.
  const isolated: Pick<
    ChaosOptions,
    'backend' | 'nemeses' | 'durationMs' | 'seed' | 'antiEntropyIntervalMs'
  > = {
    backend: 'docker',
    nemeses: ['partition-one'],
    durationMs: 20_000,
    seed: 21,
    antiEntropyIntervalMs: 600_000,
  }

  it('W=1, R=1 with a node isolated: the final read misses acknowledged adds, and the checker says so', async () => {
    const result = await run({ ...isolated, w: '1', r: '1' })
    expect(result.windows.length).toBeGreaterThan(0)
    const lost = verdictOf(result, 'lost-writes')
    expect(lost?.valid).toBe(false)
    expect((lost?.details as { counts: { lost: number } }).counts.lost).toBeGreaterThan(0)
    expect(lost?.summary).toContain('W + R <= N')
    expect(result.summary.valid).toBe(false)
  }, 240_000)

  it('the same run at W=R=quorum loses nothing', async () => {
    await expectSafe(await run({ ...isolated, w: 'quorum', r: 'quorum' }))
  }, 240_000)
})

describe('leaderless chaos, ll-register: a read after an acknowledged write sees it (R + W > N)', () => {
  const register = { backend: 'process', workload: 'll-register', durationMs: 20_000 } as const

  it("process backend, kill and pause at W=R=quorum: every read sees its process's last write", async () => {
    const result = await run({ ...register, nemeses: ['kill', 'pause'], seed: 31 })
    expect(result.windows.length).toBeGreaterThan(0)
    for (const v of result.summary.verdicts)
      expect([v.checker, v.valid, v.summary]).toEqual([v.checker, true, v.summary])
    const sessions = verdictOf(result, 'sessions')?.details as {
      counts: { readsChecked: number; writes: number }
    }
    expect(sessions.counts.readsChecked).toBeGreaterThan(500)
    expect(sessions.counts.writes).toBeGreaterThan(500)
  }, 240_000)

  it('the teeth: at W=1, R=1 reads through another node miss acknowledged writes, and the checker says so', async () => {
    const result = await run({ ...register, nemeses: ['kill'], w: '1', r: '1', seed: 32 })
    const sessions = verdictOf(result, 'sessions')
    expect(sessions?.valid).toBe(false)
    expect(
      (sessions?.details as { counts: { readYourWrites: number } }).counts.readYourWrites,
    ).toBeGreaterThan(0)
    expect(sessions?.summary).toContain('W + R <= N')
  }, 240_000)
})
