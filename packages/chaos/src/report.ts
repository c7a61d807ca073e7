/**
 * A run's report: the history (JSONL), every verdict (JSON), the fault schedule, two SVG
 * plots (latency over time with the fault windows shaded; throughput over time split into ok,
 * fail and info) and a one-page HTML summary that shows them together.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { HistoryEvent, Operation, Verdict } from './history.js'
import type { FaultWindow } from './nemesis.js'
import type { LeaderStall } from './group-watch.js'
import type { MoveRecord } from './shard-moves.js'

export interface RunSummary {
  command: string
  backend: string
  workload: string
  nemeses: string[]
  ack: string
  seed: number
  durationMs: number
  operations: { ok: number; fail: number; info: number }
  verdicts: Verdict[]
  valid: boolean | 'unknown'
  /** Router mode: the shard groups and routers the clients went through. */
  router?: { groups: number; routers: number }
  /** move-slots: every move, in order (also among the fault windows). */
  moves?: MoveRecord[]
  /**
   * Router mode: stretches of 10 s or more in which a majority of a group's members ran and
   * none led (no verdict: the faults may explain them; worth a look).
   */
  stalls?: LeaderStall[]
  /** Regions mode: the regions and their members, and how many conflict records were read. */
  regions?: {
    regions: { id: string; members: string[] }[]
    conflictRecordsRead: number
    /** Nodes whose conflict record could not be read in full, and why. */
    conflictReadErrors: string[]
  }
}

const width = 900
const height = 260
const margin = { left: 56, right: 16, top: 16, bottom: 36 }
const colors = { ok: '#2e7d32', fail: '#c62828', info: '#f9a825' }

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

function axes(
  maxX: number,
  maxY: number,
  yLabel: string,
  yTicks: number[],
  yOf: (v: number) => number,
): string {
  const x = (t: number) => margin.left + (t / maxX) * (width - margin.left - margin.right)
  const parts: string[] = []
  const bottom = height - margin.bottom
  parts.push(
    `<line x1="${margin.left}" y1="${bottom}" x2="${width - margin.right}" y2="${bottom}" stroke="#555"/>`,
    `<line x1="${margin.left}" y1="${margin.top}" x2="${margin.left}" y2="${bottom}" stroke="#555"/>`,
  )
  const step = Math.max(1, Math.ceil(maxX / 1000 / 10))
  for (let s = 0; s * 1000 <= maxX; s += step) {
    parts.push(
      `<text x="${x(s * 1000)}" y="${bottom + 14}" font-size="10" text-anchor="middle">${s}s</text>`,
    )
  }
  for (const v of yTicks) {
    const y = yOf(v)
    parts.push(
      `<line x1="${margin.left - 3}" y1="${y}" x2="${width - margin.right}" y2="${y}" stroke="#eee"/>`,
      `<text x="${margin.left - 5}" y="${y + 3}" font-size="10" text-anchor="end">${v}</text>`,
    )
  }
  parts.push(
    `<text x="12" y="${(margin.top + bottom) / 2}" font-size="11" transform="rotate(-90 12 ${(margin.top + bottom) / 2})" text-anchor="middle">${escapeXml(yLabel)}</text>`,
    `<text x="${(margin.left + width - margin.right) / 2}" y="${height - 4}" font-size="11" text-anchor="middle">time since start</text>`,
  )
  return parts.join('\n')
}

function shading(windows: FaultWindow[], maxX: number): string {
  const x = (t: number) => margin.left + (t / maxX) * (width - margin.left - margin.right)
  return windows
    .map(
      (w) =>
        `<rect x="${x(w.start)}" y="${margin.top}" width="${Math.max(1, x(w.end) - x(w.start))}" height="${height - margin.top - margin.bottom}" fill="#ff7043" fill-opacity="0.15"><title>${escapeXml(`${w.nemesis}: ${w.description}`)}</title></rect>` +
        `<text x="${x(w.start) + 2}" y="${margin.top + 10}" font-size="9" fill="#bf360c">${escapeXml(w.nemesis)}</text>`,
    )
    .join('\n')
}

