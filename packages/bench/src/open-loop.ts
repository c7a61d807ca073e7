/**
 * pnpm bench --suite open-loop: quorum writes offered on a fixed schedule, as real clients
 * send them, instead of wrk's closed loop (which slows down with the server and so hides its
 * stalls).
 *
 *  1. A fresh 3-node single-leader cluster as shipped; a 3 s warm-up (wrk, ack=quorum).
 *  2. The closed-loop maximum: wrk, `connections` connections, PUT ?ack=quorum for
 *     `maxDurationS` seconds.
 *  3. For each share (default 50% and 80%) of that maximum: the pacer (pacer.ts) offers PUT
 *     ?ack=quorum at that rate for `durationS` seconds over `connections` keep-alive
 *     connections, and counts each request's latency from when it was due (coordinated
 *     omission). Reported: p50, p99, p99.9 and max; stall episodes (stretches where requests
 *     took over 100 ms from when they were due, overlapping ones merged; see latency.ts);
 *     per-second p99 and max as an SVG beside the JSON and a text plot.
 *
 * Targets (printed, never asserted) at 50%: p99 <= 20 ms, max <= 150 ms, no stall over 100 ms.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { waitCaughtUp } from './cluster.js'
import { ensureWrk, fmt, say } from './common.js'
import { cpuMeter, startBenchCluster } from './node-process.js'
import { runPaced, type PacedOptions, type PacedResult } from './pacer.js'
import { asciiPlot, latencySvg } from './plot.js'
import { loadAverage, removeOnExit } from './proc.js'
import { coresCell, publish, targetTable, type TargetRow } from './report.js'
import { benchSecurity, type SecurityProfile } from './security.js'
import { quorumPutMaximum, warmUpQuorumPuts, type WrkResult } from './wrk.js'

export interface OpenLoopOptions {
  security: SecurityProfile
  /** Seconds each share is offered. */
  durationS: number
  /** Seconds of the closed-loop measurement of the maximum. */
  maxDurationS: number
  connections: number
  valueBytes: number
  /** Shares of the closed-loop maximum to offer, such as [0.5, 0.8]. */
  shares: number[]
  out: string
}

interface SharePhase {
  share: number
  rate: number
  result: PacedResult
  nodeCores: Record<string, number>
}

const stallThresholdMs = 100

