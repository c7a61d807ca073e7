/**
 * The real Prometheus (Debian's `prometheus`) scraping a real 3-node cluster over TLS with the
 * example deploy/prometheus/prometheus.yml (a `monitor` user's client certificate), evaluating
 * deploy/prometheus/kvstore-rules.yml every second:
 * a healthy cluster fires nothing and has one leader; a follower paused with SIGSTOP while
 * writes go on fires KvFollowerLagging (seen at Prometheus's /api/v1/alerts), naming it, and
 * the alert clears after SIGCONT; both followers paused make the leader step down and fire
 * KvNoLeader. Every query of deploy/grafana's dashboard runs against it.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { parse, stringify } from 'yaml'
import { TestCluster, kvBin, until } from '@kvstore/testkit'
import { rootEnv, testCertsDir } from './support/certs.js'
import { freePorts } from './support/ports.js'
import { useTempDir } from './support/temp.js'

const run = promisify(execFile)
const exampleConfig = fileURLToPath(new URL('../deploy/prometheus/prometheus.yml', import.meta.url))
const rulesFile = fileURLToPath(new URL('../deploy/prometheus/kvstore-rules.yml', import.meta.url))
const dashboardFile = fileURLToPath(
  new URL('../deploy/grafana/kvstore-dashboard.json', import.meta.url),
)
const job = 'kvstore-test'

interface Alert {
  labels: Record<string, string>
  state: 'pending' | 'firing'
  value: string
}

interface PromResult {
  metric: Record<string, string>
  value: [number, string]
}

describe('Prometheus alerts on a real cluster', () => {
  const dir = useTempDir('kv-prometheus-')
  let cluster: TestCluster
  let prometheus: ChildProcess | undefined
  let promUrl = ''

  async function promApi<T>(path: string): Promise<T> {
    const res = await fetch(`${promUrl}${path}`)
    const body = (await res.json()) as { status: string; data: T; error?: string }
    if (body.status !== 'success') throw new Error(`${path}: ${body.error ?? res.status}`)
    return body.data
  }
  const alerts = async () => (await promApi<{ alerts: Alert[] }>('/api/v1/alerts')).alerts
  const query = (expr: string) =>
    promApi<{ resultType: string; result: PromResult[] }>(
      `/api/v1/query?query=${encodeURIComponent(expr)}`,
    )

  beforeAll(async () => {
    cluster = await TestCluster.start(3)
    // As docs/monitoring.md says: a client certificate for a user holding only the monitor
    // role, made with the real CLI (the CA copied from the run's certs).
    const certs = join(dir(), 'certs')
    await mkdir(certs)
    for (const file of ['ca.crt', 'ca.key', 'cluster-id'])
      await copyFile(join(testCertsDir(), file), join(certs, file))
    await run(process.execPath, [kvBin, 'certs', 'add-user', 'prometheus', '--dir', certs])
    await run(
      process.execPath,
      [
        kvBin,
        '--url',
        cluster.leader.url,
        'user',
        'add',
        'prometheus',
        '--roles',
        'monitor',
        '--no-password',
      ],
      { env: { ...process.env, ...rootEnv() } },
    )
    await cluster.waitForApplied()

    // deploy/prometheus/prometheus.yml with this run's paths, targets and 1 s intervals.
    const port = await freePorts(1)
    promUrl = `http://127.0.0.1:${port}`
    const config = parse(await readFile(exampleConfig, 'utf8')) as {
      global: Record<string, string>
      rule_files: string[]
      scrape_configs: {
        job_name: string
        scheme: string
        tls_config: Record<string, string>
        static_configs: { targets: string[] }[]
      }[]
    }
    expect(config.rule_files).toEqual(['kvstore-rules.yml'])
    const scrape = config.scrape_configs[0]!
    expect(scrape.scheme).toBe('https')
    expect(Object.keys(scrape.tls_config).sort()).toEqual(['ca_file', 'cert_file', 'key_file'])
    config.global = { scrape_interval: '1s', scrape_timeout: '900ms', evaluation_interval: '1s' }
    config.rule_files = [rulesFile]
    scrape.job_name = job
    scrape.tls_config = {
      ca_file: join(certs, 'ca.crt'),
      cert_file: join(certs, 'prometheus.crt'),
      key_file: join(certs, 'prometheus.key'),
    }
    scrape.static_configs = [{ targets: cluster.members.map((m) => new URL(m.url).host) }]
    await writeFile(join(dir(), 'prometheus.yml'), stringify(config))
    const check = await run('promtool', ['check', 'config', join(dir(), 'prometheus.yml')])
    expect(check.stdout).toContain('SUCCESS')
    const log = createWriteStream(join(dir(), 'prometheus.log'))
    prometheus = spawn(
      'prometheus',
      [
        `--config.file=${join(dir(), 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir(), 'tsdb')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--storage.tsdb.retention.time=1h',
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    prometheus.stdout?.pipe(log)
    prometheus.stderr?.pipe(log)
    await until(
      'Prometheus ready',
      async () => (await fetch(`${promUrl}/-/ready`).catch(() => null))?.status === 200,
      30_000,
      200,
    ).catch(async (err: unknown) => {
      throw new Error(`${String(err)}\n${await readFile(join(dir(), 'prometheus.log'), 'utf8')}`)
    })
    // Every member scraped with the monitor user's certificate.
    await until(
      'every member scraped',
      async () => {
        const data = await promApi<{ activeTargets: { health: string; lastError: string }[] }>(
          '/api/v1/targets',
        )
        return data.activeTargets.length === 3 && data.activeTargets.every((t) => t.health === 'up')
      },
      30_000,
      250,
    ).catch(async (err: unknown) => {
      throw new Error(
        `${String(err)}: ${JSON.stringify(await promApi('/api/v1/targets'))}\n${await readFile(join(dir(), 'prometheus.log'), 'utf8')}`,
      )
    })
  }, 90_000)

  afterAll(async () => {
    for (const m of cluster?.members ?? []) cluster.resume(m.id)
    const child = prometheus
    if (child !== undefined && child.exitCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(timer)
    }
    await cluster?.stop()
  })

  it('sees one leader and fires nothing on a healthy cluster', async () => {
    // Right after the first scrapes a record may have seen only some members: wait for the
    // leader's series, then hold it to one leader over the next seconds.
    await until(
      'kv:leaders:sum at 1',
      async () => Number((await query(`kv:leaders:sum{job="${job}"}`)).result[0]?.value[1]) === 1,
      15_000,
      250,
    )
    await new Promise((resolve) => setTimeout(resolve, 4000))
    for (const over of ['min_over_time', 'max_over_time']) {
      const leaders = await query(`${over}(kv:leaders:sum{job="${job}"}[3s])`)
      expect([over, leaders.result.map((r) => Number(r.value[1]))]).toEqual([over, [1]])
    }
    const up = await query(`sum(up{job="${job}"})`)
    expect(Number(up.result[0]?.value[1])).toBe(3)
    // Nothing fires. The one thing a healthy cluster may show is a rollback record of its own
    // start: under load an early leader can lose an entry to the next one (it is logged and in
    // GET /admin/v1/rollbacks), and that alert must then be true of the node it names.
    for (const alert of (await alerts()).filter((a) => a.labels.job === job)) {
      expect([alert.labels.alertname, alert.state]).toEqual([
        'KvRollbackRecordsUnreconciled',
        'pending',
      ])
      const records = await query(`kv_rollback_records{instance="${alert.labels.instance}"}`)
      expect(Number(records.result[0]?.value[1])).toBeGreaterThan(0)
    }
  })

  it('runs every Grafana panel query against the cluster', async () => {
    const dashboard = JSON.parse(await readFile(dashboardFile, 'utf8')) as {
      panels: { title: string; type: string; targets?: { expr: string }[] }[]
    }
    const vars = (expr: string) =>
      expr
        .replaceAll('$__rate_interval', '1m')
        .replaceAll('$__range', '5m')
        .replaceAll('$job', job)
        .replaceAll('$instance', '.*')
    let answered = 0
    for (const panel of dashboard.panels) {
      for (const target of panel.targets ?? []) {
        const data = await query(vars(target.expr)).catch((err: unknown) => {
          throw new Error(`panel ${panel.title}: ${String(err)}`)
        })
        expect(['vector', 'scalar', 'matrix']).toContain(data.resultType)
        if (data.result.length > 0) answered++
      }
    }
    // Single-leader panels answer (leaderless and archive-only ones may be empty here).
    expect(answered).toBeGreaterThanOrEqual(8)
  })

  it('fires KvFollowerLagging for a paused follower, and clears it after SIGCONT', async () => {
    const paused = cluster.followers[0]!.id
    const leaderUrl = cluster.leader.url
    let writing = true
    let writes = 0
    const deadline = Date.now() + 100_000
    const load = (async () => {
      for (let i = 0; writing && Date.now() < deadline; i++) {
        const res = await fetch(`${leaderUrl}/v1/kv/prom/${i % 50}`, {
          method: 'PUT',
          body: `v${i}`,
        })
        await res.arrayBuffer()
        if (res.ok) writes++
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    })()
    const started = Date.now()
    let firedAfterMs = 0
    let sawPending = false
    try {
      cluster.pause(paused)
      await until(
        `KvFollowerLagging firing for ${paused}`,
        async () => {
          const lagging = (await alerts()).filter(
            (a) =>
              a.labels.alertname === 'KvFollowerLagging' &&
              a.labels.job === job &&
              a.labels.member === paused,
          )
          if (lagging.some((a) => a.state === 'pending')) sawPending = true
          return lagging.some((a) => a.state === 'firing')
        },
        80_000,
        500,
      )
      firedAfterMs = Date.now() - started
      // The rule's threshold (5 s) plus its `for` (30 s): never sooner.
      expect(firedAfterMs).toBeGreaterThan(30_000)
      expect(sawPending).toBe(true)
      // Only the paused follower lags, in the leader's view.
      const lag = await query(`kv:follower_lag_seconds:leader{job="${job}"} > 5`)
      expect(lag.result.map((r) => r.metric.member)).toEqual([paused])
      expect(writes).toBeGreaterThan(100)
    } finally {
      cluster.resume(paused)
    }
    await until(
      'KvFollowerLagging cleared',
      async () =>
        !(await alerts()).some(
          (a) => a.labels.alertname === 'KvFollowerLagging' && a.labels.job === job,
        ),
      30_000,
      500,
    )
    writing = false
    await load
    expect(firedAfterMs).toBeLessThan(80_000)
  }, 150_000)

  it('fires KvNoLeader when both followers are paused and the leader steps down', async () => {
    const leader = cluster.leader
    const paused = cluster.followers.map((m) => m.id)
    const hosts = cluster.members.filter((m) => m.id !== leader.id).map((m) => new URL(m.url).host)
    const started = Date.now()
    let firedAfterMs = 0
    try {
      for (const id of paused) cluster.pause(id)
      // The leader hears no majority, steps down, and says so on /metrics.
      await until(
        'the leader stepped down',
        async () =>
          Number(
            (await query(`kv_replication_is_leader{instance="${new URL(leader.url).host}"}`))
              .result[0]?.value[1],
          ) === 0,
        30_000,
        250,
      )
      await until(
        'KvNoLeader firing',
        async () =>
          (await alerts()).some(
            (a) =>
              a.labels.alertname === 'KvNoLeader' && a.labels.job === job && a.state === 'firing',
          ),
        60_000,
        500,
      )
      firedAfterMs = Date.now() - started
      expect(firedAfterMs).toBeGreaterThan(30_000)
      // The paused members are down for Prometheus too (KvNodeDown waits a minute).
      const down = (await alerts()).filter((a) => a.labels.alertname === 'KvNodeDown')
      expect(down.map((a) => a.labels.instance).sort()).toEqual([...hosts].sort())
    } finally {
      for (const id of paused) cluster.resume(id)
    }
    await cluster.waitForLeader()
    await until(
      'KvNoLeader cleared',
      async () =>
        !(await alerts()).some((a) => a.labels.alertname === 'KvNoLeader' && a.labels.job === job),
      30_000,
      500,
    )
    expect(firedAfterMs).toBeLessThan(90_000)
  }, 150_000)
})
