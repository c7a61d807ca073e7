/**
 * pnpm bench: runs a benchmark suite, prints a table and writes JSON and markdown to
 * bench-results/.
 *
 *   --suite cluster       (default) a 3-node single-leader cluster: writes per ack mode,
 *                         replication lag, CPU-capped read scaling. See cluster.ts.
 *   --suite single-node   one node: group commit, fsync on/off, reads. See single-node.ts.
 *   --suite failover      kill -9 the leader under SDK writes, --trials N times (default 10):
 *                         time to the next successful write, elections. See failover.ts.
 *
 * Options: --duration S (default 10), --connections N (64), --value-bytes N (100),
 * --get-keys N (100000), --read-cpu-cap CORES (0.5), --out DIR (bench-results).
 */
import { parseArgs } from 'node:util'
import { runClusterBench } from './cluster.js'
import { runFailoverBench } from './failover.js'
import { runSingleNode } from './single-node.js'

async function main(): Promise<void> {
  const { values: opts } = parseArgs({
    options: {
      suite: { type: 'string', default: 'cluster' },
      duration: { type: 'string', default: '10' },
      connections: { type: 'string', default: '64' },
      'value-bytes': { type: 'string', default: '100' },
      'get-keys': { type: 'string', default: '100000' },
      'read-cpu-cap': { type: 'string', default: '0.5' },
      out: { type: 'string', default: 'bench-results' },
      trials: { type: 'string', default: '10' },
    },
  })
  const number = (name: keyof typeof opts, min: number): number => {
    const value = Number(opts[name])
    if (!Number.isFinite(value) || value < min) {
      throw new Error(`--${name} must be a number >= ${min}, not ${String(opts[name])}`)
    }
    return value
  }
  const common = {
    durationS: number('duration', 1),
    connections: number('connections', 1),
    valueBytes: number('value-bytes', 1),
    getKeys: number('get-keys', 1),
    out: String(opts.out),
  }
  switch (opts.suite) {
    case 'cluster':
      return runClusterBench({ ...common, readCpuCap: number('read-cpu-cap', 0.01) })
    case 'single-node':
      return runSingleNode(common)
    case 'failover':
      return runFailoverBench({ trials: number('trials', 1), out: common.out })
    default:
      throw new Error(`--suite must be cluster, single-node or failover, not ${String(opts.suite)}`)
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).message}\n`)
  process.exitCode = 1
})
