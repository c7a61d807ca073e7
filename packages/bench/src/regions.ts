/**
 * pnpm bench --suite regions: multi-leader regions (issue 18, "Figures"). Two regions of three
 * nodes, as shipped (TLS, tokens): us (n1-n3) and eu (n4-n6). Each region reaches the other's
 * members through a proxy per member (region-link.ts) that holds every chunk `delayMs` in each
 * direction (the one-way delay between regions; a round trip costs twice that) and that can be
 * cut.
 *
 *  1. Idle lag: one write at a time to us's leader (ack=quorum): a marker key whose value is
 *     the write's number (region-lag.ts). The bench polls eu's leader for it: the lag is the
 *     time from the write's acknowledgement in us to the first poll answer in eu that shows
 *     it. Then the next write.
 *  2. The closed-loop maximum of quorum writes to us's leader (wrk, `maxDurationS`), with
 *     shipping to eu going on; then how long eu took to catch up.
 *  3. Lag at 50% load: quorum writes offered open-loop (pacer.ts) at half that maximum to us
 *     for `durationS`, plus marker writes every 50 ms (each acknowledged before the next, so
 *     their order is the log's), polled in eu as above; meanwhile us's `GET /v1/regions` is
 *     sampled every 50 ms (`lagMs`, `lagEntries` of its shipping to eu).
 *  4. Partition: every link cut for `partitionS` while both regions take writes open-loop,
 *     each at a quarter of the maximum: 90% to keys of its own, 10% to keys both regions write
 *     (`bench/shared/0`, `1`, ...: the same key numbers in both, so each shared key written in
 *     both is one concurrent pair). The writes stop, the links heal, and the bench polls in a loop
 *     (50 ms pauses): the time until each leader's shipping is streaming again, until neither has
 *     anything left to ship, and until the region digests (`GET /admin/v1/regions/digest`) of
 *     all six nodes are equal; the entries each leader shipped, and the conflicts recorded (in
 *     both regions; distinct by the loser's stamp).
 *
 * Every wait is bounded. Figures are printed and written; nothing is asserted.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestCluster, type ClusterMember, type ClusterOptions } from '@kvstore/testkit'
import { Pool } from 'undici'
import { ensureWrk, fmt, say, sleep } from './common.js'
import { Latencies, type LatencySummary } from './latency.js'
import { cpuMeter } from './node-process.js'
import { runPaced, type PacedOptions, type PacedResult } from './pacer.js'
import { loadAverage, removeOnExit } from './proc.js'
import { MarkerLag, distinctConflicts, sampleSummary, type ConflictEntry } from './region-lag.js'
import { RegionLink } from './region-link.js'
import { coresCell, publish } from './report.js'
import { benchSecurity, type BenchSecurity, type SecurityProfile } from './security.js'
import { quorumPutMaximum, warmUpQuorumPuts, type WrkResult } from './wrk.js'

export interface RegionsBenchOptions {
  security: SecurityProfile
  /** Seconds of the 50% load phase. */
  durationS: number
  /** Seconds of the closed-loop maximum. */
  maxDurationS: number
  connections: number
  valueBytes: number
  /** One-way delay the inter-region links add, in ms. */
  delayMs: number
  /** Seconds the links stay cut. */
  partitionS: number
  out: string
}

interface ShipView {
  to: string
  state: string
  cursor: number | null
  lagEntries: number
  lagMs: number
  shippedEntries: number
  error: string | null
}

interface RegionsView {
  region: string
  leader: boolean
  shipping: ShipView[]
  conflicts: { recorded: number; localLost: number; remoteLost: number }
}

interface Region {
  id: string
  cluster: TestCluster
  leader: ClusterMember
}

const markerEveryMs = 50
const idleMarkers = 40
const sampleEveryMs = 50
const convergeTimeoutMs = 180_000
const catchUpTimeoutMs = 120_000

async function view(url: string): Promise<RegionsView | null> {
  try {
    const res = await fetch(`${url}/v1/regions`, { signal: AbortSignal.timeout(5000) })
    if (res.status !== 200) return null
    return (await res.json()) as RegionsView
  } catch {
    return null
  }
}

