/**
 * What the monitoring tests share: where deploy/prometheus and deploy/grafana are, the
 * metric names a PromQL expression reads, and the names the node exports (from the metrics
 * module that fills GET /metrics).
 */
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { parse } from 'yaml'
import { metricsCatalog, type MetricInfo } from '../src/index.js'

export const rulesFile = fileURLToPath(
  new URL('../../../deploy/prometheus/kvstore-rules.yml', import.meta.url),
)
export const rulesTestDir = fileURLToPath(
  new URL('../../../deploy/prometheus/tests/', import.meta.url),
)
export const dashboardFile = fileURLToPath(
  new URL('../../../deploy/grafana/kvstore-dashboard.json', import.meta.url),
)

export interface RuleFile {
  groups: {
    name: string
    rules: {
      record?: string
      alert?: string
      expr: string
      for?: string
      labels?: Record<string, string>
      annotations?: Record<string, string>
    }[]
  }[]
}

export function readRules(path = rulesFile): RuleFile {
  return parse(readFileSync(path, 'utf8')) as RuleFile
}

/** Recording rule name -> its expression. */
export function recordingRules(rules = readRules()): Map<string, string> {
  const out = new Map<string, string>()
  for (const group of rules.groups)
    for (const rule of group.rules) if (rule.record !== undefined) out.set(rule.record, rule.expr)
  return out
}

/**
 * The series names a PromQL expression selects: `kv_*` metrics, `kv:*` recording rules and
 * Prometheus's own `up`. Quoted strings (label values) are dropped first; our label names
 * never start with `kv`.
 */
export function seriesNames(expr: string): string[] {
  const unquoted = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
  const names = new Set<string>()
  for (const match of unquoted.matchAll(/(?<![A-Za-z0-9_:$])(kv[_:][A-Za-z0-9_:]+|up)\b/g))
    names.add(match[1] as string)
  return [...names]
}

/** Every metric the node can export (every cluster mode), by name. */
export function exportedMetrics(): Map<string, MetricInfo> {
  return new Map(metricsCatalog().map((m) => [m.name, m]))
}

/**
 * The exported metric a series name belongs to (`x_bucket`, `x_sum`, `x_count` of a histogram
 * `x`), or undefined when the node exports no such series.
 */
export function metricOfSeries(
  name: string,
  exported: Map<string, MetricInfo>,
): MetricInfo | undefined {
  const direct = exported.get(name)
  if (direct !== undefined && direct.type !== 'histogram') return direct
  const suffix = /^(.*)_(bucket|sum|count)$/.exec(name)
  if (suffix === null) return undefined
  const base = exported.get(suffix[1] as string)
  if (base === undefined) return undefined
  if (base.type === 'histogram') return base
  if (base.type === 'summary' && suffix[2] !== 'bucket') return base
  return undefined
}

/**
 * The node metrics an expression reads, following recording rules to their expressions;
 * `unknown` lists the names that are neither an exported metric, a recording rule nor `up`.
 */
export function resolveExpr(
  expr: string,
  records = recordingRules(),
  exported = exportedMetrics(),
): { metrics: string[]; unknown: string[] } {
  const metrics = new Set<string>()
  const unknown = new Set<string>()
  const visit = (e: string, depth: number): void => {
    if (depth > 10) throw new Error(`recording rules nest too deep at ${e}`)
    for (const name of seriesNames(e)) {
      if (name === 'up') continue
      const record = records.get(name)
      if (record !== undefined) visit(record, depth + 1)
      else if (metricOfSeries(name, exported) !== undefined) metrics.add(name)
      else unknown.add(name)
    }
  }
  visit(expr, 0)
  return { metrics: [...metrics], unknown: [...unknown] }
}

const run = promisify(execFile)

/** Runs promtool; its exit code and output (a failure is returned, not thrown). */
export async function promtool(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('promtool', args, { timeout: 60_000 })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string }
    if (typeof e.code !== 'number') throw err
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}
