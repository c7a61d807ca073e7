/**
 * The watch rows of the chaos matrix (process backend: kill -9 and SIGSTOP of real nodes):
 * watchers, half of them on followers, follow prefixes through failovers, and the watch
 * checker compares what each received with the committed history. The teeth: nodes built to
 * skip a change when a watch resumes (--unsafe-watch-skip-on-resume) must be caught.
 */
import { runChaos, type ChaosOptions, type NemesisName } from '@kvstore/chaos'
import { testCertsDir } from './support/certs.js'
import { useTempDir } from './support/temp.js'

const out = useTempDir('kv-chaos-watch-')

function run(options: Partial<ChaosOptions> & Pick<ChaosOptions, 'nemeses'>) {
  return runChaos({
    backend: 'process',
    workload: 'watch',
    ack: 'quorum',
    durationMs: 15_000,
    seed: 1,
    nodes: 3,
    clients: 4,
    out: out(),
    certsDir: testCertsDir(),
    healthyMs: 2000,
    faultMs: 3000,
    log: () => {},
    ...options,
  })
}

const verdictOf = (result: Awaited<ReturnType<typeof run>>, checker: string) =>
  result.summary.verdicts.find((v) => v.checker === checker)

describe('watchers across failovers (ack=quorum, process nodes)', () => {
  it.each<[NemesisName[], number]>([
    [['kill'], 191],
    [['pause-leader'], 192],
  ])(
    '%s: every watcher sees exactly the committed history under its prefix',
    async (nemeses, seed) => {
      const result = await run({ nemeses, seed })
      expect(result.windows.length).toBeGreaterThan(0)
      expect(result.summary.operations.ok).toBeGreaterThan(200)
      const watch = verdictOf(result, 'watch')
      expect([watch?.valid, watch?.summary]).toEqual([true, watch?.summary])
      // The faults sent watchers to other members.
      const details = watch?.details as { watchers: { reconnects: number }[] }
      expect(details.watchers.reduce((n, w) => n + w.reconnects, 0)).toBeGreaterThan(0)
    },
    120_000,
  )
})

describe('the teeth: a node build that skips a change when a watch resumes', () => {
  it('is caught by the watch checker', async () => {
    const result = await run({
      nemeses: ['kill'],
      seed: 191,
      nodeArgs: ['--unsafe-watch-skip-on-resume'],
    })
    const watch = verdictOf(result, 'watch')
    expect(watch?.valid).toBe(false)
    expect(watch?.summary).toMatch(/missing/)
  }, 120_000)
})
