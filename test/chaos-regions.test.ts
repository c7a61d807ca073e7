/**
 * Chaos runs in regions mode (process backend): two regions of three kv-node processes (n1..n3
 * are us, n4..n6 eu), each a single-leader cluster started with `--region` and its own
 * `--regions` file, in which the other region's members are TCP proxies that the
 * partition-regions nemesis cuts (refusing or black-holing every connection) and heals.
 * Writers in both regions write four shared keys with ack=quorum to their own region, and one
 * queued session per region writes keys of its own with ack=queued on a follower. After
 * healing, every ticket must end, all six nodes must report the same region digest, every
 * acknowledged write must be accounted for (final, overwritten by a write that saw it, or the
 * recorded loser of a named concurrent winner), and every queued key must hold its session's
 * last applied write at that ticket's LSN.
 *
 * The teeth: nodes that resolve conflicts without recording the losers must fail the
 * conflict accounting; nodes whose outbox forwards every queued write twice must fail the
 * queued-tickets check.
 */
import { runChaos, type ChaosOptions } from '@kvstore/chaos'
import { testCertsDir } from './support/certs.js'
import { useTempDir } from './support/temp.js'

const out = useTempDir('kv-chaos-regions-test-')

function run(options: Partial<ChaosOptions> & Pick<ChaosOptions, 'nemeses'>) {
  return runChaos({
    backend: 'process',
    regions: 2,
    workload: 'regions',
    ack: 'quorum',
    durationMs: 30_000,
    seed: 1,
    nodes: 3,
    clients: 3,
    writersPerRegion: 3,
    queuedPerRegion: 1,
    out: out(),
    // The test run's certificates: the same root credentials as every other process test.
    certsDir: testCertsDir(),
    healthyMs: 2500,
    faultMs: 3500,
    settleTimeoutMs: 30_000,
    log: () => {},
    ...options,
  })
}

type Result = Awaited<ReturnType<typeof run>>

const verdictOf = (result: Result, checker: string) =>
  result.summary.verdicts.find((v) => v.checker === checker)

const checkers = ['recovery', 'region-convergence', 'conflict-accounting', 'queued-tickets']

describe('regions mode: two regions take writes while the link between them is cut and their leaders fail', () => {
  it('partition-regions, kill-leader and pause-leader: converged, every write accounted for, every ticket ended', async () => {
    const result = await run({
      nemeses: ['partition-regions', 'kill-leader', 'pause-leader'],
      seed: 181,
    })
    const { summary } = result
    for (const v of summary.verdicts)
      expect([v.checker, v.valid, v.summary]).toEqual([v.checker, true, v.summary])
    expect(summary.verdicts.map((v) => v.checker)).toEqual(checkers)
    // The link was cut, and a leader was hit.
    expect(result.windows.some((w) => w.nemesis === 'partition-regions')).toBe(true)
    expect(
      result.windows.some((w) => w.nemesis === 'kill-leader' || w.nemesis === 'pause-leader'),
    ).toBe(true)
    // Both regions wrote the shared keys concurrently: some writes lost a recorded conflict.
    const accounting = verdictOf(result, 'conflict-accounting')?.details as {
      writes: { ok: number }
      counts: Record<string, number>
    }
    expect(accounting.writes.ok).toBeGreaterThan(300)
    expect(accounting.counts['conflict-loser']).toBeGreaterThan(0)
    expect(accounting.counts.lost).toBe(0)
    // Queued writes were accepted and applied.
    const queued = verdictOf(result, 'queued-tickets')?.details as {
      status: { applied: number; pending: number }
      keysChecked: number
    }
    expect(queued.status.applied).toBeGreaterThan(20)
    expect(queued.status.pending).toBe(0)
    expect(queued.keysChecked).toBeGreaterThan(0)
  }, 240_000)
})

describe('the teeth: a conflict loser without a record, and a queued write applied twice, are caught', () => {
  it('nodes that never record conflict losers (--unsafe-region-skip-conflict-record) fail the conflict accounting', async () => {
    // Every write a region made while the link was cut, and that lost to the other region's
    // at heal, disappears without a record: not final, seen by no one, in no record.
    const result = await run({
      nemeses: ['partition-regions'],
      seed: 182,
      durationMs: 20_000,
      nodeArgs: ['--unsafe-region-skip-conflict-record'],
    })
    const accounting = verdictOf(result, 'conflict-accounting')
    expect(accounting?.valid).toBe(false)
    expect((accounting?.details.counts as { lost: number }).lost).toBeGreaterThan(0)
    // The regions still converge: the conflicts were resolved, only not recorded.
    expect(verdictOf(result, 'region-convergence')?.valid).toBe(true)
    expect(result.summary.valid).toBe(false)
  }, 240_000)

  it('nodes whose outbox forwards every queued write twice (--unsafe-outbox-apply-twice) fail the queued-tickets check', async () => {
    // The ticket keeps the first application's LSN; the key's version is the second's.
    const result = await run({
      nemeses: ['partition-regions'],
      seed: 183,
      durationMs: 20_000,
      nodeArgs: ['--unsafe-outbox-apply-twice'],
    })
    const queued = verdictOf(result, 'queued-tickets')
    expect(queued?.valid).toBe(false)
    expect((queued?.details.wrongVersions as unknown[]).length).toBeGreaterThan(0)
    // The shared keys are untouched by the outbox: their accounting holds.
    expect(verdictOf(result, 'conflict-accounting')?.valid).toBe(true)
    expect(result.summary.valid).toBe(false)
  }, 240_000)
})