/** Latency of every completed operation at its invoke time, log scale, by outcome. */
export function latencySvg(ops: Operation[], windows: FaultWindow[], durationMs: number): string {
  const maxX = Math.max(durationMs, 1)
  const latencies = ops.map((o) =>
    Number.isFinite(o.completeTime) ? o.completeTime - o.invokeTime : NaN,
  )
  const maxLatency = Math.max(10, ...latencies.filter((l) => Number.isFinite(l)))
  const logMax = Math.log10(maxLatency * 1.2)
  const logMin = -1 // 0.1 ms
  const y = (ms: number) => {
    const l = Math.log10(Math.max(ms, 0.1))
    return (
      height -
      margin.bottom -
      ((l - logMin) / (logMax - logMin)) * (height - margin.top - margin.bottom)
    )
  }
  const x = (t: number) => margin.left + (t / maxX) * (width - margin.left - margin.right)
  const ticks = [1, 10, 100, 1000, 10000].filter((t) => t <= maxLatency * 1.2)
  const points = ops
    .map((o, i) => {
      const latency = latencies[i] as number
      // An info has no completion: drawn at the top edge.
      const yy = Number.isFinite(latency) ? y(latency) : margin.top + 2
      return `<circle cx="${x(o.invokeTime).toFixed(1)}" cy="${yy.toFixed(1)}" r="1.3" fill="${colors[o.type]}" fill-opacity="0.6"/>`
    })
    .join('')
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
${shading(windows, maxX)}
${axes(maxX, maxLatency, 'latency (ms, log)', ticks, y)}
${points}
</svg>`
}

/** Completions per second, split into ok, fail and info (stacked). */
export function throughputSvg(
  ops: Operation[],
  windows: FaultWindow[],
  durationMs: number,
): string {
  const maxX = Math.max(durationMs, 1)
  const buckets = Math.ceil(maxX / 1000) + 1
  const counts = Array.from({ length: buckets }, () => ({ ok: 0, fail: 0, info: 0 }))
  for (const o of ops) {
    const t = Number.isFinite(o.completeTime) ? o.completeTime : o.invokeTime
    const b = counts[Math.min(buckets - 1, Math.floor(t / 1000))]
    if (b) b[o.type]++
  }
  const maxY = Math.max(1, ...counts.map((c) => c.ok + c.fail + c.info))
  const y = (v: number) =>
    height - margin.bottom - (v / (maxY * 1.1)) * (height - margin.top - margin.bottom)
  const x = (t: number) => margin.left + (t / maxX) * (width - margin.left - margin.right)
  const barWidth = Math.max(1, x(1000) - x(0) - 1)
  const bars = counts
    .map((c, i) => {
      let base = 0
      return (['ok', 'fail', 'info'] as const)
        .map((kind) => {
          const v = c[kind]
          if (v === 0) return ''
          const top = y(base + v)
          const bottom = y(base)
          base += v
          return `<rect x="${x(i * 1000).toFixed(1)}" y="${top.toFixed(1)}" width="${barWidth.toFixed(1)}" height="${(bottom - top).toFixed(1)}" fill="${colors[kind]}"><title>${i}s: ${v} ${kind}</title></rect>`
        })
        .join('')
    })
    .join('')
  const step = Math.pow(10, Math.floor(Math.log10(maxY)))
  const ticks = Array.from({ length: Math.floor(maxY / step) + 1 }, (_, i) => i * step)
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
${shading(windows, maxX)}
${axes(maxX, maxY, 'operations / s', ticks, y)}
${bars}
</svg>`
}

