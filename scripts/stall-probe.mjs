#!/usr/bin/env node
// Where do open-loop latency spikes come from? Offers PUT ?ack=quorum at a fixed rate to a fresh
// 3-node plaintext cluster and, every second, prints that second's p99 and max latency (from when
// each write was due) beside the leader's GC time, event-loop lag, heap and log start LSN, read
// from its /metrics. Ends with one summary line. Bounded: it stops after --duration seconds.
//
//   pnpm build && node scripts/stall-probe.mjs [--rate 3500] [--duration 40]
//       [--node-options="--max-semi-space-size=32"] [--node-args="--leveldb-write-buffer-bytes 4194304"]
//
// The first 5 seconds are left out of the summary (the cluster warms up).
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Pool } from 'undici'
import { startBenchCluster } from '../packages/bench/dist/node-process.js'
import { benchSecurity } from '../packages/bench/dist/security.js'

const { values: opts } = parseArgs({
  options: {
    rate: { type: 'string', default: '3500' },
    duration: { type: 'string', default: '40' },
    'node-options': { type: 'string', default: '' },
    'node-args': { type: 'string', default: '' },
  },
})
const rate = Number(opts.rate)
const durationS = Number(opts.duration)
if (!(rate > 0 && rate <= 50_000)) throw new Error('--rate must be 1 to 50000')
if (!(durationS >= 6 && durationS <= 600)) throw new Error('--duration must be 6 to 600 seconds')

const work = await mkdtemp(join(tmpdir(), 'kv-stall-probe-'))
const security = await benchSecurity('plaintext', work)
const nodeArgs = opts['node-args'].split(' ').filter(Boolean)
if (opts['node-options'] !== '') process.env.NODE_OPTIONS = opts['node-options']
const cluster = await startBenchCluster(work, 3, security, nodeArgs)
delete process.env.NODE_OPTIONS
const url = cluster.leader.url
const pool = new Pool(url, { connections: 64 })
const value = 'x'.repeat(100)

async function leaderMetrics() {
  const text = await (await fetch(`${url}/metrics`)).text()
  const read = (re) => Number(text.match(re)?.[1] ?? NaN)
  return {
    gcMajorS: read(/^kv_nodejs_gc_duration_seconds_sum\{kind="major"\} (\S+)/m),
    gcMinorS: read(/^kv_nodejs_gc_duration_seconds_sum\{kind="minor"\} (\S+)/m),
    lagMaxS: read(/^kv_nodejs_eventloop_lag_max_seconds (\S+)/m),
    heapBytes: read(/^kv_nodejs_heap_size_used_bytes (\S+)/m),
    logStartLsn: read(/^kv_log_start_lsn (\S+)/m),
  }
}

const seconds = []
const start = performance.now()
let sent = 0
const total = Math.floor(rate * durationS)
const pacer = setInterval(() => {
  const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate))
  while (sent < due) {
    const dueAt = start + (sent * 1000) / rate
    const second = Math.floor((dueAt - start) / 1000)
    const path = `/v1/kv/probe/${sent % 100_000}?ack=quorum`
    sent++
    const bucket = (seconds[second] ??= { latencies: [], errors: 0 })
    pool.request({ method: 'PUT', path, body: value }).then(
      async (res) => {
        await res.body.dump()
        bucket.latencies.push(performance.now() - dueAt)
        if (res.statusCode >= 300) bucket.errors++
      },
      () => bucket.errors++,
    )
  }
}, 1)

const lines = []
const all = []
let before = await leaderMetrics()
for (let s = 0; s < durationS; s++) {
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const now = await leaderMetrics()
  const latencies = (seconds[s]?.latencies ?? []).sort((a, b) => a - b)
  if (s >= 5) all.push(...latencies)
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))] ?? 0
  lines.push(
    `${String(s).padStart(3)} s  writes ${String(latencies.length).padStart(5)}  p99 ${at(0.99).toFixed(1).padStart(6)} ms  max ${(latencies.at(-1) ?? 0).toFixed(1).padStart(6)} ms  |  leader: major GC ${((now.gcMajorS - before.gcMajorS) * 1000).toFixed(1).padStart(5)} ms  minor GC ${((now.gcMinorS - before.gcMinorS) * 1000).toFixed(0).padStart(3)} ms  loop lag max ${(now.lagMaxS * 1000).toFixed(1).padStart(5)} ms  heap ${(now.heapBytes / 2 ** 20).toFixed(0).padStart(4)} MB  log start ${now.logStartLsn}  errors ${seconds[s]?.errors ?? 0}`,
  )
  before = now
}
clearInterval(pacer)
await new Promise((resolve) => setTimeout(resolve, 2000))
await pool.close()
await cluster.stop()
await rm(work, { recursive: true, force: true })

for (const line of lines) process.stdout.write(`${line}\n`)
all.sort((a, b) => a - b)
const q = (p) => (all[Math.min(all.length - 1, Math.floor(all.length * p))] ?? 0).toFixed(1)
const over = (ms) => lines.slice(5).filter((l) => Number(l.match(/max +(\S+) ms/)[1]) > ms).length
process.stdout.write(
  `summary (from 5 s): ${rate}/s for ${durationS} s: p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, p99.9 ${q(0.999)} ms, max ${(all.at(-1) ?? 0).toFixed(1)} ms; seconds with max > 100 ms: ${over(100)}, > 50 ms: ${over(50)}\n`,
)
