#!/usr/bin/env node
// Runs `pnpm bench --suite cluster` (or, with --suite leaderless, the 5-node leaderless suite,
// with each node's CPU per operation) for two builds side by side, interleaved round by round on
// the same machine, and prints one table: the working tree against an older commit.
//
//   pnpm bench:compare --base <rev> [--suite cluster|leaderless] [--rounds 2] [--duration 10]
//       [--out bench-results]
//
// The base commit is checked out into a temporary git worktree, installed from the local pnpm
// store and built there; the worktree is removed afterwards. Rounds alternate (base, head, base,
// head, ...) so that a machine that gets busier or quieter during the run affects both alike.
// Writes `<out>/compare-<time>.json` and `.md`.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const root = fileURLToPath(new URL('..', import.meta.url))
const { values: opts } = parseArgs({
  options: {
    base: { type: 'string' },
    rounds: { type: 'string', default: '2' },
    duration: { type: 'string', default: '10' },
    out: { type: 'string', default: 'bench-results' },
    suite: { type: 'string', default: 'cluster' },
  },
})
if (opts.base === undefined) {
  process.stderr.write('bench-compare: --base <rev> is required (the commit to compare with)\n')
  process.exit(2)
}
if (opts.suite !== 'cluster' && opts.suite !== 'leaderless')
  throw new Error('--suite must be cluster or leaderless')
const leaderless = opts.suite === 'leaderless'
const rounds = Number(opts.rounds)
const durationS = Number(opts.duration)
if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds must be an integer >= 1')
if (!Number.isFinite(durationS) || durationS < 1) throw new Error('--duration must be >= 1')

