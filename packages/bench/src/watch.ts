/**
 * `pnpm bench --suite watch`: watch streams (GET /v1/watch, NDJSON over HTTP/2) on a 3-node
 * single-leader cluster as shipped (TLS, tokens; the bench's client certificate is root's).
 *
 * Watchers are spread round-robin over the three members (leader and both followers), all on
 * the prefix the writer writes under, each on one HTTP/2 stream; streams share sessions, at
 * most 100 per session (the node's --h2-streams-max is 256), so 1,000 watchers take 4 sessions
 * per member. Each starts "from now" and the phase begins once every one has had its first
 * progress event. A writer PUTs 100-byte values with ack=quorum to the leader over HTTP/1.1,
 * each key naming the phase, the write's sequence number and the time it was sent
 * (performance.now() of this process: the watchers run in it too, so arrival and send times
 * are on one clock). Phases, each --duration seconds (5), first with --few-watchers (10), then
 * with --watchers (1,000) in all:
 *
 *   - one write at a time: each sent 20 ms after every watcher got the one before (the lag's
 *     floor: no batching, no queueing);
 *   - writes paced at --rate (300/s);
 *   - writes as fast as --writers (16) closed loops go.
 *
 * After each phase's last acknowledgement the bench waits (up to 20 s) until every watcher has
 * every acknowledged write, then counts, per watcher, the acknowledged writes it never got, the
 * changes it got twice or out of LSN order, and the streams the node cut off (a watcher that
 * is cut off or whose stream breaks watches again on the same member from its last position,
 * as the SDK would). Lag is arrival at the watcher minus the send time in the key (so it holds
 * the write's own quorum latency, also reported), per member role; and, per write, from its
 * acknowledgement to its arrival at the last watcher of each role. Then every stream is
 * cancelled and the bench waits for each member's kv_watchers to fall to 0 (watchers
 * released). The bench process parses every event itself on the same 2 cores as the three
 * nodes: its own event-loop delay is reported beside the lag.
 */
import { readFile, mkdtemp, rm } from 'node:fs/promises'
import http2, { type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Pool } from 'undici'
import { fmt, gauge, say, sleep } from './common.js'
import { Latencies, type LatencySummary } from './latency.js'
import { cpuMeter, pidOf, startBenchCluster, type BenchMember } from './node-process.js'
import { loadAverage } from './proc.js'
import { publish } from './report.js'
import { benchSecurity, type BenchSecurity, type SecurityProfile } from './security.js'
import {
  LineSplitter,
  WatcherTally,
  benchKey,
  completeness,
  parseWatchLine,
  readBenchKey,
} from './watch-tally.js'

export interface WatchBenchOptions {
  security: SecurityProfile
  durationS: number
  /** Writes per second of the paced phases. */
  rate: number
  watchers: number
  fewWatchers: number
  /** Closed loops of the as-fast-as-it-goes phases. */
  writers: number
  valueBytes: number
  out: string
  command: string
}

type Role = 'leader' | 'follower'
const prefix = 'wb/'
const streamsPerSession = 100
const settleTimeoutMs = 20_000

interface Member {
  id: string
  url: string
  role: Role
  pid: number
}

/** The HTTP/2 sessions to one member, each carrying up to `streamsPerSession` watchers. */
class Sessions {
  private readonly sessions: ClientHttp2Session[] = []
  constructor(
    private readonly url: string,
    private readonly tls: BenchSecurity['client']['tls'],
  ) {}

  get(index: number): ClientHttp2Session {
    const slot = Math.floor(index / streamsPerSession)
    const existing = this.sessions[slot]
    if (existing !== undefined && !existing.closed && !existing.destroyed) return existing
    const session = http2.connect(this.url, {
      ...(this.tls ?? {}),
      // Room for many streams' events without waiting on WINDOW_UPDATEs.
      settings: { initialWindowSize: 1 << 20 },
    })
    session.on('connect', () => session.setLocalWindowSize(32 << 20))
    session.on('error', () => {})
    this.sessions[slot] = session
    return session
  }

  close(): void {
    for (const s of this.sessions) s.destroy()
  }
}

/**
 * Per write (by sequence number) and role: when the last watcher of that role got it; and when
 * the writer got the write's acknowledgement. Grown as writes are sent.
 */
class Arrivals {
  lastAt: Record<Role, Float64Array> = {
    leader: new Float64Array(1 << 14),
    follower: new Float64Array(1 << 14),
  }
  ackAt = new Float64Array(1 << 14)

