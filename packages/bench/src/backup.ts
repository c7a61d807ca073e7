/**
 * pnpm bench --suite backup: what backups, the log archive and restores cost and deliver.
 *
 *  1. On a 3-node single-leader cluster as shipped, n2 (a follower) archiving its log
 *     (`--archive-dir`, segments every second), prefilled with `keys` keys:
 *     - backup throughput: `client.backup` from a follower, idle cluster: MB/s and keys/s;
 *     - the closed-loop maximum of quorum writes (wrk), then quorum writes offered at 50% of it
 *       (the pacer, latency from when each was due) four times: alone, with backups from a
 *       follower running back to back (by the kv command, in its own process), the same paced
 *       with --max-rate 2M, and with backups from the leader: p50, p99, max;
 *     - the archive's lag (the RPO) sampled every 200 ms on n2 during the 50% phases.
 *  2. Restore time (RTO), offline, on this machine's disk: a base backup of `rtoKeys` keys of
 *     `valueBytes` bytes built directly in LevelDB, plus `rtoEntries` archived single-key
 *     writes; `restore` to the archive's end (verify everything, load the state, replay) is
 *     timed, and so is a restored member's start until it answers /ready.
 *
 * Figures are printed and written; nothing is asserted.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { KvClient } from '@kvstore/client'
import { EntryKind, OpType, encodeLogEntry, type LogEntry, type Op } from '@kvstore/protocol'
import {
  Store,
  archiveDirs,
  baseDirName,
  openArchiveDir,
  restore,
  writeBackup,
  writeSegment,
  type RestoreResult,
} from '@kvstore/storage'
import { kvBin, metric, terminate } from '@kvstore/testkit'
import { prefillRandom, waitCaughtUp } from './cluster.js'
import { ensureWrk, fmt, say, sleep } from './common.js'
import { startBenchCluster, startBenchNode } from './node-process.js'
import { runPaced, type PacedOptions, type PacedResult } from './pacer.js'
import { loadAverage, removeOnExit } from './proc.js'
import { publish } from './report.js'
import { benchSecurity, type BenchSecurity, type SecurityProfile } from './security.js'
import { quorumPutMaximum, warmUpQuorumPuts } from './wrk.js'

const execFileAsync = promisify(execFile)

/** The pace of the paced phase (kv backup create --max-rate). */
const pacedRate = '2M'

export interface BackupBenchOptions {
  security: SecurityProfile
  /** Seconds of each 50% phase. */
  durationS: number
  connections: number
  valueBytes: number
  /** Keys in the cluster before the backups. */
  keys: number
  /** Keys of the offline restore's base backup, and archived entries after it. */
  rtoKeys: number
  rtoEntries: number
  out: string
}

interface ForegroundPhase {
  name: string
  result: PacedResult
  backups: { count: number; mbPerS: number[] }
  lagSeconds: { samples: number; p50: number; p99: number; max: number }
}

interface BackupRun {
  member: string
  role: string
  /** Bytes of the backup's files (compressed). */
  bytes: number
  /** Bytes of the keys and values backed up. */
  dataBytes: number
  keys: number
  durationMs: number
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number
}

/**
 * One backup by the `kv` command in its own process, as an operator takes one: the bench
 * process also runs the load generator, whose timing must not share an event loop with the
 * backup's decoding, hashing and writing.
 */
async function cliBackup(
  urls: string[],
  to: string,
  from: string,
  security: BenchSecurity,
  maxRate: string | null = null,
): Promise<BackupRun> {
  const started = performance.now()
  const env: NodeJS.ProcessEnv = { ...process.env, KV_CREDENTIALS: join(to, '..', 'none.json') }
  if (security.certsDir !== null) {
    env.KV_CACERT = join(security.certsDir, 'ca.crt')
    env.KV_CERT = join(security.certsDir, 'root.crt')
    env.KV_KEY = join(security.certsDir, 'root.key')
  }
  const { stdout } = await execFileAsync(
    process.execPath,
    [
      kvBin,
      '--url',
      urls.join(','),
      '--json',
      'backup',
      'create',
      '--to',
      to,
      '--from',
      from,
      ...(maxRate !== null ? ['--max-rate', maxRate] : []),
    ],
    { env, maxBuffer: 1024 * 1024 },
  )
  const out = JSON.parse(stdout) as {
    member: string
    role: string
    bytes: number
    dataBytes: number
    keys: number
  }
  return {
    member: out.member,
    role: out.role,
    bytes: out.bytes,
    dataBytes: out.dataBytes,
    keys: out.keys,
    durationMs: performance.now() - started,
  }
}