function html(
  summary: RunSummary,
  windows: FaultWindow[],
  latency: string,
  throughput: string,
): string {
  const verdictRows = summary.verdicts
    .map(
      (v) =>
        `<tr><td>${escapeXml(v.checker)}</td><td class="${v.valid === true ? 'ok' : 'bad'}">${v.valid === true ? 'valid' : v.valid === false ? 'INVALID' : 'unknown'}</td><td>${escapeXml(v.summary)}</td></tr>`,
    )
    .join('\n')
  const faultRows = windows
    .map(
      (w) =>
        `<tr><td>${(w.start / 1000).toFixed(1)}s</td><td>${(w.end / 1000).toFixed(1)}s</td><td>${escapeXml(w.nemesis)}</td><td>${escapeXml(w.description)}</td></tr>`,
    )
    .join('\n')
  const moves = summary.moves ?? []
  const moveRows = moves
    .map(
      (m) =>
        `<tr><td>${(m.start / 1000).toFixed(1)}s</td><td>${escapeXml(m.id)}</td><td>${escapeXml(m.slots)}</td><td>${escapeXml(m.from)}</td><td>${escapeXml(m.to)}</td><td>${escapeXml(m.phase)}</td><td>${(m.durationMs / 1000).toFixed(1)} s</td><td>${m.abortRequested ? 'yes' : ''}</td><td>${escapeXml(m.interrupted)}</td><td>${escapeXml(m.error)}</td></tr>`,
    )
    .join('\n')
  const movesSection =
    summary.moves === undefined
      ? ''
      : `<h2>Slot moves</h2>
<p>${moves.length} moves: ${moves.filter((m) => m.phase === 'done').length} done, ${moves.filter((m) => m.phase === 'aborted').length} aborted, ${moves.filter((m) => m.phase !== 'done' && m.phase !== 'aborted').length} other.</p>
<table><tr><th>start</th><th>id</th><th>slots</th><th>from</th><th>to</th><th>phase</th><th>took</th><th>abort asked</th><th>interrupted by</th><th>error</th></tr>
${moveRows}</table>`
  const stalls = summary.stalls ?? []
  const stallsSection =
    summary.stalls === undefined
      ? ''
      : `<h2>Groups without a leader</h2>
<p>Stretches of 10 s or more in which a majority of a group's members ran (not killed, not paused) and none said it led: ${stalls.length === 0 ? 'none.' : ''}</p>
${
  stalls.length === 0
    ? ''
    : `<table><tr><th>group</th><th>from</th><th>to</th><th>for</th><th>running</th></tr>
${stalls.map((st) => `<tr><td>${escapeXml(st.group)}</td><td>${(st.start / 1000).toFixed(1)}s</td><td>${(st.end / 1000).toFixed(1)}s</td><td>${(st.durationMs / 1000).toFixed(1)} s</td><td>${escapeXml(st.up.join(', '))}</td></tr>`).join('\n')}</table>`
}`
  const overall = summary.valid === true ? 'valid' : summary.valid === false ? 'INVALID' : 'unknown'
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>chaos: ${escapeXml(summary.workload)} under ${escapeXml(summary.nemeses.join(','))} — ${overall}</title>
<style>
body{font-family:sans-serif;max-width:960px;margin:24px auto;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}
.ok{color:#2e7d32;font-weight:bold}.bad{color:#c62828;font-weight:bold}
code{background:#f4f4f4;padding:1px 4px}.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
</style></head><body>
<h1>${escapeXml(summary.workload)} under ${escapeXml(summary.nemeses.join(', '))}: <span class="${summary.valid === true ? 'ok' : 'bad'}">${overall}</span></h1>
<p>Backend <b>${escapeXml(summary.backend)}</b>${summary.router !== undefined ? `, ${summary.router.groups} shard groups behind ${summary.router.routers} routers (clients talk to the routers only)` : ''}, ack <b>${escapeXml(summary.ack)}</b>, seed <b>${summary.seed}</b>, ${(summary.durationMs / 1000).toFixed(0)} s.
Operations: ${summary.operations.ok} ok, ${summary.operations.fail} fail, ${summary.operations.info} info (outcome unknown).</p>
<p>Replay: <code>${escapeXml(summary.command)}</code></p>
<h2>Verdicts</h2>
<table><tr><th>checker</th><th>verdict</th><th>summary</th></tr>
${verdictRows}</table>
<p>Details: <a href="verdicts.json">verdicts.json</a>; history: <a href="history.jsonl">history.jsonl</a> (one event per line).</p>
<h2>Latency</h2>
<p class="legend">Each dot is an operation at its start time; shaded bands are faults.<span style="background:${colors.ok}"></span>ok<span style="background:${colors.fail}"></span>fail<span style="background:${colors.info}"></span>info (drawn at the top: never completed)</p>
${latency}
<h2>Throughput</h2>
${throughput}
<h2>Faults</h2>
<table><tr><th>start</th><th>healed</th><th>nemesis</th><th>what</th></tr>
${faultRows}</table>
${movesSection}
${stallsSection}
</body></html>
`
}

export async function writeReport(
  dir: string,
  summary: RunSummary,
  events: HistoryEvent[],
  ops: Operation[],
  windows: FaultWindow[],
  extra: Record<string, string> = {},
): Promise<void> {
  await mkdir(dir, { recursive: true })
  const latency = latencySvg(ops, windows, summary.durationMs)
  const throughput = throughputSvg(ops, windows, summary.durationMs)
  await Promise.all([
    writeFile(join(dir, 'history.jsonl'), events.map((e) => JSON.stringify(e)).join('\n') + '\n'),
    writeFile(join(dir, 'verdicts.json'), JSON.stringify(summary, null, 2) + '\n'),
    writeFile(join(dir, 'faults.json'), JSON.stringify(windows, null, 2) + '\n'),
    writeFile(join(dir, 'latency.svg'), latency),
    writeFile(join(dir, 'throughput.svg'), throughput),
    writeFile(join(dir, 'report.html'), html(summary, windows, latency, throughput)),
    ...Object.entries(extra).map(([name, text]) => writeFile(join(dir, name), text)),
  ])
}