  private grow(seq: number): void {
    if (seq < this.ackAt.length) return
    let size = this.ackAt.length
    while (size <= seq) size *= 2
    const bigger = (a: Float64Array) => {
      const b = new Float64Array(size)
      b.set(a)
      return b
    }
    this.ackAt = bigger(this.ackAt)
    this.lastAt = { leader: bigger(this.lastAt.leader), follower: bigger(this.lastAt.follower) }
  }

  arrived(seq: number, role: Role, at: number): void {
    this.grow(seq)
    const last = this.lastAt[role]
    if ((last[seq] ?? 0) < at) last[seq] = at
  }

  acked(seq: number, at: number): void {
    this.grow(seq)
    this.ackAt[seq] = at
  }
}

interface PhaseLag {
  leader: Latencies
  follower: Latencies
  /** When the last event of the phase arrived, at any watcher. */
  lastArrival: number
}

/** One watch stream on one member, watching again from its position when the stream ends. */
class BenchWatcher {
  readonly tally: WatcherTally
  private position: number | null = null
  private stream: ClientHttp2Stream | null = null
  private closing = false
  private splitter = new LineSplitter()
  private ready: (() => void) | null = null
  reconnects = 0
  cutOff = 0
  readonly errors: string[] = []

  constructor(
    readonly member: Member,
    private readonly sessions: Sessions,
    private readonly index: number,
    private readonly lags: PhaseLag[],
    private readonly arrivals: Arrivals,
  ) {
    this.tally = new WatcherTally(lags.length)
  }

  /** Opens the stream; resolves at its first progress event. */
  open(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.ready = resolve
      const from = this.position === null ? '' : `&fromLsn=${this.position}`
      const req = this.sessions.get(this.index).request({
        ':path': `/v1/watch?prefix=${encodeURIComponent(prefix)}${from}`,
        accept: 'application/x-ndjson',
      })
      this.stream = req
      this.splitter = new LineSplitter()
      req.setEncoding('latin1')
      let status = 0
      req.on('response', (headers) => {
        status = Number(headers[':status'])
      })
      req.on('data', (text: string) => {
        if (status !== 200) {
          this.errors.push(`HTTP ${status}: ${text.slice(0, 200)}`)
          return
        }
        this.onText(text)
      })
      req.on('error', (err: Error) => {
        if (!this.closing) this.errors.push(err.message)
      })
      req.on('close', () => {
        if (this.ready !== null) {
          this.ready = null
          reject(
            new Error(
              `watch on ${this.member.id} ended before it started: ${this.errors.at(-1) ?? `HTTP ${status}`}`,
            ),
          )
          return
        }
        if (this.closing) return
        this.reconnects++
        setTimeout(() => {
          if (!this.closing) this.open().catch((err: unknown) => this.errors.push(String(err)))
        }, 50)
      })
    })
  }

  private onText(text: string): void {
    const now = performance.now()
    for (const line of this.splitter.feed(text)) {
      const event = parseWatchLine(line)
      switch (event.kind) {
        case 'change': {
          this.position = event.lsn
          const key = readBenchKey(prefix, event.key)
          if (key === null) break
          this.tally.change(key.phase, key.seq, event.lsn)
          this.arrivals.arrived(key.seq, this.member.role, now)
          const lag = this.lags[key.phase]
          if (lag !== undefined) {
            lag[this.member.role].record(now - key.sentAtMs)
            if (now > lag.lastArrival) lag.lastArrival = now
          }
          break
        }
        case 'progress':
          if (this.position === null || event.lsn > this.position) this.position = event.lsn
          if (this.ready !== null) {
            const ready = this.ready
            this.ready = null
            ready()
          }
          break
        case 'error':
          this.errors.push(event.code)
          if (event.code === 'KV_ERR_WATCH_TOO_SLOW') this.cutOff++
          if (event.lsn !== null && (this.position === null || event.lsn > this.position))
            this.position = event.lsn
          break
        case 'other':
          break
      }
    }
  }

  /** Cancels the stream (RST_STREAM CANCEL), as a client that goes away does. */
  close(): void {
    this.closing = true
    this.stream?.close(http2.constants.NGHTTP2_CANCEL)
  }
}

async function rssMiB(pid: number): Promise<number> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8')
    const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
    return kb / 1024
  } catch {
    return 0
  }
}

