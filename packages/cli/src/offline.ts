/**
 * The offline commands: `kv backup verify DIR` and `kv restore`, which read backups and the log
 * archive, and build data directories, on this machine with no node running. They need the
 * storage package (the backup format, LevelDB), which the rest of the CLI does not: this is
 * the one file of the CLI that may import it (see eslint.config.js), and `kv` loads it only
 * for these commands. kv-cluster uses `restoreMembers` to restore every member of a new
 * cluster before it starts them.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { KvError, clusterIdPattern, identityNamePattern } from '@kvstore/protocol'
import {
  restore,
  verifyBackup,
  type RestorePlan,
  type RestoreResult,
  type RestoreTarget,
} from '@kvstore/storage'
import { clusterIdFile, newClusterId } from './certs.js'

export type { RestoreTarget }

/** Bad usage of an offline command (exit status 2). */
export class OfflineUsageError extends Error {}

/** The target the options name: at most one of --to-lsn, --to-time, --latest. */
export function restoreTarget(opts: {
  'to-lsn'?: string | undefined
  'to-time'?: string | undefined
  latest?: boolean | undefined
}): RestoreTarget {
  const given = [opts['to-lsn'] !== undefined, opts['to-time'] !== undefined, opts.latest === true]
  if (given.filter(Boolean).length > 1)
    throw new OfflineUsageError('give at most one of --to-lsn, --to-time and --latest')
  if (opts['to-lsn'] !== undefined) {
    if (!/^[0-9]+$/.test(opts['to-lsn']) || !Number.isSafeInteger(Number(opts['to-lsn'])))
      throw new OfflineUsageError(`--to-lsn must be a whole number, got ${opts['to-lsn']}`)
    return { kind: 'lsn', lsn: Number(opts['to-lsn']) }
  }
  if (opts['to-time'] !== undefined) {
    const text = opts['to-time']
    // ISO 8601: a date, or a date and time (with a zone, or UTC when it has none).
    const iso = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/
    const timeMs = iso.test(text)
      ? Date.parse(/T.*(Z|[+-]\d{2}:?\d{2})$/.test(text) || !text.includes('T') ? text : `${text}Z`)
      : NaN
    if (Number.isNaN(timeMs))
      throw new OfflineUsageError(
        `--to-time must be an ISO 8601 time such as 2026-03-01T12:30:00Z, got ${text}`,
      )
    return { kind: 'time', timeMs }
  }
  if (opts.latest === true) return { kind: 'latest' }
  return { kind: 'backup' }
}

