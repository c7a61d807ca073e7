/**
 * deploy/prometheus/kvstore-rules.yml: clean under the real `promtool check rules`, its unit
 * tests pass under `promtool test rules` (and fail when a rule is broken), and every series a
 * rule reads is one the node exports.
 */
import { readFileSync, readdirSync } from 'node:fs'
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  exportedMetrics,
  promtool,
  readRules,
  recordingRules,
  resolveExpr,
  rulesFile,
  rulesTestDir,
} from './monitoring.js'
import { parse } from 'yaml'

/** deploy/prometheus/tests/*.test.yml: the promtool unit test files. */
const testFiles = readdirSync(rulesTestDir)
  .filter((f) => f.endsWith('.test.yml'))
  .map((f) => join(rulesTestDir, f))
const rulesTestFile = join(rulesTestDir, 'kvstore-rules.test.yml')

describe('Prometheus rules', () => {
  it('pass promtool check rules', async () => {
    const result = await promtool(['check', 'rules', rulesFile])
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    const rules = readRules().groups.flatMap((g) => g.rules)
    expect(result.stdout).toContain(`SUCCESS: ${rules.length} rules found`)
  })

  it('pass their promtool unit tests', async () => {
    expect(testFiles).toContain(rulesTestFile)
    const result = await promtool(['test', 'rules', ...testFiles])
    expect(result.stdout + result.stderr).not.toContain('FAILED')
    expect((result.stdout + result.stderr).match(/SUCCESS/g)?.length).toBe(testFiles.length)
    expect(result.code).toBe(0)
  })

  it('have a unit test in which each alert fires and one in which it stays quiet', () => {
    const fires = new Set<string>()
    const quiet = new Set<string>()
    for (const file of testFiles) {
      const tests = parse(readFileSync(file, 'utf8')) as {
        tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[]
      }
      for (const t of tests.tests)
        for (const a of t.alert_rule_test ?? [])
          (a.exp_alerts.length > 0 ? fires : quiet).add(a.alertname)
    }
    const alerts = readRules()
      .groups.flatMap((g) => g.rules)
      .flatMap((r) => (r.alert === undefined ? [] : [r.alert]))
    expect(alerts.length).toBeGreaterThanOrEqual(14)
    expect(alerts.filter((a) => !fires.has(a))).toEqual([])
    expect(alerts.filter((a) => !quiet.has(a))).toEqual([])
  })

  it('fail their unit tests when a threshold is broken, and promtool check fails bad PromQL', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kv-rules-'))
    try {
      await mkdir(join(dir, 'tests'))
      await copyFile(rulesTestFile, join(dir, 'tests', 'kvstore-rules.test.yml'))
      const text = await readFile(rulesFile, 'utf8')
      // The lag alert now needs 500 s of lag: the unit test that expects it at 50 s fails.
      const broken = text.replace(
        'kv:follower_lag_seconds:leader > 5\n',
        'kv:follower_lag_seconds:leader > 500\n',
      )
      expect(broken).not.toBe(text)
      await writeFile(join(dir, 'kvstore-rules.yml'), broken)
      const result = await promtool(['test', 'rules', join(dir, 'tests', 'kvstore-rules.test.yml')])
      expect(result.code).not.toBe(0)
      expect(result.stdout + result.stderr).toContain('KvFollowerLagging')
      await writeFile(
        join(dir, 'kvstore-rules.yml'),
        text.replace(
          'sum by (job) (kv_replication_is_leader)',
          'sum by (job) (kv_replication_is_leader',
        ),
      )
      const check = await promtool(['check', 'rules', join(dir, 'kvstore-rules.yml')])
      expect(check.code).not.toBe(0)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('read only series the node exports', () => {
    const exported = exportedMetrics()
    const records = recordingRules()
    // The check itself: a misspelt metric, a histogram suffix on a gauge, a missing record.
    expect(
      resolveExpr(
        'kv_replication_lag_secs + kv_epoch_bucket + kv:no_such:record + kv_storage_batch_write_seconds_bucket{le="1"}',
        records,
        exported,
      ),
    ).toEqual({
      metrics: ['kv_storage_batch_write_seconds_bucket'],
      unknown: ['kv_replication_lag_secs', 'kv_epoch_bucket', 'kv:no_such:record'],
    })
    const read = new Set<string>()
    for (const group of readRules().groups) {
      for (const rule of group.rules) {
        const { metrics, unknown } = resolveExpr(rule.expr, records, exported)
        expect([rule.record ?? rule.alert, unknown]).toEqual([rule.record ?? rule.alert, []])
        for (const m of metrics) read.add(m)
      }
    }
    // The issue's six: no leader, follower lag, rollbacks, archive lag, hints, fsync latency.
    for (const m of [
      'kv_replication_is_leader',
      'kv_replication_lag_seconds',
      'kv_rollback_entries_total',
      'kv_archive_lag_seconds',
      'kv_hint_backlog',
      'kv_storage_batch_write_seconds_bucket',
    ])
      expect(read).toContain(m)
  })

  it('name recording rules level:metric:operations, and give every alert a severity and text', () => {
    for (const group of readRules().groups) {
      for (const rule of group.rules) {
        if (rule.record !== undefined) {
          expect(rule.record).toMatch(/^kv:[a-z0-9_]+:[a-z0-9_]+$/)
          continue
        }
        expect(rule.alert).toMatch(/^Kv[A-Za-z]+$/)
        expect(['critical', 'warning', 'info']).toContain(rule.labels?.severity)
        expect(rule.annotations?.summary?.length ?? 0).toBeGreaterThan(10)
        expect(rule.annotations?.description?.length ?? 0).toBeGreaterThan(20)
      }
    }
  })
})