async function digest(url: string): Promise<string | null> {
  try {
    const res = await fetch(`${url}/admin/v1/regions/digest`, {
      signal: AbortSignal.timeout(10_000),
    })
    if (res.status !== 200) return null
    return ((await res.json()) as { digest: string }).digest
  } catch {
    return null
  }
}

/** Every conflict recorded by `url`'s region (at most `pagesMax` pages of 1,000). */
async function allConflicts(url: string, pagesMax = 200): Promise<ConflictEntry[]> {
  const out: ConflictEntry[] = []
  let after: string | null = null
  for (let page = 0; page < pagesMax; page++) {
    const res = await fetch(
      `${url}/admin/v1/conflicts?limit=1000${after === null ? '' : `&after=${after}`}`,
    )
    if (res.status !== 200) throw new Error(`GET /admin/v1/conflicts: HTTP ${res.status}`)
    const body = (await res.json()) as { conflicts: ConflictEntry[]; next: string | null }
    out.push(...body.conflicts)
    if (body.next === null) return out
    after = body.next
  }
  throw new Error(`more than ${pagesMax * 1000} conflicts at ${url}`)
}

/** Waits until each leader's shipping is streaming with nothing left to ship; returns the ms. */
async function waitShipped(regions: Region[], timeoutMs: number): Promise<number> {
  const started = performance.now()
  for (;;) {
    const views = await Promise.all(regions.map((r) => view(r.leader.url)))
    if (
      views.every(
        (v) =>
          v !== null &&
          v.shipping.length > 0 &&
          v.shipping.every((s) => s.state === 'streaming' && s.lagEntries === 0),
      )
    )
      return performance.now() - started
    if (performance.now() - started > timeoutMs)
      throw new Error(
        `shipping did not catch up within ${timeoutMs / 1000} s: ${JSON.stringify(views.map((v) => v?.shipping))}`,
      )
    await sleep(50)
  }
}

/** Waits until every node of every region has the same region digest; returns the ms. */
async function waitDigests(regions: Region[], timeoutMs: number): Promise<number> {
  const started = performance.now()
  for (;;) {
    const digests = await Promise.all(
      regions.flatMap((r) => r.cluster.active()).map((m) => digest(m.url)),
    )
    if (digests[0] !== null && digests.every((d) => d === digests[0]))
      return performance.now() - started
    if (performance.now() - started > timeoutMs)
      throw new Error(`the region digests differ after ${timeoutMs / 1000} s`)
    await sleep(100)
  }
}

/** Samples `url`'s shipping to `to` every `everyMs` until stopped. */
function sampleShipping(url: string, to: string, everyMs = sampleEveryMs) {
  const lagMs: number[] = []
  const lagEntries: number[] = []
  const states = new Map<string, number>()
  let running = true
  const loop = (async () => {
    while (running) {
      const v = await view(url)
      const s = v?.shipping.find((x) => x.to === to)
      if (s !== undefined) {
        lagMs.push(s.lagMs)
        lagEntries.push(s.lagEntries)
        states.set(s.state, (states.get(s.state) ?? 0) + 1)
      }
      await sleep(everyMs)
    }
  })()
  return {
    async stop() {
      running = false
      await loop
      return {
        lagMs: sampleSummary(lagMs),
        lagEntries: sampleSummary(lagEntries),
        states: Object.fromEntries(states),
      }
    },
  }
}

type ShippingSamples = Awaited<ReturnType<ReturnType<typeof sampleShipping>['stop']>>

/** A pool to one node, as root (client certificate), with the token when the profile has one. */
function poolTo(url: string, security: BenchSecurity, connections = 1): Pool {
  return new Pool(url, { connections, connect: security.client.tls ?? {} })
}

/**
 * Polls `key` on `pool` back to back (a 2 ms pause between answers) until `done()`, feeding
 * `tracker`; returns the poll round trips (the measurement's resolution).
 */