export async function runOpenLoopBench(options: OpenLoopOptions): Promise<void> {
  const { durationS, maxDurationS, connections, valueBytes, shares } = options
  ensureWrk()
  const loadBefore = await loadAverage()
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-open-loop-'))
  const workOnExit = removeOnExit(work)
  const security = await benchSecurity(options.security, work)
  let closed: WrkResult | null = null
  let closedCores: Record<string, number> = {}
  const phases: SharePhase[] = []
  try {
    say(`== starting a 3-node cluster (${security.profile})`)
    const cluster = await startBenchCluster(work, 3, security)
    try {
      const { leader } = cluster
      const authorization = await security.authorization(leader.url)
      say('   warming up (ack=quorum, 3 s)...')
      await warmUpQuorumPuts({
        url: leader.url,
        valueBytes,
        authorization,
        scriptDir: work,
        connections,
      })
      await waitCaughtUp(cluster)
      say(
        `== closed-loop maximum: PUT ack=quorum, wrk, ${connections} connections, ${maxDurationS} s`,
      )
      const meter = await cpuMeter(cluster.members)
      const max = await quorumPutMaximum({
        url: leader.url,
        valueBytes,
        authorization,
        scriptDir: work,
        connections,
        durationS: maxDurationS,
      })
      closed = max.result
      closedCores = await meter.stop()
      const { maximum } = max
      say(`   ${fmt(maximum)}/s, p99 ${fmt(closed.latencyMs.p99, 1)} ms, ${closed.errors} errors`)
      if (!(maximum > 0)) throw new Error('the closed-loop phase completed no write')
      await waitCaughtUp(cluster)
      for (const share of shares) {
        const rate = Math.max(1, Math.round(share * maximum))
        say(
          `== open loop: PUT ack=quorum at ${fmt(share * 100)}% (${fmt(rate)}/s) for ${durationS} s`,
        )
        const phaseMeter = await cpuMeter(cluster.members)
        const result = await runPaced({
          url: leader.url,
          tls: security.client.tls as PacedOptions['tls'],
          authorization,
          rate,
          durationS,
          connections,
          valueBytes,
          prefix: `bench/open${Math.round(share * 100)}/`,
          query: '?ack=quorum',
          stallThresholdMs,
        })
        phases.push({ share, rate, result, nodeCores: await phaseMeter.stop() })
        say(
          `   ${fmt(result.throughput)}/s, p50 ${fmt(result.latencyMs.p50, 1)} ms, p99 ${fmt(result.latencyMs.p99, 1)} ms, max ${fmt(result.latencyMs.max)} ms, ${result.stalls.count} stalls over ${stallThresholdMs} ms, ${result.errors} errors`,
        )
        for (const line of asciiPlot(result.perSecond)) say(line)
        await waitCaughtUp(cluster)
      }
    } finally {
      await cluster.stop()
    }
  } finally {
    await rm(work, { recursive: true, force: true })
    workOnExit.forget()
  }
  const max = closed as WrkResult
  const loadAfter = await loadAverage()
  const maximum = Math.max(0, max.requests - max.errors) / max.durationS

  const half = phases.find((p) => p.share === 0.5)
  const notMeasured = 'not measured (no 0.5 in --rate-share)'
  const targets: TargetRow[] =
    half === undefined
      ? [
          ['p99 at 50% of the maximum', '<= 20 ms', 'not measured', notMeasured],
          ['max at 50% of the maximum', '<= 150 ms', 'not measured', notMeasured],
          ['stalls over 100 ms at 50%', 'none', 'not measured', notMeasured],
        ]
      : [
          [
            'p99 at 50% of the maximum',
            '<= 20 ms',
            `${fmt(half.result.latencyMs.p99, 2)} ms`,
            half.result.latencyMs.p99 <= 20,
          ],
          [
            'max at 50% of the maximum',
            '<= 150 ms',
            `${fmt(half.result.latencyMs.max)} ms`,
            half.result.latencyMs.max <= 150,
          ],
          [
            'stalls over 100 ms at 50%',
            'none',
            String(half.result.stalls.count),
            half.result.stalls.count === 0,
          ],
        ]
  const shareText = shares.map(String).join(',')
  const rows = phases.map((p) => {
    const r = p.result
    const stall =
      r.stalls.count === 0 ? '0' : `${r.stalls.count} (longest ${fmt(r.stalls.longestMs)} ms)`
    return `| ${fmt(p.share * 100)}% | ${fmt(p.rate)} | ${fmt(r.throughput)} | ${fmt(r.latencyMs.p50, 2)} | ${fmt(r.latencyMs.p99, 2)} | ${fmt(r.latencyMs.p999, 2)} | ${fmt(r.latencyMs.max, 1)} | ${stall} | ${r.errors} | ${coresCell(p.nodeCores)} | ${fmt(r.loadGeneratorCores, 2)} |`
  })
  const plots = phases.flatMap((p) => [
    '',
    `Latency over time at ${fmt(p.share * 100)}% (${fmt(p.rate)}/s):`,
    '',
    '```',
    ...asciiPlot(p.result.perSecond),
    '```',
  ])
  await publish(options.out, {
    suite: 'open-loop',
    command: `pnpm bench --suite open-loop --rate-share ${shareText} --duration ${durationS} --max-duration ${maxDurationS} --connections ${connections} --value-bytes ${valueBytes}${options.security === 'tls-auth' ? '' : ` --security ${options.security}`}`,
    summary: `Open-loop quorum writes on a 3-node single-leader cluster (${options.security === 'tls-auth' ? 'as shipped: TLS and token auth' : `--security ${options.security}`}), the load generator on the same machine: the closed-loop maximum first (wrk, ${connections} connections, ${maxDurationS} s), then PUT ?ack=quorum offered at ${shares.map((s) => `${fmt(s * 100)}%`).join(' and ')} of it on a fixed schedule for ${durationS} s each, over ${connections} keep-alive connections, ${valueBytes}-byte values; latency counts from when each request was due. A stall is a stretch in which requests took over ${stallThresholdMs} ms (overlapping ones merged).`,
    body: [
      `Closed-loop maximum: ${fmt(maximum)}/s (p50 ${fmt(max.latencyMs.p50, 2)} ms, p99 ${fmt(max.latencyMs.p99, 2)} ms, ${max.errors} errors; node CPU ${coresCell(closedCores)}).`,
      '',
      `| offered share | rate/s | completed/s | p50 ms | p99 ms | p99.9 ms | max ms | stalls over ${stallThresholdMs} ms | errors | node CPU (cores) | load generator CPU |`,
      '|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|',
      ...rows,
      ...plots,
      '',
      ...targetTable(targets),
      '',
      `Load average (1 min) ${fmt(loadBefore, 2)} before the run and ${fmt(loadAfter, 2)} after (the machine has ${cpus().length} cores; other work on it weighs on every figure). The targets are printed, never asserted.`,
    ],
    json: {
      loadAverage: { before: loadBefore, after: loadAfter },
      connections,
      valueBytes,
      durationS,
      maxDurationS,
      stallThresholdMs,
      closedLoop: { throughput: maximum, result: max, nodeCores: closedCores },
      phases,
      targets: targets.map(([name, goal, measured, ok]) => ({ name, goal, measured, met: ok })),
    },
    attachments: [
      {
        suffix: '.svg',
        what: 'Per-second p99 and max (SVG)',
        content: latencySvg(
          phases.map((p) => ({
            title: `PUT ack=quorum at ${fmt(p.share * 100)}% of the closed-loop maximum (${fmt(p.rate)}/s offered)`,
            perSecond: p.result.perSecond,
          })),
          [
            { ms: stallThresholdMs, label: `stall: ${stallThresholdMs} ms` },
            { ms: 20, label: 'p99 target at 50%: 20 ms' },
          ],
        ),
      },
    ],
  })
}
