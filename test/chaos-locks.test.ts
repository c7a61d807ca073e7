/**
 * Chaos runs of the lock workload on the process backend (issue 19; docs/leases.md): clients
 * take one lock with the SDK's lock(), write fenced writes to a resource while they hold it,
 * and some pause past their lease's TTL while holding it; the nemeses kill and pause nodes.
 * The lock checker reads the resource's accepted history (every write the store took, in LSN
 * order) and wants no two holders' writes interleaved.
 *
 * The teeth: the same workload without fencing tokens must be caught, since a woken holder
 * then writes after the next holder did.
 */
import { runChaos, type ChaosOptions, type NemesisName } from '@kvstore/chaos'
import { testCertsDir } from './support/certs.js'
import { useTempDir } from './support/temp.js'

const out = useTempDir('kv-chaos-locks-test-')

function run(options: Partial<ChaosOptions> & Pick<ChaosOptions, 'nemeses'>) {
  return runChaos({
    backend: 'process',
    workload: 'locks',
    ack: 'quorum',
    durationMs: 15_000,
    seed: 1,
    nodes: 3,
    clients: 4,
    out: out(),
    certsDir: testCertsDir(),
    healthyMs: 2500,
    faultMs: 3000,
    archiveOn: 'none',
    log: () => {},
    ...options,
  })
}

const verdictOf = (result: Awaited<ReturnType<typeof run>>, checker: string) =>
  result.summary.verdicts.find((v) => v.checker === checker)

describe('the lock workload (process backend, ack=quorum)', () => {
  it.each<[NemesisName[], number]>([[['kill', 'pause-leader'], 191]])(
    '%s: fenced writes never interleave, and the replicas converge',
    async (nemeses, seed) => {
      const result = await run({ nemeses, seed })
      expect(result.windows.length).toBeGreaterThan(0)
      for (const v of result.summary.verdicts)
        expect([v.checker, v.valid, v.summary]).toEqual([v.checker, true, v.summary])
      const locks = verdictOf(result, 'locks')
      const details = locks?.details as { accepted: number; pauses: number; fenced: number }
      // The workload really ran: many writes, and holders that paused past their TTL.
      expect(details.accepted).toBeGreaterThan(30)
      expect(details.pauses).toBeGreaterThan(0)
    },
    120_000,
  )

  it('teeth: without fencing tokens, the checker catches a woken holder writing after the next one', async () => {
    const result = await run({ nemeses: ['pause'], seed: 192, unfenced: true })
    const locks = verdictOf(result, 'locks')
    expect(locks?.valid).toBe(false)
    expect((locks?.details as { violations: unknown[] }).violations.length).toBeGreaterThan(0)
  }, 120_000)
})
