/**
 * Latency over time, per second of a run: an SVG file (a panel per series, p99 and max on a
 * log scale, with reference lines) and a coarse text plot for the terminal and the markdown.
 */
import type { SecondStats } from './latency.js'

export interface Series {
  title: string
  perSecond: SecondStats[]
}

/** Horizontal reference lines drawn on every panel. */
export interface Reference {
  ms: number
  label: string
}

const escape = (text: string): string =>
  text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

const tickLabel = (ms: number): string => (ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`)

/** An SVG of per-second p99 and max, one panel per series, log scale from 1 ms. */
export function latencySvg(series: Series[], references: Reference[] = []): string {
  const width = 900
  const panelHeight = 240
  const left = 70
  const right = 20
  const top = 40
  const bottom = 40
  const plotWidth = width - left - right
  const plotHeight = panelHeight - top - bottom
  const height = panelHeight * series.length + 30
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
  ]
  series.forEach((s, index) => {
    const y0 = index * panelHeight
    const seconds = Math.max(1, s.perSecond.length)
    const peak = Math.max(1, ...s.perSecond.map((p) => p.max), ...references.map((r) => r.ms))
    const decades = Math.max(1, Math.ceil(Math.log10(peak)))
    const x = (second: number) => left + (second / seconds) * plotWidth
    const y = (ms: number) =>
      y0 + top + plotHeight - (Math.log10(Math.max(1, ms)) / decades) * plotHeight
    parts.push(
      `<text x="${left}" y="${y0 + 24}" font-size="14" font-weight="bold">${escape(s.title)}</text>`,
      `<rect x="${left}" y="${y0 + top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#999"/>`,
    )
    for (let d = 0; d <= decades; d++) {
      const ms = 10 ** d
      parts.push(
        `<line x1="${left}" x2="${left + plotWidth}" y1="${y(ms)}" y2="${y(ms)}" stroke="#eee"/>`,
        `<text x="${left - 6}" y="${y(ms) + 4}" text-anchor="end">${tickLabel(ms)}</text>`,
      )
    }
    const step = Math.max(1, Math.ceil(seconds / 10 / 5) * 5)
    for (let second = 0; second <= seconds; second += step) {
      parts.push(
        `<text x="${x(second)}" y="${y0 + top + plotHeight + 16}" text-anchor="middle">${second} s</text>`,
      )
    }
    for (const r of references) {
      parts.push(
        `<line x1="${left}" x2="${left + plotWidth}" y1="${y(r.ms)}" y2="${y(r.ms)}" stroke="#d62728" stroke-dasharray="6 4" stroke-width="1"/>`,
        `<text x="${left + plotWidth - 4}" y="${y(r.ms) - 4}" text-anchor="end" fill="#d62728">${escape(r.label)}</text>`,
      )
    }
    const line = (pick: (p: SecondStats) => number, color: string) => {
      const points = s.perSecond
        .filter((p) => p.count > 0)
        .map((p) => `${x(p.second + 0.5).toFixed(1)},${y(pick(p)).toFixed(1)}`)
      if (points.length > 0) {
        parts.push(
          `<polyline points="${points.join(' ')}" fill="none" stroke="${color}" stroke-width="1.5"/>`,
        )
      }
    }
    line((p) => p.max, '#ff7f0e')
    line((p) => p.p99, '#1f77b4')
  })
  const legendY = height - 10
  parts.push(
    `<line x1="${left}" x2="${left + 24}" y1="${legendY - 4}" y2="${legendY - 4}" stroke="#1f77b4" stroke-width="2"/>`,
    `<text x="${left + 30}" y="${legendY}">p99 per second</text>`,
    `<line x1="${left + 150}" x2="${left + 174}" y1="${legendY - 4}" y2="${legendY - 4}" stroke="#ff7f0e" stroke-width="2"/>`,
    `<text x="${left + 180}" y="${legendY}">max per second</text>`,
    `<text x="${left + 300}" y="${legendY}">(requests counted in the second they were due; latency from when they were due)</text>`,
    '</svg>',
  )
  return `${parts.join('\n')}\n`
}

/**
 * A coarse text plot: one column per second (or per group of seconds, to fit `width`), one
 * row per level (log scale); `#` where the p99 reached the level, `.` where only the max did.
 */
export function asciiPlot(perSecond: SecondStats[], width = 60): string[] {
  const levels = [3000, 1000, 300, 100, 30, 10, 3, 1]
  const group = Math.max(1, Math.ceil(perSecond.length / width))
  const columns: { p99: number; max: number }[] = []
  for (let i = 0; i < perSecond.length; i += group) {
    const slice = perSecond.slice(i, i + group)
    columns.push({
      p99: Math.max(0, ...slice.map((s) => s.p99)),
      max: Math.max(0, ...slice.map((s) => s.max)),
    })
  }
  const peak = Math.max(0, ...columns.map((c) => c.max))
  const shown = levels.filter(
    (level, i) => level <= peak || i === levels.length - 1 || level <= 100,
  )
  const lines = shown.map((level) => {
    const cells = columns.map((c) => (c.p99 >= level ? '#' : c.max >= level ? '.' : ' '))
    return `${tickLabel(level).padStart(7)} |${cells.join('')}`
  })
  const seconds = perSecond.length
  const axis = `${' '.repeat(8)}+${'-'.repeat(columns.length)}`
  const end = `${seconds} s`
  const labels = `${' '.repeat(9)}0 s${end.padStart(Math.max(end.length, columns.length - 3))}`
  return [
    ...lines,
    axis,
    labels,
    `${' '.repeat(9)}# p99 per ${group === 1 ? 'second' : `${group} s`}, . max; latency from when each request was due`,
  ]
}