function checkId(what: string, id: string): string {
  const pattern = what === 'cluster id' ? clusterIdPattern : identityNamePattern
  if (!pattern.test(id))
    throw new OfflineUsageError(
      `${what} ${JSON.stringify(id)} is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    )
  return id
}

/** The cluster id a restore gives the new cluster: given, from a certs directory, or new. */
export async function restoreClusterId(opts: {
  'cluster-id'?: string | undefined
  'certs-dir'?: string | undefined
}): Promise<{ clusterId: string; fresh: boolean }> {
  if (opts['cluster-id'] !== undefined && opts['certs-dir'] !== undefined)
    throw new OfflineUsageError('give --cluster-id or --certs-dir, not both')
  if (opts['cluster-id'] !== undefined)
    return { clusterId: checkId('cluster id', opts['cluster-id']), fresh: false }
  if (opts['certs-dir'] !== undefined) {
    const text = await readFile(join(opts['certs-dir'], clusterIdFile), 'utf8')
    return { clusterId: checkId('cluster id', text.trim()), fresh: false }
  }
  return { clusterId: newClusterId(), fresh: true }
}

function iso(ms: number): string {
  return ms > 0 ? new Date(ms).toISOString() : 'time unknown'
}

/** Restores one member's data directory (see storage's restore). */
export async function restoreMember(options: {
  from: string
  archive?: string | undefined
  target: RestoreTarget
  dataDir: string
  nodeId: string
  clusterId: string
  dryRun?: boolean
}): Promise<RestoreResult | RestorePlan> {
  return restore({
    from: options.from,
    ...(options.archive !== undefined ? { archive: options.archive } : {}),
    target: options.target,
    dataDir: options.dataDir,
    nodeId: checkId('node id', options.nodeId),
    clusterId: options.clusterId,
    ...(options.dryRun === true ? { dryRun: true } : {}),
  })
}

/** What a restore reached, for people. */
export function describeRestore(result: RestoreResult | RestorePlan, nodeId: string): string {
  const base = result.base
  const lines = [
    `${'digest' in result ? 'restored' : 'would restore (dry run)'} ${'dataDir' in result ? result.dataDir : ''} as member ${nodeId}`,
    `  base backup   ${base.dir}: LSN ${base.lsn} (${iso(base.timeMs)}), taken from ${base.nodeId} of cluster ${base.clusterId}`,
    `  reached       LSN ${result.lsn} (${iso(result.timeMs)}), ${result.entries} log entries replayed from ${result.segments} archive segments`,
  ]
  if ('digest' in result) {
    lines.push(
      `  digest        ${result.digest.digest} (${result.digest.keys} keys, ${result.digest.bytes} bytes) at LSN ${result.digest.appliedLsn}`,
      `  cluster id    ${result.clusterId} (new), epoch ${result.epoch}; took ${result.durationMs} ms`,
    )
  }
  return `${lines.join('\n')}\n`
}

interface OfflineOpts {
  json?: boolean | undefined
  from?: string | undefined
  archive?: string | undefined
  'to-lsn'?: string | undefined
  'to-time'?: string | undefined
  latest?: boolean | undefined
  'data-dir'?: string | undefined
  'node-id'?: string | undefined
  'cluster-id'?: string | undefined
  'certs-dir'?: string | undefined
  'dry-run'?: boolean | undefined
}

interface OfflineIo {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()))
  })
}

/**
 * `kv backup verify DIR` and `kv restore ...`. Returns the exit status: 0, 1 with the code and
 * message of a KvError (a corrupt backup, an unreachable target, a data directory in use), or
 * throws OfflineUsageError (2).
 */
export async function runOffline(
  command: 'verify' | 'restore',
  args: string[],
  opts: OfflineOpts,
  io: OfflineIo,
): Promise<number> {
  try {
    if (command === 'verify') {
      const dir = args[0]
      if (dir === undefined || args.length > 1)
        throw new OfflineUsageError('backup verify needs one DIR')
      const check = await verifyBackup(dir)
      if (opts.json) {
        await write(io.stdout, `${JSON.stringify({ dir, ok: true, ...check }, null, 2)}\n`)
        return 0
      }
      const m = check.manifest
      await write(
        io.stdout,
        [
          `OK backup ${dir}`,
          `  taken from    ${m.nodeId} (${m.role}) of cluster ${m.clusterId} (${m.mode}) at ${iso(m.takenAtMs)}`,
          `  state at      LSN ${m.lsn}, epoch ${m.epoch} (${iso(m.lsnTimeMs)})`,
          `  checked       the manifest's checksum, ${check.files - 1} ${check.files - 1 === 1 ? 'file' : 'files'} (${check.bytes} bytes) against ${check.files - 1 === 1 ? 'its' : 'their'} SHA-256, every record`,
          `  holds         ${check.keys} keys (${m.bytes} bytes), ${m.reservedKeys} reserved keys, ${check.requests} request ids`,
          `  digest        ${check.digest} (recomputed; equals the manifest's)`,
          '',
        ].join('\n'),
      )
      return 0
    }
    if (args.length > 0) throw new OfflineUsageError(`restore takes no ${args[0]}`)
    if (opts.from === undefined) throw new OfflineUsageError('restore needs --from DIR')
    if (opts['data-dir'] === undefined) throw new OfflineUsageError('restore needs --data-dir D')
    const target = restoreTarget(opts)
    const nodeId = checkId('node id', opts['node-id'] ?? 'n1')
    const { clusterId, fresh } = await restoreClusterId(opts)
    const result = await restoreMember({
      from: opts.from,
      archive: opts.archive,
      target,
      dataDir: opts['data-dir'],
      nodeId,
      clusterId,
      dryRun: opts['dry-run'] === true,
    })
    if (opts.json) {
      await write(io.stdout, `${JSON.stringify({ nodeId, clusterId, ...result }, null, 2)}\n`)
      return 0
    }
    await write(io.stdout, describeRestore(result, nodeId))
    if ('digest' in result) {
      const certs =
        opts['certs-dir'] !== undefined
          ? `It is the cluster id of the certificates in ${opts['certs-dir']}.`
          : `The certificates of the new cluster must name cluster id ${clusterId}${fresh ? ' (made now)' : ''}:\n  kv certs init --dir certs --members n1,n2,n3 --cluster-id ${clusterId}`
      await write(
        io.stdout,
        `\n${certs}\nRestore every member's data directory from the same backup (each with its --node-id and this cluster id) before starting any: an empty member must not lead the others.\n`,
      )
    }
    return 0
  } catch (err) {
    if (err instanceof KvError) {
      const details = Object.entries(err.details)
        .map(([name, value]) => `${name}=${String(value)}`)
        .join(' ')
      await write(io.stderr, `kv: ${err.code}: ${err.message}${details ? ` (${details})` : ''}\n`)
      return 1
    }
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'EACCES' || code === 'ENOTDIR') {
      await write(io.stderr, `kv: ${(err as Error).message}\n`)
      return 1
    }
    throw err
  }
}
