#!/usr/bin/env node
/**
 * pnpm chaos: one chaos run; exits 1 on any violation (2 on bad usage, 3 when a checker could
 * not decide).
 *
 *   pnpm chaos --backend docker --workload register --nemesis partition-leader,kill \
 *     --ack quorum --duration 60s --seed 7
 */
import { parseArgs } from 'node:util'
import { parseNemeses, nemesisNames } from './nemesis.js'
import { runChaos } from './run.js'
import { workloadNames, type AckMode, type WorkloadName } from './workloads.js'

const usage = `Usage: pnpm chaos [options]
  --backend process|docker    local kv-node processes (kill, pause only) or containers (default docker)
  --workload ${workloadNames.join('|')}   (default register)
  --nemesis LIST              comma-separated: ${nemesisNames.join(', ')} (default kill,pause-leader)
  --ack async|quorum|all      write durability (default quorum)
  --duration 60s              how long faults run (s or ms suffix; default 30s)
  --seed N                    the schedule's and the clients' seed (default: random, printed)
  --nodes N                   cluster size (default 3)
  --clients N                 concurrent clients (default 6)
  --out DIR                   where the report folder goes (default chaos-reports)
  --unsafe-no-fencing         run nodes with fencing disabled (a test-only switch; the checkers must catch it)
  --unsafe-no-sessions        session workload: read followers without session tokens (must be caught)
Docker backend: build the image first with bash scripts/docker-build.sh.`

function duration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text)
  if (!m) throw new Error(`--duration must look like 60s, 90000ms or 2m, not ${text}`)
  const n = Number(m[1])
  return m[2] === 'ms' ? n : m[2] === 'm' ? n * 60_000 : n * 1000
}

async function main(): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      options: {
        backend: { type: 'string', default: 'docker' },
        workload: { type: 'string', default: 'register' },
        nemesis: { type: 'string', default: 'kill,pause-leader' },
        ack: { type: 'string', default: 'quorum' },
        duration: { type: 'string', default: '30s' },
        seed: { type: 'string' },
        nodes: { type: 'string', default: '3' },
        clients: { type: 'string', default: '6' },
        out: { type: 'string', default: 'chaos-reports' },
        'unsafe-no-fencing': { type: 'boolean', default: false },
        'unsafe-no-sessions': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (err) {
    process.stderr.write(`chaos: ${(err as Error).message}\n${usage}\n`)
    return 2
  }
  const o = parsed.values
  if (o.help) {
    process.stdout.write(`${usage}\n`)
    return 0
  }
  try {
    if (o.backend !== 'process' && o.backend !== 'docker')
      throw new Error('--backend must be process or docker')
    if (!(workloadNames as readonly string[]).includes(o.workload))
      throw new Error(`--workload must be one of ${workloadNames.join(', ')}`)
    if (o.ack !== 'async' && o.ack !== 'quorum' && o.ack !== 'all')
      throw new Error('--ack must be async, quorum or all')
    const nemeses = parseNemeses(o.nemesis)
    const seed = o.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(o.seed)
    if (!Number.isSafeInteger(seed)) throw new Error('--seed must be a whole number')
    const nodes = Number(o.nodes)
    const clients = Number(o.clients)
    if (!Number.isInteger(nodes) || nodes < 1) throw new Error('--nodes must be at least 1')
    if (!Number.isInteger(clients) || clients < 1) throw new Error('--clients must be at least 1')
    const durationMs = duration(o.duration)
    const result = await runChaos({
      backend: o.backend,
      workload: o.workload as WorkloadName,
      nemeses,
      ack: o.ack as AckMode,
      durationMs,
      seed,
      nodes,
      clients,
      out: o.out,
      ...(o['unsafe-no-fencing'] ? { nodeEnv: { KV_UNSAFE_NO_FENCING: '1' } } : {}),
      ...(o['unsafe-no-sessions'] ? { noSessions: true } : {}),
      command: `pnpm chaos --backend ${o.backend} --workload ${o.workload} --nemesis ${nemeses.join(',')} --ack ${o.ack} --duration ${o.duration} --seed ${seed} --nodes ${nodes} --clients ${clients}${o['unsafe-no-fencing'] ? ' --unsafe-no-fencing' : ''}${o['unsafe-no-sessions'] ? ' --unsafe-no-sessions' : ''}`,
    })
    return result.summary.valid === true ? 0 : result.summary.valid === false ? 1 : 3
  } catch (err) {
    process.stderr.write(`chaos: ${(err as Error).message}\n`)
    return 2
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`chaos: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  },
)