const say = (line) => process.stdout.write(`${line}\n`)
const run = (cmd, args, cwd) => {
  const result = spawnSync(cmd, args, { cwd, stdio: 'inherit' })
  if (result.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed in ${cwd}`)
}
const git = (...args) => execFileSync('git', args, { cwd: root, encoding: 'utf8' }).trim()

const baseCommit = git('rev-parse', '--short', opts.base)
const headCommit = `${git('rev-parse', '--short', 'HEAD')}${git('status', '--porcelain') === '' ? '' : '+changes'}`
const scratch = await mkdtemp(join(tmpdir(), 'kv-bench-compare-'))
const baseDir = join(scratch, 'base')
git('worktree', 'add', '--detach', baseDir, opts.base)
try {
  say(`== building base ${baseCommit} in ${baseDir}`)
  run('pnpm', ['install', '--offline', '--frozen-lockfile', '--reporter=silent'], baseDir)
  run('pnpm', ['build'], baseDir)
  say(`== building head ${headCommit}`)
  run('pnpm', ['build'], root)

  const builds = [
    { name: 'base', commit: baseCommit, dir: baseDir },
    { name: 'head', commit: headCommit, dir: root },
  ]
  const results = { base: [], head: [] }
  for (let round = 1; round <= rounds; round++) {
    for (const build of builds) {
      const out = join(scratch, `${build.name}-${round}`)
      say(`== round ${round}/${rounds}: ${build.name} (${build.commit})`)
      run(
        'node',
        [
          'packages/bench/dist/main.js',
          '--suite',
          opts.suite,
          '--duration',
          String(durationS),
          '--out',
          out,
        ],
        build.dir,
      )
      const file = (await readdir(out)).find((name) => name.endsWith('.json'))
      results[build.name].push(JSON.parse(await readFile(join(out, file), 'utf8')))
    }
  }

  // One row per measured phase: writes per ack mode, reads per target set (cluster); each
  // operation at each quorum, with the CPU of every node per operation (leaderless).
  const phases = []
  for (const p of leaderless ? results.head[0].phases : []) {
    phases.push({
      name: `${p.operation} ${p.operation === 'PUT' ? 'w' : 'r'}=${p.quorum}`,
      pick: (r) => {
        const x = r.phases.find((y) => y.operation === p.operation && y.quorum === p.quorum)
        if (!x) return undefined
        const cores = Object.values(x.nodeCores).reduce((a, b) => a + b, 0)
        return {
          throughput: x.result.throughput,
          latencyMs: x.result.latencyMs,
          cpuUsPerOp: (cores / x.result.throughput) * 1e6,
        }
      },
    })
  }
  for (const w of leaderless ? [] : results.head[0].writes) {
    phases.push({
      name: `PUT ack=${w.ack}`,
      pick: (r) => r.writes.find((x) => x.ack === w.ack)?.result,
    })
  }
  for (const rd of leaderless ? [] : results.head[0].reads) {
    phases.push({
      name: `GET ${rd.name}`,
      pick: (r) => {
        const x = r.reads.find((y) => y.name === rd.name)
        return x && { throughput: x.throughput, latencyMs: x.latencyMs }
      },
    })
  }
  const fmt = (n) => Math.round(n).toLocaleString('en-US')
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length
  const rows = phases.map((phase) => {
    const side = (name) => {
      const picked = results[name].map(phase.pick).filter(Boolean)
      return {
        opsPerSecond: picked.map((p) => p.throughput),
        p99Ms: picked.map((p) => p.latencyMs.p99),
        cpuUsPerOp: picked.map((p) => p.cpuUsPerOp).filter((x) => x !== undefined),
      }
    }
    const base = side('base')
    const head = side('head')
    const change = (mean(head.opsPerSecond) / mean(base.opsPerSecond) - 1) * 100
    return { phase: phase.name, base, head, changePercent: change }
  })
  const command = `pnpm bench:compare --base ${opts.base}${leaderless ? ' --suite leaderless' : ''} --rounds ${rounds} --duration ${durationS}`
  const what = leaderless
    ? '5-node leaderless cluster, N=3 (`pnpm bench --mode leaderless`)'
    : '3-node single-leader cluster (`pnpm bench --suite cluster`)'
  const cpuCells = (r) =>
    leaderless
      ? ` ${r.base.cpuUsPerOp.map(fmt).join(' / ')} | ${r.head.cpuUsPerOp.map(fmt).join(' / ')} |`
      : ''
  const markdown = [
    `${what}, base ${baseCommit} against head ${headCommit}, rounds interleaved; ${new Date().toISOString()}.`,
    `Command: \`${command}\``,
    '',
    `| phase | base ops/s (each round) | head ops/s (each round) | change of the mean | base p99 ms | head p99 ms |${leaderless ? ' base node CPU µs/op | head node CPU µs/op |' : ''}`,
    `|---|---:|---:|---:|---:|---:|${leaderless ? '---:|---:|' : ''}`,
    ...rows.map(
      (r) =>
        `| ${r.phase} | ${r.base.opsPerSecond.map(fmt).join(' / ')} | ${r.head.opsPerSecond.map(fmt).join(' / ')} | ${r.changePercent >= 0 ? '+' : ''}${r.changePercent.toFixed(1)}% | ${r.base.p99Ms.map((x) => x.toFixed(1)).join(' / ')} | ${r.head.p99Ms.map((x) => x.toFixed(1)).join(' / ')} |${cpuCells(r)}`,
    ),
  ].join('\n')
  say(`\n${markdown}\n`)
  const outDir = resolve(root, opts.out)
  await mkdir(outDir, { recursive: true })
  const base = join(outDir, `compare-${new Date().toISOString().replace(/[:.]/g, '-')}`)
  await writeFile(
    `${base}.json`,
    `${JSON.stringify({ command, baseCommit, headCommit, rounds, durationS, rows, results }, null, 2)}\n`,
  )
  await writeFile(`${base}.md`, `${markdown}\n`)
  say(`wrote ${base}.json and ${base}.md`)
} finally {
  git('worktree', 'remove', '--force', baseDir)
  await rm(scratch, { recursive: true, force: true })
}
