/**
 * The dirty-read rows of the chaos smoke matrix (docker backend: the leader is isolated with
 * iptables, so it keeps taking ack=async writes until it steps down, and they are rolled back
 * when it rejoins). Committed reads must never show one of them; default-level reads under the
 * same faults must be caught showing them (the checker's teeth).
 *
 * Needs a Docker engine and the image (scripts/docker-build.sh); never skips.
 */
import { runChaos, type ChaosOptions } from '@kvstore/chaos'
import { testCertsDir } from './support/certs.js'
import { useTempDir } from './support/temp.js'

const out = useTempDir('kv-chaos-committed-')

function run(readConsistency: ChaosOptions['readConsistency'], nodeArgs: string[] = []) {
  return runChaos({
    ...(nodeArgs.length > 0 ? { nodeArgs } : {}),
    backend: 'docker',
    workload: 'dirty-read',
    nemeses: ['partition-leader'],
    readConsistency,
    ack: 'async',
    durationMs: 18_000,
    seed: 1901,
    nodes: 3,
    clients: 6,
    out: out(),
    certsDir: testCertsDir(),
    healthyMs: 3000,
    faultMs: 4000,
    log: () => {},
  })
}

interface DirtyCounts {
  observations: number
  watchObservations: number
  dirtyWatchObservations: number
  rolledBackValuesInRecords: number
  seenRolledBack: number
  seenAbsent: number
}

describe('dirty reads under ack=async with the leader isolated (real containers)', () => {
  it('committed reads never show a write that was rolled back', async () => {
    const result = await run('committed')
    const verdict = result.summary.verdicts.find((v) => v.checker === 'dirty-reads')
    expect(verdict, JSON.stringify(result.summary.verdicts)).toBeDefined()
    const counts = (verdict?.details as { counts: DirtyCounts }).counts
    // The run really rolled writes back, and the readers really saw values.
    expect(result.windows.length).toBeGreaterThan(0)
    expect(counts.rolledBackValuesInRecords).toBeGreaterThan(0)
    expect(counts.observations).toBeGreaterThan(200)
    // A watcher on every node, the isolated leader's included, showed values too.
    expect(counts.watchObservations).toBeGreaterThan(100)
    for (const v of result.summary.verdicts)
      expect([v.checker, v.valid, v.summary]).toEqual([v.checker, true, v.summary])
  }, 240_000)

  it('teeth: default-level reads are caught showing rolled-back writes', async () => {
    const result = await run('default')
    const verdict = result.summary.verdicts.find((v) => v.checker === 'dirty-reads')
    expect(verdict?.valid, verdict?.summary).toBe(false)
    const counts = (verdict?.details as { counts: DirtyCounts }).counts
    expect(counts.seenRolledBack + counts.seenAbsent).toBeGreaterThan(0)
    // The cluster itself recovered and converged: only the reads were dirty.
    for (const v of result.summary.verdicts.filter((x) => x.checker !== 'dirty-reads'))
      expect([v.checker, v.valid, v.summary]).toEqual([v.checker, true, v.summary])
  }, 240_000)

  it('teeth: a node build whose watch streams applied entries is caught by its watchers', async () => {
    // Committed reads (they stay clean); the watchers bound to the isolated leader see its
    // writes before they commit, and those are rolled back.
    const result = await run('committed', ['--unsafe-watch-applied'])
    const verdict = result.summary.verdicts.find((v) => v.checker === 'dirty-reads')
    expect(verdict?.valid, verdict?.summary).toBe(false)
    const counts = (verdict?.details as { counts: DirtyCounts }).counts
    expect(counts.dirtyWatchObservations).toBeGreaterThan(0)
    expect(counts.seenRolledBack + counts.seenAbsent).toBe(counts.dirtyWatchObservations)
  }, 240_000)
})