async function pollMarker(
  pool: Pool,
  key: string,
  authorization: string | undefined,
  tracker: MarkerLag,
  done: () => boolean,
): Promise<Latencies> {
  const roundTrips = new Latencies()
  const headers = authorization === undefined ? {} : { authorization }
  while (!done()) {
    const t0 = performance.now()
    try {
      const res = await pool.request({
        method: 'GET',
        path: `/v1/kv/${key}`,
        headers,
        headersTimeout: 5000,
        bodyTimeout: 5000,
      })
      const text = await res.body.text()
      const at = performance.now()
      roundTrips.record(at - t0)
      if (res.statusCode === 200) tracker.observed(Number(text), at)
    } catch {
      // a missed poll
    }
    await sleep(2)
  }
  return roundTrips
}

/** One marker write (ack=quorum); resolves to its acknowledgement time, or null on an error. */
async function writeMarker(
  pool: Pool,
  key: string,
  seq: number,
  authorization: string | undefined,
): Promise<number | null> {
  try {
    const res = await pool.request({
      method: 'PUT',
      path: `/v1/kv/${key}?ack=quorum`,
      body: String(seq),
      headers: {
        'content-type': 'application/octet-stream',
        ...(authorization === undefined ? {} : { authorization }),
      },
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    })
    await res.body.text()
    return res.statusCode === 200 ? performance.now() : null
  } catch {
    return null
  }
}

interface LagPhase {
  name: string
  /** Writes per second offered besides the markers (0 at idle). */
  offeredPerSecond: number
  load: PacedResult | null
  markers: { written: number; errors: number; writeLatency: LatencySummary }
  lag: ReturnType<MarkerLag['summary']> & { early: number }
  pollRoundTripMs: LatencySummary
  shipping: ShippingSamples
  nodeCores: Record<string, number>
}

interface PartitionPart {
  seconds: number
  ratePerRegion: number
  sharedRatePerRegion: number
  writes: Record<string, { own: PacedResult; shared: PacedResult }>
  /**
   * Each leader's shipping as the links healed (its lagEntries is the whole log there: a
   * failing shipper forgets the receiver's cursor until it reaches it again).
   */
  atHeal: Record<string, ShipView | null>
  /**
   * Per direction ("us->eu"), ms after the heal: first seen streaming, and first seen with
   * lagEntries 0 (polled up to 10 s past convergence).
   */
  reconnectMs: Record<string, number | null>
  shippedUpMs: Record<string, number | null>
  /** ms after the heal until every node's digest was equal, and how long that poll took. */
  convergedMs: number
  /** The start of the last digest poll that found them unequal, ms after the heal. */
  unequalAtMs: number
  digestRoundMs: number
  /** Entries each leader shipped from the heal to convergence. */
  shippedEntries: Record<string, number>
  conflicts: {
    recordedByRegion: Record<string, number>
    distinct: number
    keys: number
    /** Shared key numbers written in both regions (each one concurrent pair), when exact. */
    expected: number | null
  }
}