interface PhaseResult {
  name: string
  watchers: number
  watchersPerMember: Record<string, number>
  load: string
  offeredPerSecond: number | null
  writes: number
  writeErrors: number
  writesPerSecond: number
  writeLatency: LatencySummary
  events: number
  eventsPerSecond: number
  /** From the phase's last acknowledgement to the last watcher having every write. */
  catchUpMs: number
  settled: boolean
  complete: number
  missing: number
  extra: number
  outOfOrder: number
  duplicates: number
  reconnects: number
  cutOff: number
  lag: Record<Role, LatencySummary & { count: number }>
  /** Per acknowledged write: from its acknowledgement to the last watcher of the role having it. */
  afterAck: Record<Role, LatencySummary & { count: number; beforeAck: number }>
  nodeCores: Record<string, number>
  benchCores: number
  benchEventLoopDelayMs: { p99: number; max: number }
  nodeRssMiB: Record<string, number>
  kvWatchers: Record<string, number>
}

export async function runWatchBench(options: WatchBenchOptions): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-bench-watch-'))
  const security = await benchSecurity(options.security, dir)
  const cluster = await startBenchCluster(join(dir, 'cluster'), 3, security)
  const tls = security.client.tls
  const sessions: Sessions[] = []
  const watchers: BenchWatcher[] = []
  const pool = new Pool(cluster.leader.url, {
    connections: Math.max(32, options.writers),
    connect: tls ?? {},
  })
  const startedAt = performance.now()
  const loadBefore = await loadAverage()
  try {
    const leader = cluster.leader
    const members: Member[] = [leader, ...cluster.followers].map((m: BenchMember) => ({
      id: m.id,
      url: m.url,
      role: m.id === leader.id ? 'leader' : 'follower',
      pid: pidOf(m),
    }))
    const clusterMembers = [leader, ...cluster.followers]
    for (const m of members) sessions.push(new Sessions(m.url, tls))
    const rssIdle = Object.fromEntries(
      await Promise.all(members.map(async (m) => [m.id, await rssMiB(m.pid)] as const)),
    )

    const phaseNames = [
      `${options.fewWatchers} watchers, one write at a time`,
      `${options.fewWatchers} watchers, ${fmt(options.rate)} writes/s`,
      `${options.fewWatchers} watchers, writes as fast as they go`,
      `${fmt(options.watchers)} watchers, one write at a time`,
      `${fmt(options.watchers)} watchers, ${fmt(options.rate)} writes/s`,
      `${fmt(options.watchers)} watchers, writes as fast as they go`,
    ]
    const lags: PhaseLag[] = phaseNames.map(() => ({
      leader: new Latencies(),
      follower: new Latencies(),
      lastArrival: 0,
    }))
    const arrivals = new Arrivals()
    const perMember = members.map(() => 0)
    const openWatchers = async (total: number): Promise<void> => {
      const opening: Promise<void>[] = []
      for (let i = watchers.length; i < total; i++) {
        const at = i % members.length
        const index = perMember[at] ?? 0
        perMember[at] = index + 1
        const w = new BenchWatcher(
          members[at] as Member,
          sessions[at] as Sessions,
          index,
          lags,
          arrivals,
        )
        watchers.push(w)
        opening.push(w.open())
        // Let the sessions connect before piling streams on them.
        if (opening.length % 50 === 0) await Promise.all(opening.slice(-50))
      }
      await Promise.all(opening)
    }

    // Warm up the write path (connections, JIT) outside any phase.
    const value = 'v'.repeat(options.valueBytes)
    let nextSeq = 0
    const warmUntil = performance.now() + 1000
    await Promise.all(
      Array.from({ length: 8 }, async (_, c) => {
        for (let i = 0; performance.now() < warmUntil; i++) {
          const res = await pool.request({
            method: 'PUT',
            path: `/v1/kv/warm/${c}/${i}?ack=quorum`,
            body: value,
          })
          await res.body.text()
        }
      }),
    )

    const phases: PhaseResult[] = []
    const runPhase = async (phase: number, mode: 'one' | 'paced' | 'max'): Promise<void> => {
      const name = phaseNames[phase] as string
      say(`${name}: ${options.durationS} s`)
      const acked: number[] = []
      let errors = 0
      const writeLatency = new Latencies()
      const write = async (): Promise<void> => {
        const seq = nextSeq++
        const sentAt = performance.now()
        try {
          const res = await pool.request({
            method: 'PUT',
            path: `/v1/kv/${benchKey(prefix, phase, seq, sentAt)}?ack=quorum`,
            body: value,
            headersTimeout: 10_000,
            bodyTimeout: 10_000,
          })
          await res.body.text()
          if (res.statusCode === 200) {
            const now = performance.now()
            writeLatency.record(now - sentAt)
            arrivals.acked(seq, now)
            acked.push(seq)
          } else errors++
        } catch {
          errors++
        }
      }
      const meter = await cpuMeter(clusterMembers)
      const benchCpu = process.cpuUsage()
      const loopDelay = monitorEventLoopDelay({ resolution: 10 })
      loopDelay.enable()
      const t0 = performance.now()
      if (mode === 'one') {
        // Each write once the last was acknowledged and every watcher has it, 20 ms apart.
        const until = t0 + options.durationS * 1000
        while (performance.now() < until) {
          await write()
          const seq = acked.at(-1)
          const deadline = performance.now() + 2000
          while (
            seq !== undefined &&
            performance.now() < deadline &&
            !watchers.every((w) => w.tally.has(seq))
          )
            await sleep(1)
          await sleep(20)
        }
      } else if (mode === 'paced') {
        const total = Math.round(options.rate * options.durationS)
        const inflight = new Set<Promise<void>>()
        let sent = 0
        while (sent < total) {
          const due = Math.min(total, Math.floor(((performance.now() - t0) / 1000) * options.rate))
          while (sent < due && inflight.size < 256) {
            const p: Promise<void> = write().finally(() => inflight.delete(p))
            inflight.add(p)
            sent++
          }
          await sleep(1)
        }
        await Promise.all(inflight)
      } else {
        const until = t0 + options.durationS * 1000
        await Promise.all(
          Array.from({ length: options.writers }, async () => {
            while (performance.now() < until) await write()
          }),
        )
      }
      const lastAck = performance.now()
      const writeSeconds = (lastAck - t0) / 1000
      // Until every watcher has every acknowledged write (or the timeout).
      const active = watchers.slice()
      let settled = false
      while (performance.now() - lastAck < settleTimeoutMs) {
        if (active.every((w) => (w.tally.received[phase] ?? 0) >= acked.length)) {
          settled = true
          break
        }
        await sleep(10)
      }
      const benchUsage = process.cpuUsage(benchCpu)
      const wallS = (performance.now() - t0) / 1000
      loopDelay.disable()
      const nodeCores = await meter.stop()
      const lag = lags[phase] as PhaseLag
      const c = completeness(
        active.map((w) => w.tally),
        phase,
        acked,
      )
      const events = active.reduce((sum, w) => sum + (w.tally.received[phase] ?? 0), 0)
      const deliveryS = (Math.max(lag.lastArrival, lastAck) - t0) / 1000
      const summary = (l: Latencies) => ({ ...l.summary(), count: l.count })
      const afterAck = (role: Role) => {
        const l = new Latencies()
        let beforeAck = 0
        for (const seq of acked) {
          const last = arrivals.lastAt[role][seq] ?? 0
          if (last === 0) continue
          const d = last - (arrivals.ackAt[seq] ?? 0)
          if (d < 0) beforeAck++
          l.record(d)
        }
        return { ...summary(l), beforeAck }
      }
      const result: PhaseResult = {
        name,
        watchers: active.length,
        watchersPerMember: Object.fromEntries(
          members.map((m) => [m.id, active.filter((w) => w.member === m).length]),
        ),
        load:
          mode === 'one'
            ? 'one at a time'
            : mode === 'paced'
              ? `${fmt(options.rate)}/s paced`
              : `${options.writers} closed loops`,
        offeredPerSecond: mode === 'paced' ? options.rate : null,
        writes: acked.length,
        writeErrors: errors,
        writesPerSecond: acked.length / writeSeconds,
        writeLatency: writeLatency.summary(),
        events,
        eventsPerSecond: events / deliveryS,
        catchUpMs: Math.max(0, lag.lastArrival - lastAck),
        settled,
        ...c,
        outOfOrder: active.reduce((s, w) => s + w.tally.outOfOrder, 0),
        duplicates: active.reduce((s, w) => s + w.tally.duplicates, 0),
        reconnects: active.reduce((s, w) => s + w.reconnects, 0),
        cutOff: active.reduce((s, w) => s + w.cutOff, 0),
        lag: { leader: summary(lag.leader), follower: summary(lag.follower) },
        afterAck: { leader: afterAck('leader'), follower: afterAck('follower') },
        nodeCores,
        benchCores: (benchUsage.user + benchUsage.system) / 1e6 / wallS,
        benchEventLoopDelayMs: {
          p99: loopDelay.percentile(99) / 1e6,
          max: loopDelay.max / 1e6,
        },
        nodeRssMiB: Object.fromEntries(
          await Promise.all(members.map(async (m) => [m.id, await rssMiB(m.pid)] as const)),
        ),
        kvWatchers: Object.fromEntries(
          await Promise.all(
            members.map(async (m) => [m.id, await gauge(m.url, 'kv_watchers')] as const),
          ),
        ),
      }
      phases.push(result)
      say(
        `   ${fmt(result.writesPerSecond)} writes/s, ${fmt(result.eventsPerSecond)} events/s to ${result.watchers} watchers; ${result.complete}/${result.watchers} complete, ${result.missing} missing, ${result.cutOff} cut off, ${result.reconnects} reconnects; lag p99 leader ${fmt(result.lag.leader.p99, 1)} ms, followers ${fmt(result.lag.follower.p99, 1)} ms`,
      )
    }

    say(`opening ${options.fewWatchers} watchers over ${members.map((m) => m.id).join(', ')}`)
    await openWatchers(options.fewWatchers)
    await runPhase(0, 'one')
    await runPhase(1, 'paced')
    await runPhase(2, 'max')
    say(`opening ${options.watchers - watchers.length} more watchers`)
    const openFrom = performance.now()
    await openWatchers(options.watchers)
    const openSeconds = (performance.now() - openFrom) / 1000
    await runPhase(3, 'one')
    await runPhase(4, 'paced')
    await runPhase(5, 'max')

    // Node-side totals, then release: every stream cancelled, each member's kv_watchers to 0.
    const nodeStats = Object.fromEntries(
      await Promise.all(
        members.map(
          async (m) =>
            [
              m.id,
              {
                eventsSent: await gauge(m.url, 'kv_watch_events_sent'),
                tooSlow: await gauge(m.url, 'kv_watch_too_slow'),
                logReads: await gauge(m.url, 'kv_watch_log_reads'),
                tailBytes: await gauge(m.url, 'kv_watch_tail_bytes'),
              },
            ] as const,
        ),
      ),
    )
    for (const w of watchers) w.close()
    const closedAt = performance.now()
    let left: Record<string, number> = {}
    let releasedMs: number | null = null
    while (performance.now() - closedAt < 10_000) {
      left = Object.fromEntries(
        await Promise.all(
          members.map(async (m) => [m.id, await gauge(m.url, 'kv_watchers')] as const),
        ),
      )
      if (Object.values(left).every((n) => n === 0)) {
        releasedMs = performance.now() - closedAt
        break
      }
      await sleep(20)
    }
    for (const s of sessions) s.close()
    const rssAfter = Object.fromEntries(
      await Promise.all(members.map(async (m) => [m.id, await rssMiB(m.pid)] as const)),
    )
    const watcherErrors = new Map<string, number>()
    for (const w of watchers)
      for (const e of w.errors) watcherErrors.set(e, (watcherErrors.get(e) ?? 0) + 1)

    const ms = (n: number) => fmt(n, 1)
    const perMemberText = (p: PhaseResult) =>
      Object.entries(p.watchersPerMember)
        .map(([id, n]) => `${id} ${n}`)
        .join(', ')
    const cores = (r: Record<string, number>) =>
      Object.entries(r)
        .map(([id, v]) => `${id} ${fmt(v, 2)}`)
        .join(', ')
    const roleOf = (id: string) => members.find((m) => m.id === id)?.role ?? ''
    const body = [
      '| phase | watchers (per member) | writes | writes/s | write p50 / p99 ms | events delivered | events/s | every watcher got every write | missing | cut off / reconnects | catch-up ms |',
      '|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|',
      ...phases.map(
        (p) =>
          `| ${p.name} | ${p.watchers} (${perMemberText(p)}) | ${p.load} | ${fmt(p.writesPerSecond)} | ${fmt(p.writeLatency.p50, 1)} / ${fmt(p.writeLatency.p99, 1)} | ${fmt(p.events)} | ${fmt(p.eventsPerSecond)} | ${p.complete === p.watchers && p.outOfOrder === 0 && p.duplicates === 0 ? 'yes' : `**no**: ${p.complete}/${p.watchers}`} | ${fmt(p.missing)} | ${p.cutOff} / ${p.reconnects} | ${fmt(p.catchUpMs)} |`,
      ),
      '',
      '| phase | lag at the leader p50 / p99 / max ms | lag at the followers p50 / p99 / max ms | ack to the last leader watcher p50 / p99 ms | ack to the last follower watcher p50 / p99 ms | node CPU (cores) | bench CPU (cores) | bench event-loop delay p99 / max ms |',
      '|---|---:|---:|---:|---:|---|---:|---:|',
      ...phases.map(
        (p) =>
          `| ${p.name} | ${ms(p.lag.leader.p50)} / ${ms(p.lag.leader.p99)} / ${ms(p.lag.leader.max)} | ${ms(p.lag.follower.p50)} / ${ms(p.lag.follower.p99)} / ${ms(p.lag.follower.max)} | ${ms(p.afterAck.leader.p50)} / ${ms(p.afterAck.leader.p99)} | ${ms(p.afterAck.follower.p50)} / ${ms(p.afterAck.follower.p99)} | ${cores(p.nodeCores)} | ${fmt(p.benchCores, 2)} | ${ms(p.benchEventLoopDelayMs.p99)} / ${ms(p.benchEventLoopDelayMs.max)} |`,
      ),
      '',
      `Lag: a change's arrival at a watcher minus the time the writer sent the write (both performance.now() of the bench process), so it holds the write's own ack=quorum latency (write p50 / p99 above); ack to the last watcher: per write, from its acknowledgement at the writer to its arrival at the last watcher of that role (0 when every one had it before the acknowledgement was read). One write at a time: each sent once every watcher has the one before, 20 ms later. Events delivered: changes the bench's watchers received, over the time from the phase's first write to its last delivery; catch-up: from the last acknowledgement to the last delivery. Writes: ${options.valueBytes}-byte values, PUT ack=quorum to the leader ${leader.id} over HTTP/1.1; watch streams (NDJSON, values included) over HTTP/2, at most ${streamsPerSession} streams per session (${Math.ceil(Math.max(...perMember) / streamsPerSession)} sessions per member with ${fmt(options.watchers)} watchers); nodes as shipped (--watchers-max 10000, --h2-streams-max 256, --watch-buffer-bytes-max 1 MiB, no flag changed). Opening the last ${fmt(options.watchers - options.fewWatchers)} watchers took ${fmt(openSeconds, 2)} s.`,
      `Node RSS MiB idle / after the last phase / after the release: ${members.map((m) => `${m.id} (${roleOf(m.id)}) ${fmt(rssIdle[m.id] ?? 0)} / ${fmt(phases.at(-1)?.nodeRssMiB[m.id] ?? 0)} / ${fmt(rssAfter[m.id] ?? 0)}`).join(', ')}. Watchers released: ${releasedMs === null ? `**no**, kv_watchers still ${cores(left)} 10 s after every stream was cancelled` : `kv_watchers 0 on every member ${fmt(releasedMs)} ms after every stream was cancelled`}. Node counters: ${members.map((m) => `${m.id} ${fmt(nodeStats[m.id]?.eventsSent ?? 0)} events sent, ${nodeStats[m.id]?.tooSlow ?? 0} too slow, ${nodeStats[m.id]?.logReads ?? 0} log reads`).join('; ')}.${watcherErrors.size === 0 ? '' : ` Stream errors seen: ${[...watcherErrors].map(([e, n]) => `${e} x${n}`).join(', ')}.`}`,
      `The three nodes and the bench process (writer and every watcher) share the machine's cores: figures move by tens of percent between runs, and the lag includes the bench's own event-loop delay.`,
    ]
    await publish(options.out, {
      suite: 'watch',
      command: options.command,
      summary: `Watch streams (GET /v1/watch, NDJSON over HTTP/2) on a 3-node single-leader cluster (${options.security}), watchers spread over the leader and both followers, all on the prefix written; ${options.durationS} s per phase.`,
      body,
      json: {
        durationS: options.durationS,
        rate: options.rate,
        watchers: options.watchers,
        fewWatchers: options.fewWatchers,
        writers: options.writers,
        valueBytes: options.valueBytes,
        streamsPerSession,
        members: members.map(({ id, role }) => ({ id, role })),
        phases,
        openSeconds,
        nodeRssMiB: { idle: rssIdle, afterRelease: rssAfter },
        nodeStats,
        released: { ms: releasedMs, left },
        watcherErrors: Object.fromEntries(watcherErrors),
        loadAverageBefore: loadBefore,
        seconds: (performance.now() - startedAt) / 1000,
      },
    })
  } finally {
    for (const w of watchers) w.close()
    for (const s of sessions) s.close()
    await pool.close()
    await cluster.stop()
    await rm(dir, { recursive: true, force: true })
  }
}
