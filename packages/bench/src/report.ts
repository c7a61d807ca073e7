/**
 * The one report of every suite: markdown printed and written beside a JSON twin, as
 * `<out>/<suite>-<time>.md` and `.json`, both with the machine, the commit, the date and the
 * command that made them; and the table pieces the suites share.
 */
import { execFileSync } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { fmt, say } from './common.js'
import { machine } from './proc.js'

export interface Report {
  suite: string
  /** The `pnpm bench` command line that reproduces the run. */
  command: string
  /** The report's first line: what ran, and how. */
  summary: string
  /** The markdown after the header lines: tables and notes. */
  body: string[]
  /** The suite's own JSON fields, after the common ones. */
  json: Record<string, unknown>
  /** More files beside the JSON, `<suite>-<time><suffix>`, each named at the end of the markdown. */
  attachments?: { suffix: string; what: string; content: string }[]
}

function gitCommit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim()
  } catch {
    return 'unknown'
  }
}

/** Prints the report, and writes `<out>/<suite>-<time>.json` and `.md`. */
export async function publish(out: string, report: Report): Promise<void> {
  const host = await machine()
  const commit = gitCommit()
  const date = new Date().toISOString()
  const outDir = resolve(out)
  const base = join(outDir, `${report.suite}-${date.replace(/[:.]/g, '-')}`)
  const attachments = report.attachments ?? []
  const markdown = [
    report.summary,
    `Machine: ${host.cores} x ${host.cpus}, ${host.memoryGiB} GiB; Node.js ${process.version}; commit ${commit}; ${date}.`,
    `Command: \`${report.command}\``,
    '',
    ...report.body,
    ...(attachments.length > 0 ? [''] : []),
    ...attachments.map((a) => `${a.what}: \`${basename(base)}${a.suffix}\`, beside this file.`),
  ].join('\n')
  say(`\n${markdown}\n`)
  const json = {
    suite: report.suite,
    command: report.command,
    commit,
    date,
    node: process.version,
    machine: host,
    ...report.json,
  }
  await mkdir(outDir, { recursive: true })
  await writeFile(`${base}.json`, `${JSON.stringify(json, null, 2)}\n`)
  await writeFile(`${base}.md`, `${markdown}\n`)
  for (const a of attachments) await writeFile(`${base}${a.suffix}`, a.content)
  say(
    `wrote ${[`${base}.json`, `${base}.md`, ...attachments.map((a) => `${base}${a.suffix}`)].join(', ')}`,
  )
}

/** One row of the targets table: name, goal, what was measured, and met (or why not measured). */
export type TargetRow = readonly [
  name: string,
  goal: string,
  measured: string,
  ok: boolean | string,
]

/** The targets table: "met" or "MISSED" per target. */
export function targetTable(rows: readonly TargetRow[]): string[] {
  return [
    '| target | goal | measured | |',
    '|---|---|---:|---|',
    ...rows.map(
      ([name, goal, measured, ok]) =>
        `| ${name} | ${goal} | ${measured} | ${typeof ok === 'string' ? ok : ok ? 'met' : 'MISSED'} |`,
    ),
  ]
}

/** The throughput and latency cells of a row: ops/s | p50 ms | p99 ms | p99.9 ms. */
export function rateCells(r: {
  throughput: number
  latencyMs: { p50: number; p99: number; p999: number }
}): string {
  return `${fmt(r.throughput)} | ${fmt(r.latencyMs.p50, 2)} | ${fmt(r.latencyMs.p99, 2)} | ${fmt(r.latencyMs.p999, 2)}`
}

/** CPU per member, in cores, as one cell: "n1 0.52, n2 0.31". */
export function coresCell(cores: Record<string, number>): string {
  return Object.entries(cores)
    .map(([id, v]) => `${id} ${fmt(v, 2)}`)
    .join(', ')
}
