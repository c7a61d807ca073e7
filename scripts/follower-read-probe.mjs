#!/usr/bin/env node
// Where does a follower GET spend its CPU? Starts a fresh 3-node single-leader cluster (as
// shipped by default: HTTPS, token auth, mutual TLS between members), loads --keys 100-byte
// values, then runs wrk (one thread, closed loop) with random GETs on one follower for
// --duration seconds and prints ops/s, each node's CPU in cores and the CPU µs per GET (all
// nodes, and the follower alone). Bounded: wrk stops after --duration, the cluster is stopped
// by its PIDs at the end.
//
//   pnpm build && node scripts/follower-read-probe.mjs [--security tls-auth|tls|plaintext]
//       [--duration 10] [--connections 64] [--keys 10000] [--rounds 1]
//       [--node-options="--import ./scripts/cpu-profile.mjs"]   (with KV_CPU_PROFILE_DIR set)
//       [--strace]   syscall counts of the follower during the measured phase (strace -c -f)
//       [--attach "perf record -F 499 -g -o /tmp/perf.data -p {pid}"]   any tool, attached to
//                    the follower ({pid}) for the measured phase and stopped with SIGINT after it
//
// --node-options reaches the node processes only (NODE_OPTIONS while they start).
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { prefill, waitCaughtUp } from '../packages/bench/dist/cluster.js'
import { pidOf, startBenchCluster } from '../packages/bench/dist/node-process.js'
import { cpuSeconds } from '../packages/bench/dist/proc.js'
import { benchSecurity } from '../packages/bench/dist/security.js'
import { getScript, runWrk } from '../packages/bench/dist/wrk.js'

const say = (line) => process.stdout.write(`${line}\n`)

const { values: opts } = parseArgs({
  options: {
    security: { type: 'string', default: 'tls-auth' },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '64' },
    keys: { type: 'string', default: '10000' },
    rounds: { type: 'string', default: '1' },
    'node-options': { type: 'string', default: '' },
    strace: { type: 'boolean', default: false },
    attach: { type: 'string', default: '' },
  },
})
const durationS = Number(opts.duration)
const keys = Number(opts.keys)
const rounds = Number(opts.rounds)
if (!(durationS >= 1 && durationS <= 120)) throw new Error('--duration must be 1 to 120 seconds')
if (!(keys >= 1 && keys <= 1_000_000)) throw new Error('--keys must be 1 to 1000000')
if (!(rounds >= 1 && rounds <= 10)) throw new Error('--rounds must be 1 to 10')

const work = await mkdtemp(join(tmpdir(), 'kv-follower-probe-'))
const security = await benchSecurity(opts.security, work)
if (opts['node-options'] !== '') process.env.NODE_OPTIONS = opts['node-options']
const cluster = await startBenchCluster(work, 3, security)
delete process.env.NODE_OPTIONS
try {
  const follower = cluster.followers[0]
  const authorization = await security.authorization(follower.url)
  await prefill(cluster.leader.url, 'bench/get/', 100, keys, security)
  await waitCaughtUp(cluster)
  const script = getScript('bench/get/', keys, { authorization })
  await runWrk({
    url: follower.url,
    script,
    scriptDir: work,
    connections: Number(opts.connections),
    durationS: 3,
  })
  for (let round = 1; round <= rounds; round++) {
    const before = await Promise.all(cluster.members.map((m) => cpuSeconds(pidOf(m))))
    const started = performance.now()
    let tool = null
    let toolOut = ''
    const pid = String(pidOf(follower))
    const command = opts.strace
      ? ['strace', '-c', '-f', '-p', pid]
      : opts.attach
          .split(' ')
          .filter(Boolean)
          .map((a) => a.replaceAll('{pid}', pid))
    if (command.length > 0) {
      tool = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
      tool.stdout.on('data', (chunk) => (toolOut += chunk))
      tool.stderr.on('data', (chunk) => (toolOut += chunk))
      await new Promise((resolve) => setTimeout(resolve, 500))
    }
    const result = await runWrk({
      url: follower.url,
      script,
      scriptDir: work,
      connections: Number(opts.connections),
      durationS,
    })
    if (tool !== null) {
      const exited = new Promise((resolve) => tool.once('exit', resolve))
      tool.kill('SIGINT')
      const killer = setTimeout(() => tool.kill('SIGKILL'), 30_000)
      await exited
      clearTimeout(killer)
    }
    const wallS = (performance.now() - started) / 1000
    const after = await Promise.all(cluster.members.map((m) => cpuSeconds(pidOf(m))))
    const used = after.map((a, i) => a - before[i])
    const ok = result.requests - result.errors
    const all = used.reduce((a, b) => a + b, 0)
    const followerIndex = cluster.members.indexOf(follower)
    const cores = cluster.members
      .map((m, i) => `${m.id}${m === follower ? '*' : ''} ${(used[i] / wallS).toFixed(2)}`)
      .join(', ')
    say(
      `${opts.security} round ${round}: ${Math.round(result.throughput)} GET/s, p99 ${result.latencyMs.p99.toFixed(2)} ms, ${result.errors} errors; ` +
        `CPU µs/op all nodes ${((all / ok) * 1e6).toFixed(1)}, follower ${((used[followerIndex] / ok) * 1e6).toFixed(1)}; ` +
        `cores ${cores} (* the follower), wrk ${result.loadGeneratorCores.toFixed(2)}`,
    )
    if (toolOut !== '') {
      say(`${command[0]} on the follower (${ok} GETs answered):\n${toolOut}`)
    }
  }
} finally {
  await cluster.stop()
  await rm(work, { recursive: true, force: true })
}