/** One backup through the SDK, timed. */
async function oneBackup(client: KvClient, to: string, from: string): Promise<BackupRun> {
  const started = performance.now()
  const result = await client.backup({ to, from })
  return {
    member: result.member,
    role: result.role,
    bytes: result.bytes,
    dataBytes: result.manifest.bytes,
    keys: result.manifest.keys,
    durationMs: performance.now() - started,
  }
}

function entryOf(lsn: number, ops: Op[]): LogEntry {
  return {
    epoch: 1,
    lsn,
    kind: ops.length === 1 ? EntryKind.Put : EntryKind.Batch,
    ops,
    timestampMs: Date.now(),
    requestId: '',
    requestFingerprint: Buffer.alloc(0),
  }
}

/**
 * Builds an archive for the restore-time figure: a base backup of `keys` keys, then `entries`
 * single-key writes archived in segments of 10,000. Returns its size and where it is.
 */
async function buildArchive(
  work: string,
  keys: number,
  entries: number,
  valueBytes: number,
): Promise<{ archive: string; baseBytes: number; buildMs: number }> {
  const started = performance.now()
  const store = await Store.open({ dir: join(work, 'source'), nodeId: 'n1', fsync: false })
  await store.setHardState({ epoch: 1 })
  // Random values (base64 text), each its own: they compress as real data would.
  const pool = randomBytes(valueBytes * 4096)
  const valueOf = (i: number): Buffer => {
    const at = (i * 7919) % (pool.length - valueBytes)
    return Buffer.from(
      pool
        .subarray(at, at + valueBytes)
        .toString('base64')
        .slice(0, valueBytes),
    )
  }
  let lsn = store.appliedLsn
  for (let start = 0; start < keys; start += 1000) {
    const ops: Op[] = []
    for (let i = start; i < Math.min(keys, start + 1000); i++) {
      ops.push({
        type: OpType.Put,
        key: Buffer.from(`rto/${String(i).padStart(10, '0')}`),
        value: valueOf(i),
      })
    }
    lsn++
    await store.append([entryOf(lsn, ops)], { commitLsn: lsn })
  }
  const archive = join(work, 'archive')
  await openArchiveDir(archive, 'bench')
  const snapshot = await store.openSnapshot()
  const manifest = await writeBackup(join(archive, archiveDirs.base, baseDirName(lsn)), snapshot, {
    clusterId: 'bench',
    nodeId: 'n1',
    mode: 'single-leader',
    role: 'leader',
    lsnTimeMs: Date.now(),
    takenAtMs: Date.now(),
  })
  await snapshot.close()
  let segment: { lsn: number; timestampMs: number; data: Uint8Array }[] = []
  for (let i = 0; i < entries; i++) {
    lsn++
    const e = entryOf(lsn, [
      {
        type: OpType.Put,
        key: Buffer.from(`rto/${String(i % keys).padStart(10, '0')}`),
        value: valueOf(i + 1),
      },
    ])
    await store.append([e], { commitLsn: lsn })
    segment.push({ lsn, timestampMs: e.timestampMs, data: encodeLogEntry(e) })
    if (segment.length === 10_000 || i === entries - 1) {
      await writeSegment(archive, segment)
      segment = []
    }
  }
  await store.close()
  await rm(join(work, 'source'), { recursive: true, force: true })
  return {
    archive,
    baseBytes: manifest.files.reduce((sum, f) => sum + f.bytes, 0),
    buildMs: performance.now() - started,
  }
}