export async function runRegionsBench(options: RegionsBenchOptions): Promise<void> {
  const { durationS, maxDurationS, connections, valueBytes, delayMs, partitionS } = options
  ensureWrk()
  const loadBefore = await loadAverage()
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-regions-'))
  const workOnExit = removeOnExit(work)
  const security = await benchSecurity(options.security, work)
  const links: { viewer: string; member: string; link: RegionLink }[] = []
  const regions: Region[] = []
  const pools: Pool[] = []
  const phases: LagPhase[] = []
  let closed: WrkResult | null = null
  let maximum = 0
  let catchUpAfterMaxMs = 0
  let catchUpAfterLoadMs = 0
  let partition: PartitionPart | null = null
  let dirsOnExit: { forget(): void }[] = []
  try {
    say(
      `== starting 2 regions of 3 nodes (us n1-n3, eu n4-n6; ${security.profile}), links delayed ${delayMs} ms each way`,
    )
    const clusterOptions: ClusterOptions = {
      security,
      logLevel: 'warn',
      keepLogs: false,
      inheritStderr: true,
    }
    const started = await TestCluster.startRegions(['us', 'eu'], 3, [], {
      ...clusterOptions,
      urlsFor: async (viewer, _region, member) => {
        const link = await RegionLink.start(Number(new URL(member.url).port), delayMs)
        links.push({ viewer, member: member.id, link })
        return `${security.scheme}://127.0.0.1:${link.port}`
      },
    })
    dirsOnExit = started.regions.map((c) => removeOnExit(c.dir))
    for (const [i, id] of ['us', 'eu'].entries()) {
      const cluster = started.regions[i] as TestCluster
      regions.push({
        id,
        cluster,
        leader: await cluster.waitForLeader(30_000, { connected: true }),
      })
    }
    const [us, eu] = regions as [Region, Region]
    const shipped = await waitShipped(regions, 60_000)
    say(
      `   leaders ${us.leader.id} (us) and ${eu.leader.id} (eu); shipping streaming after ${fmt(shipped)} ms`,
    )
    const usAuth = await security.authorization(us.leader.url)
    const euAuth = await security.authorization(eu.leader.url)
    const toUs = poolTo(us.leader.url, security)
    const toEu = poolTo(eu.leader.url, security)
    pools.push(toUs, toEu)

    say('   warming up (ack=quorum to us, 3 s)...')
    await warmUpQuorumPuts({
      url: us.leader.url,
      valueBytes,
      authorization: usAuth,
      scriptDir: work,
      connections,
    })
    await waitShipped(regions, catchUpTimeoutMs)

    /** Marker writes to us, polled in eu; with `load`, writes offered at that rate meanwhile. */
    const lagPhase = async (name: string, load: number | null): Promise<LagPhase> => {
      const key = `bench/lag/${name.replace(/[^a-z0-9]+/g, '-')}`
      const tracker = new MarkerLag()
      const writeLatency = new Latencies()
      let written = 0
      let errors = 0
      let polling = true
      const poll = pollMarker(toEu, key, euAuth, tracker, () => !polling)
      const meter = await cpuMeter(regions.flatMap((r) => r.cluster.members))
      const sampler = sampleShipping(us.leader.url, 'eu')
      let loadResult: PacedResult | null = null
      try {
        const markers = async (count: number, everyMs: number, waitSeen: boolean) => {
          const startedAt = performance.now()
          for (let seq = 0; seq < count; seq++) {
            const dueAt = startedAt + seq * everyMs
            const now = performance.now()
            if (dueAt > now) await sleep(dueAt - now)
            const t0 = performance.now()
            const ackedAt = await writeMarker(toUs, key, seq, usAuth)
            if (ackedAt === null) {
              errors++
              continue
            }
            written++
            writeLatency.record(ackedAt - t0)
            tracker.acknowledged(seq, ackedAt)
            if (waitSeen) {
              const deadline = performance.now() + 10_000
              while (!tracker.seen(seq) && performance.now() < deadline) await sleep(1)
            }
          }
        }
        if (load === null) {
          await markers(idleMarkers, markerEveryMs, true)
        } else {
          const count = Math.floor((durationS * 1000) / markerEveryMs)
          ;[loadResult] = await Promise.all([
            runPaced({
              url: us.leader.url,
              tls: security.client.tls as PacedOptions['tls'],
              authorization: usAuth,
              rate: load,
              durationS,
              connections,
              valueBytes,
              prefix: `bench/load/`,
              query: '?ack=quorum',
            }),
            markers(count, markerEveryMs, false),
          ])
        }
        // The last markers arrive (bounded), then the poller stops.
        const deadline = performance.now() + 30_000
        while (tracker.unseen > 0 && performance.now() < deadline) await sleep(10)
      } finally {
        polling = false
      }
      const unseenAtEnd = tracker.unseen
      if (unseenAtEnd > 0) say(`   ${unseenAtEnd} markers not seen in eu within 30 s`)
      const roundTrips = await Promise.race([poll, sleep(10_000).then(() => new Latencies())])
      const shipping = await sampler.stop()
      return {
        name,
        offeredPerSecond: load ?? 0,
        load: loadResult,
        markers: { written, errors, writeLatency: writeLatency.summary() },
        lag: { ...tracker.summary(), early: tracker.early },
        pollRoundTripMs: roundTrips.summary(),
        shipping,
        nodeCores: await meter.stop(),
      }
    }
    const showLag = (p: LagPhase) =>
      say(
        `   lag p50 ${fmt(p.lag.p50, 1)} ms, p99 ${fmt(p.lag.p99, 1)} ms, max ${fmt(p.lag.max, 1)} ms over ${p.lag.samples} markers; /v1/regions lagMs p99 ${fmt(p.shipping.lagMs.p99)}, lagEntries p99 ${fmt(p.shipping.lagEntries.p99)}`,
      )

    say(`== idle: ${idleMarkers} writes to us one at a time, each polled in eu until it shows`)
    phases.push(await lagPhase('idle', null))
    showLag(phases[0] as LagPhase)

    say(
      `== closed-loop maximum: PUT ack=quorum to us, wrk, ${connections} connections, ${maxDurationS} s`,
    )
    const max = await quorumPutMaximum({
      url: us.leader.url,
      valueBytes,
      authorization: usAuth,
      scriptDir: work,
      connections,
      durationS: maxDurationS,
    })
    closed = max.result
    maximum = max.maximum
    if (!(maximum > 0)) throw new Error('the closed-loop phase completed no write')
    catchUpAfterMaxMs = await waitShipped(regions, catchUpTimeoutMs)
    say(
      `   ${fmt(maximum)}/s, p99 ${fmt(closed.latencyMs.p99, 1)} ms; eu caught up ${fmt(catchUpAfterMaxMs)} ms after the load stopped`,
    )

    const rate = Math.max(1, Math.round(maximum / 2))
    say(
      `== 50% load: PUT ack=quorum to us at ${fmt(rate)}/s (open loop) for ${durationS} s, a marker every ${markerEveryMs} ms`,
    )
    phases.push(await lagPhase('50% load', rate))
    showLag(phases[1] as LagPhase)
    catchUpAfterLoadMs = await waitShipped(regions, catchUpTimeoutMs)
    const steadyMs = await waitDigests(regions, 60_000)
    say(`   all six digests equal ${fmt(steadyMs)} ms after shipping caught up`)

    partition = await partitionPart(regions, links, security, {
      partitionS,
      ratePerRegion: Math.max(2, Math.round(maximum / 4)),
      connections: Math.max(1, Math.floor(connections / 4)),
      valueBytes,
      auth: { us: usAuth, eu: euAuth },
    })
  } finally {
    await Promise.all(pools.map((p) => p.close()))
    for (const r of regions) await r.cluster.stop()
    for (const d of dirsOnExit) d.forget()
    for (const l of links) await l.link.close()
    await rm(work, { recursive: true, force: true })
    workOnExit.forget()
  }
  const loadAfter = await loadAverage()
  const max = closed as WrkResult
  const part = partition as PartitionPart
  const ms = (n: number | null, digits = 1) => (n === null ? 'never' : fmt(n, digits))
  const lagRows = phases.map((p) => {
    const offered =
      p.load === null
        ? `idle: ${p.markers.written} writes one at a time`
        : `${fmt(p.offeredPerSecond)}/s (50% of ${fmt(maximum)}/s), ${fmt(p.load.throughput)}/s done, write p99 ${fmt(p.load.latencyMs.p99, 1)} ms`
    const s = p.shipping
    return `| ${offered} | ${p.lag.samples} | ${ms(p.lag.p50)} | ${ms(p.lag.p99)} | ${ms(p.lag.max)} | ${fmt(s.lagMs.p50)} / ${fmt(s.lagMs.p99)} / ${fmt(s.lagMs.max)} | ${fmt(s.lagEntries.p50)} / ${fmt(s.lagEntries.p99)} / ${fmt(s.lagEntries.max)} | ${fmt(p.markers.writeLatency.p50, 1)} | ${fmt(p.pollRoundTripMs.p50, 1)} | ${coresCell(p.nodeCores)} |`
  })
  const w = (id: string) => part.writes[id] as { own: PacedResult; shared: PacedResult }
  const wrote = (id: string) =>
    `${fmt(w(id).own.completed + w(id).shared.completed)} (${fmt(w(id).shared.completed)} shared; ${w(id).own.errors + w(id).shared.errors} errors)`
  const span = (d: string) => {
    const from = part.reconnectMs[d] ?? null
    const to = part.shippedUpMs[d] ?? null
    return from === null || to === null ? 'n/a' : fmt(to - from)
  }
  const partRows = [
    `| writes acknowledged during the cut | ${wrote('us')} | ${wrote('eu')} |`,
    `| shipping state at the heal | ${part.atHeal.us?.state ?? '?'} | ${part.atHeal.eu?.state ?? '?'} |`,
    `| streaming again, ms after the heal | ${ms(part.reconnectMs['us->eu'] ?? null, 0)} | ${ms(part.reconnectMs['eu->us'] ?? null, 0)} |`,
    `| lagEntries 0 again, ms after the heal | ${ms(part.shippedUpMs['us->eu'] ?? null, 0)} | ${ms(part.shippedUpMs['eu->us'] ?? null, 0)} |`,
    `| streaming again to lagEntries 0, ms | ${span('us->eu')} | ${span('eu->us')} |`,
    `| entries shipped from the heal to convergence | ${fmt(part.shippedEntries['us->eu'] ?? 0)} | ${fmt(part.shippedEntries['eu->us'] ?? 0)} |`,
    `| conflicts recorded in the region | ${fmt(part.conflicts.recordedByRegion.us ?? 0)} | ${fmt(part.conflicts.recordedByRegion.eu ?? 0)} |`,
  ]
  const delayText = `${delayMs} ms each way (${2 * delayMs} ms round trip)`
  await publish(options.out, {
    suite: 'regions',
    command: `pnpm bench --suite regions --region-delay-ms ${delayMs} --partition-s ${partitionS} --duration ${durationS} --max-duration ${maxDurationS} --connections ${connections} --value-bytes ${valueBytes}${options.security === 'tls-auth' ? '' : ` --security ${options.security}`}`,
    summary: `Regions (multi-leader): 2 regions of 3 nodes (us n1-n3, eu n4-n6; ${options.security === 'tls-auth' ? 'as shipped: TLS and token auth' : `--security ${options.security}`}), every inter-region connection through a proxy that delays it ${delayText}; the nodes, the proxies and the load generator share this machine.`,
    body: [
      `### Cross-region lag, us → eu`,
      '',
      `Lag: from a write's acknowledgement in us (ack=quorum) to the first answer from eu's leader that shows it (a marker key, written one at a time, its value the write's number, polled back to back in eu; the poll round trip is the resolution). lagMs and lagEntries: us's \`GET /v1/regions\` (shipping to eu) sampled every ${sampleEveryMs} ms. Closed-loop maximum of quorum writes to us first: ${fmt(maximum)}/s (wrk, ${connections} connections, ${maxDurationS} s, p99 ${fmt(max.latencyMs.p99, 1)} ms, ${max.errors} errors); eu had caught up ${fmt(catchUpAfterMaxMs / 1000, 2)} s after it stopped (${fmt(catchUpAfterLoadMs / 1000, 2)} s after the 50% phase).`,
      '',
      '| load on us | markers | lag p50 ms | lag p99 ms | lag max ms | /v1/regions lagMs p50 / p99 / max | lagEntries p50 / p99 / max | marker write p50 ms | poll round trip p50 ms | node CPU (cores) |',
      '|---|---:|---:|---:|---:|---|---|---:|---:|---|',
      ...lagRows,
      '',
      `### Convergence after a ${partitionS} s partition`,
      '',
      `Every link cut (connections reset, new ones refused) for ${partitionS} s while each region took quorum writes offered open-loop at ${fmt(part.ratePerRegion)}/s (a quarter of the maximum): ${fmt(part.ratePerRegion - part.sharedRatePerRegion)}/s to keys of its own, ${fmt(part.sharedRatePerRegion)}/s to \`bench/shared/<n>\`, the same numbers in both regions. Then the writes stopped and the links healed; the leaders' \`/v1/regions\` and the six digests polled in a loop (50 ms pause between rounds).`,
      '',
      '| | us (ships us → eu) | eu (ships eu → us) |',
      '|---|---:|---:|',
      ...partRows,
      '',
      `All six nodes' region digests were equal **${fmt(part.convergedMs / 1000, 2)} s** after the heal, at the end of a poll that took ${fmt(part.digestRoundMs)} ms; the poll before, started ${fmt(part.unequalAtMs / 1000, 2)} s after the heal, still found them unequal (each digest hashes every live key). ${fmt(part.shippedEntries['us->eu'] ?? 0)} + ${fmt(part.shippedEntries['eu->us'] ?? 0)} entries shipped; ${fmt(part.conflicts.distinct)} distinct conflicts (by the loser's stamp) on ${fmt(part.conflicts.keys)} keys${part.conflicts.expected === null ? '' : `; ${fmt(part.conflicts.expected)} shared keys were written in both regions`}.`,
      '',
      `Load average (1 min) ${fmt(loadBefore, 2)} before the run and ${fmt(loadAfter, 2)} after (the machine has ${cpus().length} cores; six nodes, ${links.length} proxies and the load generator share them). Nothing is asserted.`,
    ],
    json: {
      loadAverage: { before: loadBefore, after: loadAfter },
      delayMs,
      partitionS,
      durationS,
      maxDurationS,
      connections,
      valueBytes,
      closedLoop: { throughput: maximum, result: max },
      catchUpAfterMaxMs,
      catchUpAfterLoadMs,
      lag: phases,
      partition: part,
    },
  })
}

