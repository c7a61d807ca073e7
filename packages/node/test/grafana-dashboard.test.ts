/**
 * deploy/grafana/kvstore-dashboard.json: every panel's query (and every template variable's)
 * names only metrics the node exports, read from the metrics module that fills GET /metrics,
 * and the ones every node serves are in a real node's /metrics. test/prometheus.test.ts runs
 * each query against the real Prometheus scraping a real cluster.
 */
import { readFileSync } from 'node:fs'
import { metricsText } from '@kvstore/testkit'
import { startTestNode, type TestNode } from './helpers.js'
import {
  dashboardFile,
  exportedMetrics,
  metricOfSeries,
  resolveExpr,
  seriesNames,
} from './monitoring.js'

interface Panel {
  id: number
  type: string
  title: string
  datasource?: { type: string; uid: string }
  gridPos: { h: number; w: number; x: number; y: number }
  targets?: { refId: string; expr: string; datasource?: { uid: string } }[]
  panels?: Panel[]
}

interface Dashboard {
  uid: string
  title: string
  panels: Panel[]
  templating: { list: { name: string; type: string; query?: string | { query: string } }[] }
}

const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8')) as Dashboard
const allPanels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])])
const queries = allPanels.flatMap((p) =>
  (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })),
)

describe('the Grafana dashboard', () => {
  let node: TestNode
  beforeAll(async () => {
    node = await startTestNode()
  })
  afterAll(async () => {
    await node?.stop()
  })

  it('has panels with queries, unique ids and a Prometheus data source variable', () => {
    expect(dashboard.uid).toBe('kvstore-cluster')
    expect(queries.length).toBeGreaterThan(30)
    const ids = allPanels.map((p) => p.id)
    expect(new Set(ids).size).toBe(ids.length)
    for (const p of allPanels.filter((p) => p.type !== 'row')) {
      expect([p.title, p.targets?.length ?? 0]).not.toEqual([p.title, 0])
      expect([p.title, p.datasource?.uid]).toEqual([p.title, '${datasource}'])
      expect(p.gridPos.x + p.gridPos.w).toBeLessThanOrEqual(24)
    }
    const names = dashboard.templating.list.map((v) => v.name)
    expect(names).toEqual(['datasource', 'job', 'instance'])
  })

  it('queries only metrics the node exports', () => {
    const exported = exportedMetrics()
    const variableQueries = dashboard.templating.list.flatMap((v) =>
      v.type === 'query' && v.query !== undefined
        ? [
            {
              panel: `variable ${v.name}`,
              expr: typeof v.query === 'string' ? v.query : v.query.query,
            },
          ]
        : [],
    )
    const read = new Set<string>()
    for (const { panel, expr } of [...queries, ...variableQueries]) {
      const { metrics, unknown } = resolveExpr(expr, new Map(), exported)
      expect([panel, expr, unknown]).toEqual([panel, expr, []])
      // Each query reads a node metric, or Prometheus's own `up` for the scrape targets.
      const reads = metrics.length + (seriesNames(expr).includes('up') ? 1 : 0)
      expect([panel, expr, reads]).not.toEqual([panel, expr, 0])
      for (const m of metrics) read.add(m)
    }
    // What the issue asks the dashboard to show.
    for (const m of [
      'kv_replication_is_leader',
      'kv_epoch',
      'kv_commit_lsn',
      'kv_applied_lsn',
      'kv_replication_lag_seconds',
      'kv_elections_won_total',
      'kv_rollback_records',
      'kv_hint_backlog',
      'kv_storage_batch_write_seconds_bucket',
      'kv_archive_lag_seconds',
    ])
      expect(read).toContain(m)
  })

  it('reads, of the metrics every node serves, only ones in a real node’s /metrics', async () => {
    const exported = exportedMetrics()
    const text = await metricsText(node.url)
    const served = new Set(
      text
        .split('\n')
        .filter((l) => l.startsWith('# TYPE '))
        .map((l) => l.split(' ')[2] as string),
    )
    expect(served.size).toBeGreaterThan(40)
    let checked = 0
    for (const { panel, expr } of queries) {
      for (const series of resolveExpr(expr, new Map(), exported).metrics) {
        const metric = metricOfSeries(series, exported)
        if (metric?.scope !== 'every node') continue
        checked++
        expect([panel, metric.name, served.has(metric.name)]).toEqual([panel, metric.name, true])
      }
    }
    expect(checked).toBeGreaterThan(15)
  })
})