export async function runBackupBench(options: BackupBenchOptions): Promise<void> {
  const { durationS, connections, valueBytes, keys, rtoKeys, rtoEntries } = options
  ensureWrk()
  const loadBefore = await loadAverage()
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-backup-'))
  const workOnExit = removeOnExit(work)
  const security = await benchSecurity(options.security, work)
  const idle: BackupRun[] = []
  const phases: ForegroundPhase[] = []
  let maximum = 0
  let rto: {
    result: RestoreResult
    baseBytes: number
    buildMs: number
    startMs: number
  } | null = null
  try {
    say(`== a 3-node cluster (${security.profile}), n2 archiving its log`)
    const archive = join(work, 'n2-archive')
    const cluster = await startBenchCluster(join(work, 'cluster'), 3, security)
    try {
      await cluster.stopMember('n2')
      await cluster.startMember('n2', ['--archive-dir', archive])
      await cluster.waitForLeader(30_000, { connected: true })
      const { leader } = cluster
      const authorization = await security.authorization(leader.url)
      const client = new KvClient({ url: cluster.members.map((m) => m.url), ...security.client })
      try {
        // Random values (base64 text): a backup compresses them as it would real data,
        // not as the repeated byte of other suites' prefill.
        say(`   prefilling ${fmt(keys)} keys of ${valueBytes} random bytes (base64)...`)
        await prefillRandom(client, keys, valueBytes)
        await waitCaughtUp(cluster)
        say('== backup throughput (idle cluster, from a follower, 3 runs)')
        for (let i = 0; i < 3; i++) {
          const run = await oneBackup(client, join(work, `idle-${i}`), 'follower')
          idle.push(run)
          say(
            `   ${run.member} (${run.role}): ${fmt(run.keys)} keys, ${fmt(run.dataBytes / 1e6, 1)} MB of keys and values (${fmt(run.bytes / 1e6, 1)} MB of files) in ${fmt(run.durationMs)} ms: ${fmt(run.dataBytes / 1e6 / (run.durationMs / 1000), 1)} MB/s, ${fmt(run.keys / (run.durationMs / 1000))} keys/s`,
          )
          await rm(join(work, `idle-${i}`), { recursive: true, force: true })
        }

        say('   warming up (ack=quorum, 3 s)...')
        await warmUpQuorumPuts({
          url: leader.url,
          valueBytes,
          authorization,
          scriptDir: work,
          connections,
        })
        await waitCaughtUp(cluster)
        ;({ maximum } = await quorumPutMaximum({
          url: leader.url,
          valueBytes,
          authorization,
          scriptDir: work,
          connections,
          durationS: 10,
        }))
        say(`== closed-loop maximum: ${fmt(maximum)}/s quorum writes`)
        const rate = Math.max(1, Math.round(maximum / 2))
        for (const name of [
          'no backup',
          'backups from a follower',
          `backups from a follower, --max-rate ${pacedRate}`,
          'backups from the leader',
        ]) {
          await waitCaughtUp(cluster)
          say(`== 50% (${fmt(rate)}/s) for ${durationS} s: ${name}`)
          let stop = false
          const mbPerS: number[] = []
          const from = name.includes('leader') ? 'leader' : 'follower'
          const backups =
            name === 'no backup'
              ? Promise.resolve()
              : (async () => {
                  for (let i = 0; !stop; i++) {
                    const to = join(work, `fg-${from}-${i}`)
                    const run = await cliBackup(
                      cluster.members.map((m) => m.url),
                      to,
                      from,
                      security,
                      name.includes('--max-rate') ? pacedRate : null,
                    )
                    mbPerS.push(run.dataBytes / 1e6 / (run.durationMs / 1000))
                    await rm(to, { recursive: true, force: true })
                  }
                })()
          const lags: number[] = []
          const sampler = (async () => {
            while (!stop) {
              lags.push(
                await metric(cluster.member('n2').url, 'kv_archive_lag_seconds').catch(() => NaN),
              )
              await sleep(200)
            }
          })()
          const result = await runPaced({
            url: leader.url,
            tls: security.client.tls as PacedOptions['tls'],
            authorization,
            rate,
            durationS,
            connections,
            valueBytes,
            prefix: `bench/fg/`,
            query: '?ack=quorum',
          })
          stop = true
          await Promise.all([backups, sampler])
          const sorted = lags.filter((l) => Number.isFinite(l)).sort((a, b) => a - b)
          phases.push({
            name,
            result,
            backups: { count: mbPerS.length, mbPerS },
            lagSeconds: {
              samples: sorted.length,
              p50: percentile(sorted, 50),
              p99: percentile(sorted, 99),
              max: sorted[sorted.length - 1] ?? 0,
            },
          })
          say(
            `   p50 ${fmt(result.latencyMs.p50, 2)} ms, p99 ${fmt(result.latencyMs.p99, 2)} ms, max ${fmt(result.latencyMs.max)} ms; ${mbPerS.length} backups; archive lag p99 ${fmt(percentile(sorted, 99), 2)} s, max ${fmt(sorted[sorted.length - 1] ?? 0, 2)} s`,
          )
        }
      } finally {
        await client.close()
      }
    } finally {
      await cluster.stop()
    }

    say(
      `== restore time: a base backup of ${fmt(rtoKeys)} keys of ${valueBytes} bytes + ${fmt(rtoEntries)} archived writes`,
    )
    const built = await buildArchive(join(work, 'rto'), rtoKeys, rtoEntries, valueBytes)
    say(
      `   built in ${fmt(built.buildMs / 1000, 1)} s (${fmt(built.baseBytes / 1e6, 1)} MB of backup files)`,
    )
    const restored = join(work, 'rto', 'restored')
    await mkdir(restored, { recursive: true })
    // The restored member runs with the run's certificates, which name their cluster.
    const clusterId =
      security.certsDir === null
        ? 'bench-restored'
        : (await readFile(join(security.certsDir, 'cluster-id'), 'utf8')).trim()
    const result = (await restore({
      from: built.archive,
      target: { kind: 'latest' },
      dataDir: join(restored, 'n1'),
      nodeId: 'n1',
      clusterId,
    })) as RestoreResult
    say(
      `   restored ${fmt(result.digest.keys)} keys to LSN ${result.lsn} (${fmt(result.entries)} entries replayed) in ${fmt(result.durationMs / 1000, 1)} s`,
    )
    // The restored member's start: open, recover, answer /ready (a single node).
    const started = performance.now()
    const node = await startBenchNode(['--id', 'n1', '--data-dir', join(restored, 'n1')], security)
    const startMs = performance.now() - started
    await terminate(node)
    rto = { result, baseBytes: built.baseBytes, buildMs: built.buildMs, startMs }
  } finally {
    await rm(work, { recursive: true, force: true })
    workOnExit.forget()
  }
  const loadAfter = await loadAverage()
  const idleMbPerS = idle.map((r) => r.dataBytes / 1e6 / (r.durationMs / 1000))
  const idleKeysPerS = idle.map((r) => r.keys / (r.durationMs / 1000))
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0
  const rows = phases.map((p) => {
    const r = p.result
    return `| ${p.name} | ${fmt(r.throughput)} | ${fmt(r.latencyMs.p50, 2)} | ${fmt(r.latencyMs.p99, 2)} | ${fmt(r.latencyMs.max)} | ${r.errors} | ${p.backups.count}${p.backups.count > 0 ? ` (median ${fmt(median(p.backups.mbPerS), 1)} MB/s)` : ''} | ${fmt(p.lagSeconds.p50, 2)} / ${fmt(p.lagSeconds.p99, 2)} / ${fmt(p.lagSeconds.max, 2)} |`
  })
  const r = rto
  await publish(options.out, {
    suite: 'backup',
    command: `pnpm bench --suite backup --keys ${keys} --rto-keys ${rtoKeys} --rto-entries ${rtoEntries} --duration ${durationS} --connections ${connections} --value-bytes ${valueBytes}${options.security === 'tls-auth' ? '' : ` --security ${options.security}`}`,
    summary: `Backups, the log archive and restore on a 3-node single-leader cluster (${options.security === 'tls-auth' ? 'as shipped: TLS and token auth' : `--security ${options.security}`}) holding ${fmt(keys)} keys of ${valueBytes} bytes, n2 (a follower) archiving its log; and an offline restore of ${fmt(rtoKeys)} keys plus ${fmt(rtoEntries)} archived writes. Load generator, nodes and backups share the machine.`,
    body: [
      `Backup throughput (idle cluster, from a follower, through the SDK to a local directory; ${idle.length} runs): median ${fmt(median(idleMbPerS), 1)} MB/s of keys and values and ${fmt(median(idleKeysPerS))} keys/s (${fmt((idle[0]?.dataBytes ?? 0) / 1e6, 1)} MB of keys and values per backup, ${fmt((idle[0]?.bytes ?? 0) / 1e6, 1)} MB of compressed files).`,
      '',
      `Quorum writes at 50% of the closed-loop maximum (${fmt(maximum)}/s), ${durationS} s per row; the archive's lag is the RPO, sampled every 200 ms on n2:`,
      '',
      '| during the phase | writes/s | p50 ms | p99 ms | max ms | errors | backups taken | archive lag p50 / p99 / max, s |',
      '|---|---:|---:|---:|---:|---:|---|---|',
      ...rows,
      '',
      r === null
        ? 'Restore time: not measured.'
        : `Restore time (RTO), offline on this machine's disk: ${fmt(r.result.digest.keys)} keys (${fmt(r.baseBytes / 1e6, 1)} MB of compressed backup files, ${fmt(r.result.digest.bytes / 1e6, 1)} MB of keys and values) plus ${fmt(r.result.entries)} archived writes replayed: **${fmt(r.result.durationMs / 1000, 1)} s** (checks included: every file's checksum, the state digest, every segment), then ${fmt(r.startMs / 1000, 1)} s for the restored member to open its data directory and answer /ready.`,
      '',
      `Load average (1 min) ${fmt(loadBefore, 2)} before and ${fmt(loadAfter, 2)} after (${cpus().length} cores).`,
    ],
    json: {
      loadAverage: { before: loadBefore, after: loadAfter },
      keys,
      valueBytes,
      durationS,
      connections,
      idleBackups: idle,
      closedLoopMaximum: maximum,
      phases,
      restore: r,
    },
  })
}