async function partitionPart(
  regions: Region[],
  links: { link: RegionLink }[],
  security: BenchSecurity,
  o: {
    partitionS: number
    ratePerRegion: number
    connections: number
    valueBytes: number
    auth: Record<string, string | undefined>
  },
): Promise<PartitionPart> {
  const [us, eu] = regions as [Region, Region]
  const sharedRate = Math.max(1, Math.round(o.ratePerRegion / 10))
  const ownRate = Math.max(1, o.ratePerRegion - sharedRate)
  const direction = (r: Region) => (r === us ? 'us->eu' : 'eu->us')
  const before = new Map<string, RegionsView | null>()
  for (const r of regions) before.set(r.id, await view(r.leader.url))
  say(
    `== partition: every link cut for ${o.partitionS} s; each region writes ${fmt(o.ratePerRegion)}/s (${fmt(sharedRate)}/s to shared keys)`,
  )
  for (const l of links) l.link.cutLink()
  const writes: PartitionPart['writes'] = {}
  const atHeal: PartitionPart['atHeal'] = {}
  try {
    const paced = (r: Region, prefix: string, rate: number) =>
      runPaced({
        url: r.leader.url,
        tls: security.client.tls as PacedOptions['tls'],
        authorization: o.auth[r.id],
        rate,
        durationS: o.partitionS,
        connections: o.connections,
        valueBytes: o.valueBytes,
        prefix,
        query: '?ack=quorum',
      }).catch((err: unknown) => {
        const exited = r.cluster.members
          .filter((m) => m.process === null || m.process.child.exitCode !== null)
          .map((m) => m.id)
        throw new Error(
          `writes to ${r.id}'s leader ${r.leader.id} (${prefix}) during the partition: ${(err as Error).message}${exited.length > 0 ? `; exited: ${exited.join(', ')}` : ''}`,
        )
      })
    const results = await Promise.all(
      regions.flatMap((r) => [
        paced(r, `bench/part/${r.id}/`, ownRate),
        paced(r, 'bench/shared/', sharedRate),
      ]),
    )
    for (const [i, r] of regions.entries())
      writes[r.id] = {
        own: results[2 * i] as PacedResult,
        shared: results[2 * i + 1] as PacedResult,
      }
    for (const r of regions) {
      const v = await view(r.leader.url)
      atHeal[r.id] = v?.shipping[0] ?? null
    }
  } finally {
    for (const l of links) l.link.heal()
  }
  const healedAt = performance.now()
  say(`   healed; shipping was ${atHeal.us?.state ?? '?'} (us) and ${atHeal.eu?.state ?? '?'} (eu)`)
  const reconnectMs: Record<string, number | null> = { 'us->eu': null, 'eu->us': null }
  const shippedUpMs: Record<string, number | null> = { 'us->eu': null, 'eu->us': null }
  const pollShipping = async () => {
    for (const r of regions) {
      const v = await view(r.leader.url)
      const s = v?.shipping[0]
      const at = performance.now() - healedAt
      const d = direction(r)
      if (s?.state === 'streaming' && reconnectMs[d] === null) reconnectMs[d] = at
      if (s?.state === 'streaming' && s.lagEntries === 0 && shippedUpMs[d] === null)
        shippedUpMs[d] = at
    }
  }
  let convergedMs = -1
  // The start of the last digest round that found them unequal: convergence came after it.
  let unequalAtMs = 0
  let digestRoundMs = 0
  while (convergedMs < 0) {
    const elapsed = performance.now() - healedAt
    if (elapsed > convergeTimeoutMs)
      throw new Error(
        `the regions did not converge within ${convergeTimeoutMs / 1000} s of the heal`,
      )
    await pollShipping()
    const roundStart = performance.now()
    const digests = await Promise.all(
      regions.flatMap((r) => r.cluster.active()).map((m) => digest(m.url)),
    )
    digestRoundMs = performance.now() - roundStart
    if (digests[0] !== null && digests.every((x) => x === digests[0])) {
      convergedMs = performance.now() - healedAt
      break
    }
    unequalAtMs = roundStart - healedAt
    await sleep(50)
  }
  // The last poll of lagEntries may predate the digest round that found convergence (over a
  // second with many keys): keep polling, so that the table says when it reached 0.
  const shippingBy = performance.now() + 10_000
  while (Object.values(shippedUpMs).includes(null) && performance.now() < shippingBy) {
    await pollShipping()
    await sleep(50)
  }
  const shippedEntries: Record<string, number> = {}
  for (const r of regions) {
    const after = await view(r.leader.url)
    shippedEntries[direction(r)] =
      (after?.shipping[0]?.shippedEntries ?? 0) -
      (before.get(r.id)?.shipping[0]?.shippedEntries ?? 0)
  }
  const records = [...(await allConflicts(us.leader.url)), ...(await allConflicts(eu.leader.url))]
  const counted = distinctConflicts(records)
  const usShared = writes.us?.shared
  const euShared = writes.eu?.shared
  const expected =
    usShared !== undefined &&
    euShared !== undefined &&
    usShared.errors === 0 &&
    euShared.errors === 0
      ? Math.min(usShared.completed, euShared.completed)
      : null
  say(
    `   converged ${fmt(convergedMs / 1000, 2)} s after the heal; shipped ${fmt(shippedEntries['us->eu'] ?? 0)} + ${fmt(shippedEntries['eu->us'] ?? 0)} entries; ${counted.distinct} distinct conflicts`,
  )
  return {
    seconds: o.partitionS,
    ratePerRegion: o.ratePerRegion,
    sharedRatePerRegion: sharedRate,
    writes,
    atHeal,
    reconnectMs,
    shippedUpMs,
    convergedMs,
    unequalAtMs,
    digestRoundMs,
    shippedEntries,
    conflicts: {
      recordedByRegion: counted.byRegion,
      distinct: counted.distinct,
      keys: counted.keys,
      expected,
    },
  }
}
