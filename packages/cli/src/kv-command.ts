/**
 * The `kv` command: a thin shell over the SDK.
 *
 * Exit status: 0 success, 1 error, 2 bad usage, 3 key not found, 4 condition failed,
 * 5 several values (siblings) printed.
 */
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import {
  KvClient,
  KvError,
  TicketWaitTimeoutError,
  type BackupResult,
  type QueuedResult,
  type BatchOp,
  type LeaderlessClusterView,
  type LeaderlessWriteInfo,
  type Quorum,
  type Sibling,
} from '@kvstore/client'
import { certsOptions, certsUsage, runCerts } from './certs-command.js'
import { ImportError, runImport } from './import.js'
import { AuthUsageError, authUsage, runAuthCommand } from './auth-command.js'
import { CredentialError, resolveConnection, type Connection } from './connect.js'
import { MemberUsageError, memberOptions, memberUsage, runMember } from './member-command.js'
import {
  RegionsUsageError,
  clusterRegionLines,
  regionsUsage,
  runRegionsCommand,
} from './regions-command.js'
import {
  ShardUsageError,
  readShardMapFile,
  runShard,
  shardOptions,
  shardUsage,
} from './shard-command.js'
import {
  LeaseUsageError,
  leaseOptions,
  leaseUsage,
  msOption,
  runLease,
  runLock,
} from './lock-command.js'

export interface Io {
  env: NodeJS.ProcessEnv
  stdin: NodeJS.ReadableStream & { isTTY?: boolean }
  stdout: NodeJS.WritableStream & { isTTY?: boolean }
  stderr: NodeJS.WritableStream
}

/** The offline commands (offline.ts runs them). */
const offlineUsage = `Backups and restore (offline: no node needed):
  backup verify DIR       check a backup completely: the manifest, every file's size and
                          SHA-256, every record, and the state digest recomputed from them
  restore --from DIR --data-dir D
        [--archive DIR] [--to-lsn N | --to-time ISO8601 | --latest]
        [--node-id ID] [--cluster-id ID | --certs-dir DIR] [--dry-run]
                          build a new member's data directory D (which must not exist, or be
                          empty) from a backup, or from an archive's newest fitting base
                          backup, then the archive's log up to the target (default: the
                          backup itself); --node-id default n1; the new cluster's id:
                          --cluster-id, or the cluster-id file of --certs-dir, or a fresh one.
                          Restore every member of the new cluster from the same backup.
`

export const usage = `kv: client for the key-value store.

Usage: kv [--url URL] [--json] <command> [arguments]

Commands:
  get KEY                 print the value's bytes (--output FILE writes them to a file;
        [--linearizable]  --linearizable reads from the leader, confirmed with a majority)
        [--consistency default|committed|linearizable]
                          committed: only writes a majority holds, never one a failover
                          could roll back (any replica, no waiting); --linearizable is
                          --consistency linearizable
        [--r N|quorum|all] [--repair background|blocking]
                          leaderless: a key with several concurrent values (siblings)
                          prints them all with their context (exit status 5); --json shows
                          the context of any read
  put KEY [VALUE]         write a value from VALUE, --file FILE, or standard input
        [--if-version N]  only if the key has version N (compare-and-set)
        [--if-absent]     only if the key does not exist (create)
        [--if-exists]     only if the key exists
        [--w N|quorum|all] [--context TOKEN] [--sloppy]
                          leaderless: acks to wait for; the context of the read the value
                          is based on (replaces the siblings it saw); let nodes past the
                          key's replicas stand in for down ones
  del KEY [--if-version N] [--w N|quorum|all] [--context TOKEN]
  ticket ID               what became of a queued write (kv put --ack queued): pending,
        [--wait]          applied (lsn, session) or failed (its error code); --wait polls
        [--timeout-ms N]  until it is decided, at most N ms (default 30000)
  ls [PREFIX]             list keys (--limit N per page, --start KEY, --all for every page;
                          --consistency committed lists the state at the commit LSN)
  watch [PREFIX]          stream the committed changes under PREFIX, one a line (LSN, kind,
        [--from-lsn N]    key, value); --json prints NDJSON events; from the changes after
        [--no-values]     LSN N (default: from now); it resumes by itself on another member;
        [--progress]      --progress shows progress events; --count N stops after N changes
        [--count N]
  batch FILE              apply {"ops": [...]} from FILE (- for standard input) atomically
  import FILE             bulk-load NDJSON ({"key","value"} per line) or CSV (key,value columns),
        [--format ndjson|csv] [--chunk N] [--concurrency N] [--max-lag-ms MS]
                          in batches, slowing down whenever followers lag more than --max-lag-ms
  cluster                 the members, their roles, acknowledged LSNs and lag; in a region,
                          the lag to and from the other regions; leaderless:
                          the members up or down, their share of the ring, the hints held
                          for them and the last anti-entropy exchange with them
  transfer [MEMBER]       hand leadership to MEMBER, or to the most up-to-date follower
  member list|add|promote|remove|replace
                          the cluster's members, and changes to them while it runs (below)
  rollbacks               writes the node at --url dropped as unconfirmed (async writes of a
                          deposed leader), as JSON (the next URL's when it is down)
  status                  the status of the node at --url as JSON (the next URL's when it is
                          down)
  digest                  hash of that node's state

Backups (need the admin role):
  backup create --to DIR  stream a backup of one member into DIR (which must not exist, or
        [--from follower|leader|MEMBER]
                          be empty): by default a connected follower, the most up to date,
                          and the leader only when no follower can be reached (it says so);
                          prints the LSN, the member, keys, bytes, files, MB/s and the digest
        [--all-members]   every member, each into DIR/MEMBER (leaderless clusters)
        [--max-rate R]    pace the backup to at most R bytes a second (512k, 20M; at least
                          64k), so it stays within a CPU and disk budget beside the load
        [--archive]       instead, have the member (--from MEMBER, default the leader) take
                          a base backup into its log archive (kv-node --archive-dir)
${memberUsage}
${shardUsage}
${regionsUsage}
${leaseUsage}
${offlineUsage}
${certsUsage}
${authUsage}
Options:
  --url URL[,URL...]      nodes to talk to; any member will do, the others are tried when it
                          is down, and every command finds the leader itself (env
                          KV_ENDPOINTS or KV_URL; else the members kv login found; else
                          https://127.0.0.1:7001)
  --cacert FILE           the cluster's CA (env KV_CACERT; default: the CA of kv login, or
                          data/certs/ca.crt when it exists, as kv-cluster makes it)
  --cert FILE --key FILE  a client certificate naming a user (env KV_CERT, KV_KEY)
  --token TOKEN           a token from kv login or POST /v1/auth/token (env KV_TOKEN;
                          --token-file FILE, mode 0600, or KV_TOKEN_FILE)
  --user NAME             log in for this one command (env KV_USER), with --password-file
                          FILE (mode 0600; env KV_PASSWORD_FILE) or env KV_PASSWORD
  --ack async|quorum|all  durability a write waits for (default: the cluster's; single-leader);
        |queued           queued: put and delete go into the outbox of the member at --url
                          (leader or follower, even with no leader) and print a ticket
  --json                  machine-readable output
  --http1                 use HTTP/1.1 instead of HTTP/2 (h2c)
  -h, --help              show this help

Exit status: 0 success, 1 error, 2 bad usage, 3 key not found, 4 condition failed,
5 several values (siblings) printed.
`

class UsageError extends Error {}

async function readStream(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream)
    chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string))
  return Buffer.concat(chunks)
}

function parseVersion(text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  if (!/^[1-9][0-9]*$/.test(text))
    throw new UsageError(`--if-version must be a positive whole number, got ${text}`)
  return Number(text)
}

function parseQuorum(text: string | undefined, name: 'w' | 'r'): Quorum | undefined {
  if (text === undefined) return undefined
  if (text === 'quorum' || text === 'all') return text
  if (!/^[1-9][0-9]*$/.test(text))
    throw new UsageError(`--${name} must be a positive whole number, quorum or all, got ${text}`)
  return Number(text)
}

/** A value for the terminal: its text when it is printable UTF-8, else its base64. */
function printable(value: Buffer): string {
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(value)
  } catch {
    return `(${value.length} bytes, base64) ${value.toString('base64')}`
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text))
    return `(${value.length} bytes, base64) ${value.toString('base64')}`
  return text
}

function siblingJson(s: Sibling): { valueBase64: string; timestamp: string } {
  return { valueBase64: s.value.toString('base64'), timestamp: s.timestamp }
}

function throwUsage(message: string): never {
  throw new UsageError(message)
}

/** `(3 acks, w=2, coordinator n2, hinted n4) context TOKEN` for a leaderless write. */
function leaderlessWrite(result: Partial<LeaderlessWriteInfo>): string {
  const hinted = result.hinted?.length
    ? `, hinted ${result.hinted.map((m) => (result.standIns?.[m] ? `${m} (held by ${result.standIns[m]})` : m)).join(', ')}`
    : ''
  return `(${result.acks} acks, w=${result.w}, coordinator ${result.coordinator}${hinted}) context ${result.context}`
}

function ago(ms: number | null): string {
  if (ms === null) return 'never'
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000))
  return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`
}

/**
 * The members of a leaderless cluster: up or down and ring shares as the first view (the node
 * at --url) sees them; hints held for each member and its last anti-entropy exchange summed up
 * over every view (each node reports only its own).
 */
function leaderlessTable(views: LeaderlessClusterView[]): string {
  const view = views[0] as LeaderlessClusterView
  const lines = [
    `cluster ${view.clusterId} (leaderless), ${view.replicas} replicas per key, w=${view.defaultW} r=${view.defaultR}, conflicts: ${view.conflicts}, ${view.vnodes} vnodes per member\n`,
    `up/down as ${view.self} sees it; hints held for each member and anti-entropy with it, from ${views.length} of ${view.members.length} nodes\n`,
  ]
  const urlWidth = Math.max(...view.members.map((m) => m.clientUrl.length))
  for (const m of view.members) {
    let hints = 0
    let repaired = 0
    let lastExchange: number | null = null
    for (const v of views) {
      const seen = v.members.find((x) => x.id === m.id)
      if (seen === undefined || v.self === m.id) continue
      hints += seen.hintBacklog
      repaired += seen.antiEntropyKeysRepaired
      if (seen.lastAntiEntropyMs !== null)
        lastExchange = Math.max(lastExchange ?? 0, seen.lastAntiEntropyMs)
    }
    lines.push(
      `  ${m.id.padEnd(8)} ${(m.up ? 'up' : 'DOWN').padEnd(4)}  ${m.clientUrl.padEnd(urlWidth)}  ring ${(m.share * 100).toFixed(1).padStart(5)}% (${m.arcs} arcs)  hints ${String(hints).padStart(6)}  anti-entropy ${ago(lastExchange)} (${repaired} keys repaired)\n`,
    )
  }
  return lines.join('')
}

/** A rate such as 65536, 512k or 20M (powers of 1024) in bytes a second. */
function parseRate(text: string): number {
  const match = /^(\d+)([kKmMgG]?)$/.exec(text)
  if (match === null)
    throw new UsageError(`--max-rate must be bytes a second such as 512k or 20M, not ${text}`)
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(match[2] ?? '').toLowerCase()] ?? 1
  return Number(match[1]) * unit
}

/** `kv backup create`: one member, every member, or a base backup into a member's archive. */
async function backupCreate(
  client: KvClient,
  opts: {
    to?: string | undefined
    from?: string | undefined
    'all-members'?: boolean | undefined
    'archive-target'?: boolean | undefined
    'max-rate'?: string | undefined
    json?: boolean | undefined
  },
  io: Io,
): Promise<number> {
  const maxBytesPerS = opts['max-rate'] === undefined ? undefined : parseRate(opts['max-rate'])
  const rate = (bytes: number, ms: number) => (bytes / 1e6 / Math.max(ms / 1000, 0.001)).toFixed(1)
  if (opts['archive-target']) {
    if (opts.to !== undefined || opts['all-members'])
      throw new UsageError('backup create --archive takes no --to or --all-members')
    if (opts.from === 'follower')
      throw new UsageError('backup create --archive takes --from leader or --from MEMBER')
    const member = opts.from === undefined || opts.from === 'leader' ? undefined : opts.from
    const result = await client.backupToArchive(member === undefined ? {} : { member })
    if (opts.json) {
      await write(io.stdout, `${JSON.stringify(result, null, 2)}\n`)
      return 0
    }
    await write(
      io.stdout,
      `OK base backup at LSN ${result.lsn} in ${result.member}'s archive: ${result.dir}\n  ${result.keys} keys, ${result.bytes} bytes, ${result.files} files, ${rate(result.bytes, result.durationMs)} MB/s\n  digest ${result.digest}\n`,
    )
    return 0
  }
  if (opts.to === undefined) throw new UsageError('backup create needs --to DIR')
  const lines = (r: BackupResult) =>
    [
      `OK backup of ${r.member} (${r.role}) at LSN ${r.manifest.lsn} in ${r.dir}`,
      ...(r.fallback !== null ? [`  note: ${r.fallback}`] : []),
      `  ${r.manifest.keys} keys (${r.manifest.bytes} bytes), ${r.files} files, ${r.bytes} bytes in ${r.durationMs} ms, ${rate(r.bytes, r.durationMs)} MB/s`,
      `  digest ${r.manifest.digest}`,
      '',
    ].join('\n')
  const summary = (r: BackupResult) => ({
    dir: r.dir,
    member: r.member,
    role: r.role,
    fallback: r.fallback,
    lsn: r.manifest.lsn,
    epoch: r.manifest.epoch,
    clusterId: r.manifest.clusterId,
    keys: r.manifest.keys,
    /** Bytes of the keys and values backed up. */
    dataBytes: r.manifest.bytes,
    bytes: r.bytes,
    files: r.files,
    durationMs: r.durationMs,
    digest: r.manifest.digest,
  })
  if (opts['all-members']) {
    if (opts.from !== undefined) throw new UsageError('--all-members takes no --from')
    const result = await client.backupAllMembers({
      to: opts.to,
      ...(maxBytesPerS !== undefined ? { maxBytesPerS } : {}),
    })
    if (opts.json) {
      await write(
        io.stdout,
        `${JSON.stringify({ dir: result.dir, bytes: result.bytes, durationMs: result.durationMs, members: result.members.map(summary) }, null, 2)}\n`,
      )
      return 0
    }
    for (const r of result.members) await write(io.stdout, lines(r))
    await write(
      io.stdout,
      `${result.members.length} members, ${result.bytes} bytes in ${result.durationMs} ms\n`,
    )
    return 0
  }
  const result = await client.backup({
    to: opts.to,
    ...(opts.from !== undefined ? { from: opts.from } : {}),
    ...(maxBytesPerS !== undefined ? { maxBytesPerS } : {}),
  })
  if (opts.json) await write(io.stdout, `${JSON.stringify(summary(result), null, 2)}\n`)
  else await write(io.stdout, lines(result))
  return 0
}

function write(stream: NodeJS.WritableStream, text: string | Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()))
  })
}

export async function runKv(argv: string[], io: Io): Promise<number> {
  // `kv backup create --archive` is a switch, while `kv restore --archive DIR` takes a value:
  // parseArgs knows one type per option, so the switch goes by another name.
  if (argv.includes('backup') && argv.includes('create'))
    argv = argv.map((a) => (a === '--archive' ? '--archive-target' : a))
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: 'string' },
        json: { type: 'boolean', default: false },
        http1: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
        file: { type: 'string', short: 'f' },
        output: { type: 'string', short: 'o' },
        'if-version': { type: 'string' },
        'if-absent': { type: 'boolean', default: false },
        'if-exists': { type: 'boolean', default: false },
        limit: { type: 'string' },
        start: { type: 'string' },
        after: { type: 'string' },
        all: { type: 'boolean', default: false },
        ack: { type: 'string' },
        'timeout-ms': { type: 'string' },
        format: { type: 'string' },
        chunk: { type: 'string' },
        concurrency: { type: 'string' },
        'max-lag-ms': { type: 'string' },
        linearizable: { type: 'boolean', default: false },
        consistency: { type: 'string' },
        r: { type: 'string' },
        w: { type: 'string' },
        repair: { type: 'string' },
        context: { type: 'string' },
        sloppy: { type: 'boolean' },
        cacert: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        token: { type: 'string' },
        'token-file': { type: 'string' },
        user: { type: 'string' },
        'password-file': { type: 'string' },
        'new-password-file': { type: 'string' },
        roles: { type: 'string' },
        admin: { type: 'boolean' },
        monitor: { type: 'boolean' },
        'rate-limit': { type: 'string' },
        'no-password': { type: 'boolean' },
        to: { type: 'string' },
        from: { type: 'string' },
        'all-members': { type: 'boolean', default: false },
        'archive-target': { type: 'boolean', default: false },
        'max-rate': { type: 'string' },
        archive: { type: 'string' },
        'to-lsn': { type: 'string' },
        'to-time': { type: 'string' },
        latest: { type: 'boolean', default: false },
        'data-dir': { type: 'string' },
        'node-id': { type: 'string' },
        'certs-dir': { type: 'string' },
        'dry-run': { type: 'boolean', default: false },
        'from-lsn': { type: 'string' },
        'no-values': { type: 'boolean', default: false },
        progress: { type: 'boolean', default: false },
        count: { type: 'string' },
        ...certsOptions,
        ...memberOptions,
        ...shardOptions,
        ...leaseOptions,
      },
    })
  } catch (err) {
    await write(io.stderr, `kv: ${(err as Error).message}\n\n${usage}`)
    return 2
  }
  const { values: opts, positionals } = parsed
  const [command, ...args] = positionals
  // Certificates are made locally: no URL, no client.
  if (command === 'certs') return runCerts(args, opts, io)
  // Backups are checked and restored locally: no URL, no client.
  if (command === 'restore' || (command === 'backup' && args[0] === 'verify')) {
    const { OfflineUsageError, runOffline } = await import('./offline.js')
    try {
      return await runOffline(
        command === 'restore' ? 'restore' : 'verify',
        command === 'restore' ? args : args.slice(1),
        opts,
        io,
      )
    } catch (err) {
      if (err instanceof OfflineUsageError) {
        await write(io.stderr, `kv: ${err.message}\n\n${offlineUsage}`)
        return 2
      }
      throw err
    }
  }
  if (opts.help || command === undefined || command === 'help') {
    await write(command === undefined && !opts.help ? io.stderr : io.stdout, usage)
    return command === undefined && !opts.help ? 2 : 0
  }
  const ack = opts.ack
  if (
    ack !== undefined &&
    ack !== 'async' &&
    ack !== 'quorum' &&
    ack !== 'all' &&
    ack !== 'queued'
  ) {
    await write(io.stderr, `kv: --ack must be async, quorum, all or queued\n`)
    return 2
  }
  // ack=queued is not a durability the client waits for: put and delete queue the write.
  const queued = ack === 'queued'
  // kv shard with a shard map file and no URL: the members it names are the URLs to use.
  if (
    command === 'shard' &&
    opts['shard-map'] !== undefined &&
    opts.url === undefined &&
    io.env.KV_ENDPOINTS === undefined &&
    io.env.KV_URL === undefined
  ) {
    try {
      const map = await readShardMapFile(opts['shard-map'])
      opts.url = map.groups.flatMap((g) => g.members.map((m) => m.url)).join(',')
    } catch (err) {
      await write(
        io.stderr,
        `kv: ${(err as Error).message}

${shardUsage}`,
      )
      return 2
    }
  }
  let connection: Connection
  try {
    connection = await resolveConnection(opts, io.env, { useSavedToken: command !== 'login' })
  } catch (err) {
    await write(io.stderr, `kv: ${(err as Error).message}\n`)
    return err instanceof CredentialError ? 2 : 1
  }
  const makeClient = (c: Connection): KvClient =>
    new KvClient({
      url: c.urls,
      protocol: opts.http1 ? 'http1' : 'h2',
      ...(ack && ack !== 'queued' ? { ack } : {}),
      ...(c.tls ? { tls: c.tls } : {}),
      ...(c.auth ? { auth: c.auth } : {}),
    })
  if (['login', 'logout', 'whoami', 'auth', 'user', 'role'].includes(command)) {
    try {
      return await runAuthCommand(command, args, opts, connection, makeClient, io)
    } catch (err) {
      if (err instanceof AuthUsageError) {
        await write(io.stderr, `kv: ${err.message}\n\n${authUsage}`)
        return 2
      }
      if (err instanceof CredentialError) {
        await write(io.stderr, `kv: ${err.message}\n`)
        return 2
      }
      if (err instanceof KvError) {
        await write(io.stderr, `kv: ${err.code}: ${err.message}\n`)
        return 1
      }
      throw err
    }
  }
  let client: KvClient
  try {
    client = makeClient(connection)
  } catch (err) {
    await write(io.stderr, `kv: ${(err as Error).message}\n`)
    return 2
  }
  const out = (value: unknown) => write(io.stdout, `${JSON.stringify(value, null, 2)}\n`)
  const printQueued = (ticket: QueuedResult, key: string) =>
    opts.json
      ? out(ticket)
      : write(
          io.stdout,
          `OK queued ${key} on ${ticket.node}: ticket ${ticket.ticket} (kv ticket ${ticket.ticket} --wait)\n`,
        )
  const needKey = (): string => {
    const key = args[0]
    if (key === undefined) throw new UsageError(`${command} needs a KEY`)
    return key
  }
  /** --consistency (and --linearizable, its older spelling), checked. */
  const consistencyOpt = (): { consistency?: 'default' | 'committed' | 'linearizable' } => {
    const given = opts.consistency
    if (given === undefined) return opts.linearizable ? { consistency: 'linearizable' } : {}
    if (given !== 'default' && given !== 'committed' && given !== 'linearizable')
      throw new UsageError(`--consistency must be default, committed or linearizable, got ${given}`)
    if (opts.linearizable && given !== 'linearizable')
      throw new UsageError(`--linearizable contradicts --consistency ${given}`)
    return { consistency: given }
  }
  try {
    switch (command) {
      case 'get': {
        const key = needKey()
        const r = parseQuorum(opts.r, 'r')
        const repair = opts.repair
        if (repair !== undefined && repair !== 'background' && repair !== 'blocking')
          throw new UsageError(`--repair must be background or blocking, got ${repair}`)
        const result = await client.get(key, {
          ...consistencyOpt(),
          ...(r !== undefined ? { r } : {}),
          ...(repair !== undefined ? { repair } : {}),
        })
        if (result === null)
          throw new KvError('KV_ERR_KEY_NOT_FOUND', `key ${JSON.stringify(key)} does not exist`)
        if (result.siblings !== undefined) {
          // Leaderless: the context comes with every read; several values are all shown.
          const siblings = result.siblings
          if (opts.json) {
            await out({
              key,
              context: result.context,
              ...(siblings.length === 1 ? { valueBase64: result.value.toString('base64') } : {}),
              siblings: siblings.map(siblingJson),
            })
            return 0
          }
          if (siblings.length > 1) {
            await write(
              io.stdout,
              `${key} has ${siblings.length} concurrent values (siblings), newest first. To resolve them, write the value to keep with\n  kv put ${key} VALUE --context ${result.context ?? ''}\n`,
            )
            for (const [i, sibling] of siblings.entries()) {
              await write(
                io.stdout,
                `--- sibling ${i + 1} of ${siblings.length}, timestamp ${sibling.timestamp}\n${printable(sibling.value)}\n`,
              )
            }
            return 5
          }
        }
        if (opts.json) {
          await out({ key, version: result.version, valueBase64: result.value.toString('base64') })
        } else if (opts.output !== undefined) {
          const { writeFile } = await import('node:fs/promises')
          await writeFile(opts.output, result.value)
        } else {
          await write(io.stdout, result.value)
          if (io.stdout.isTTY && !result.value.toString('latin1').endsWith('\n'))
            await write(io.stdout, '\n')
        }
        return 0
      }
      case 'put': {
        const key = needKey()
        let value: Buffer
        if (args[1] !== undefined && opts.file !== undefined)
          throw new UsageError('give VALUE or --file, not both')
        if (args[1] !== undefined) value = Buffer.from(args[1], 'utf8')
        else if (opts.file !== undefined)
          value = await readFile(opts.file === '-' ? '/dev/stdin' : opts.file)
        else if (!io.stdin.isTTY) value = await readStream(io.stdin)
        else throw new UsageError('put needs a VALUE, --file FILE, or data on standard input')
        const ifVersion = parseVersion(opts['if-version'])
        if (queued) {
          const ticket = await client.putQueued(key, value, {
            ...(ifVersion !== undefined ? { ifVersion } : {}),
            ...(opts['if-absent'] ? { ifAbsent: true } : {}),
            ...(opts['if-exists'] ? { ifExists: true } : {}),
          })
          await printQueued(ticket, key)
          return 0
        }
        const w = parseQuorum(opts.w, 'w')
        const result = await client.put(key, value, {
          ...(opts.lease !== undefined ? { lease: opts.lease } : {}),
          ...(opts['ttl-ms'] !== undefined ? { ttlMs: msOption(opts['ttl-ms'], 'ttl-ms') } : {}),
          ...(ifVersion !== undefined ? { ifVersion } : {}),
          ...(opts['if-absent'] ? { ifAbsent: true } : {}),
          ...(opts['if-exists'] ? { ifExists: true } : {}),
          ...(ack !== undefined ? { ack } : {}),
          ...(w !== undefined ? { w } : {}),
          ...(opts.context !== undefined ? { context: opts.context } : {}),
          ...(opts.sloppy ? { sloppy: true } : {}),
        })
        if (opts.json) await out(result)
        else if (result.context !== undefined)
          await write(io.stdout, `OK wrote ${key} ${leaderlessWrite(result)}\n`)
        else await write(io.stdout, `OK wrote ${key} version ${result.version}\n`)
        return 0
      }
      case 'del':
      case 'delete': {
        const key = needKey()
        const ifVersion = parseVersion(opts['if-version'])
        if (queued) {
          const ticket = await client.deleteQueued(key, {
            ...(ifVersion !== undefined ? { ifVersion } : {}),
            ...(opts['if-exists'] ? { ifExists: true } : {}),
          })
          await printQueued(ticket, key)
          return 0
        }
        const w = parseQuorum(opts.w, 'w')
        const result = await client.delete(key, {
          ...(ifVersion !== undefined ? { ifVersion } : {}),
          ...(opts['if-exists'] ? { ifExists: true } : {}),
          ...(ack !== undefined ? { ack } : {}),
          ...(w !== undefined ? { w } : {}),
          ...(opts.context !== undefined ? { context: opts.context } : {}),
        })
        if (opts.json) await out(result)
        else if (result.context !== undefined)
          await write(io.stdout, `OK deleted ${key} ${leaderlessWrite(result)}\n`)
        else await write(io.stdout, `OK deleted ${key} at lsn ${result.lsn}\n`)
        return 0
      }
      case 'ticket': {
        const id = args[0]
        if (id === undefined)
          throw new UsageError('ticket needs a ticket id (as kv put --ack queued printed it)')
        const timeoutMs = opts['timeout-ms'] === undefined ? 30_000 : Number(opts['timeout-ms'])
        if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 0)
          throw new UsageError(
            `--timeout-ms must be a whole number of milliseconds, got ${opts['timeout-ms']}`,
          )
        let ticket
        try {
          ticket = opts.wait ? await client.waitTicket(id, { timeoutMs }) : await client.ticket(id)
        } catch (err) {
          if (!(err instanceof TicketWaitTimeoutError)) throw err
          await write(io.stderr, `kv: ${err.message}\n`)
          return 1
        }
        if (opts.json) await out(ticket)
        else if (ticket.status === 'applied')
          await write(io.stdout, `applied ${id} at lsn ${ticket.lsn} (session ${ticket.session})\n`)
        else if (ticket.status === 'failed')
          await write(io.stdout, `failed ${id}: ${ticket.error?.code}: ${ticket.error?.message}\n`)
        else
          await write(
            io.stdout,
            `pending ${id} (accepted at ${new Date(ticket.acceptedAtMs).toISOString()})\n`,
          )
        // A failed write exits as the write itself would have (4: condition failed).
        if (ticket.status === 'failed')
          return ticket.error?.code === 'KV_ERR_PRECONDITION_FAILED'
            ? 4
            : ticket.error?.code === 'KV_ERR_KEY_NOT_FOUND'
              ? 3
              : 1
        return 0
      }
      case 'ls':
      case 'list': {
        const limit = opts.limit === undefined ? undefined : Number(opts.limit)
        if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 1)) {
          throw new UsageError(`--limit must be a positive whole number, got ${opts.limit}`)
        }
        const options = {
          ...(args[0] !== undefined ? { prefix: args[0] } : {}),
          ...(opts.start !== undefined ? { start: opts.start } : {}),
          ...(limit !== undefined ? { limit } : {}),
          ...consistencyOpt(),
        }
        if (opts.all) {
          for await (const item of client.listAll(options)) {
            await write(io.stdout, opts.json ? `${JSON.stringify(item)}\n` : `${item.key}\n`)
          }
        } else {
          const page = await client.list(options)
          if (opts.json) await out(page)
          else {
            for (const item of page.items) await write(io.stdout, `${item.key}\n`)
            if (page.nextCursor !== null) {
              await write(
                io.stderr,
                `(more keys: use --all, or --start after ${page.items.at(-1)?.key ?? ''})\n`,
              )
            }
          }
        }
        return 0
      }
      case 'watch': {
        const whole = (name: string, text: string | undefined, min: number) => {
          if (text === undefined) return undefined
          const n = Number(text)
          if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(n) || n < min)
            throw new UsageError(`--${name} must be a whole number of ${min} or more, got ${text}`)
          return n
        }
        const { runWatch } = await import('./watch-command.js')
        return await runWatch(client, args[0] ?? '', io.stdout, {
          fromLsn: whole('from-lsn', opts['from-lsn'], 0),
          count: whole('count', opts.count, 1),
          values: opts['no-values'] !== true,
          progress: opts.progress === true,
          json: opts.json === true,
        })
      }
      case 'batch': {
        const file = args[0]
        if (file === undefined) throw new UsageError('batch needs a FILE (or - for standard input)')
        const text = file === '-' ? await readStream(io.stdin) : await readFile(file)
        let body: { ops?: BatchOp[] }
        try {
          body = JSON.parse(text.toString('utf8')) as { ops?: BatchOp[] }
        } catch (err) {
          throw new UsageError(`${file} is not valid JSON: ${(err as Error).message}`)
        }
        if (!Array.isArray(body.ops)) throw new UsageError(`${file} must hold {"ops": [...]}`)
        await out(await client.batch(body.ops))
        return 0
      }
      case 'import': {
        const file = args[0]
        if (file === undefined) throw new UsageError('import needs a FILE')
        const format = opts.format ?? (file.toLowerCase().endsWith('.csv') ? 'csv' : 'ndjson')
        if (format !== 'csv' && format !== 'ndjson')
          throw new UsageError('--format must be ndjson or csv')
        const number = (text: string | undefined, name: string, fallback: number) => {
          if (text === undefined) return fallback
          if (!/^[1-9][0-9]*$/.test(text))
            throw new UsageError(`--${name} must be a positive whole number`)
          return Number(text)
        }
        try {
          const summary = await runImport(client, {
            file,
            format,
            chunk: number(opts.chunk, 'chunk', 500),
            concurrency: number(opts.concurrency, 'concurrency', 4),
            maxLagMs: number(opts['max-lag-ms'], 'max-lag-ms', 1000),
            ack: queued ? throwUsage('import takes --ack async, quorum or all, not queued') : ack,
            progress: io.stderr,
          })
          if (opts.json) await out(summary)
          return 0
        } catch (err) {
          if (err instanceof ImportError) {
            await write(io.stderr, `\nkv: ${file}: ${err.message}\n`)
            return 1
          }
          throw err
        }
      }
      case 'cluster': {
        if ((await client.mode()) === 'leaderless') {
          if (opts.json) await out(await client.leaderlessCluster())
          else await write(io.stdout, leaderlessTable(await client.leaderlessViews()))
          return 0
        }
        const view = await client.cluster()
        if (opts.json) {
          await out(view)
          return 0
        }
        await write(
          io.stdout,
          `cluster ${view.clusterId} (${view.mode}), epoch ${view.epoch}, commit LSN ${view.commitLsn}${view.configLsn !== undefined ? `, configuration at LSN ${view.configLsn}` : ''}${view.membershipChangeInProgress ? ' (a membership change is in progress)' : ''}\n`,
        )
        for (const m of view.members) {
          // A learner follows the log but votes in nothing (kv member promote makes it a voter).
          const role = m.voter === false ? 'learner' : m.role
          await write(
            io.stdout,
            `  ${m.id.padEnd(8)} ${role.padEnd(9)} ${m.clientUrl.padEnd(26)} epoch ${String(m.epoch ?? '?').padStart(3)}  acked ${String(m.ackedLsn).padStart(10)}  applied ${String(m.appliedLsn ?? '?').padStart(10)}  lag ${m.lagEntries} entries, ${m.lagMs} ms${m.archivedLsn !== undefined ? `  archive at ${m.archivedLsn} (${m.archiveLagEntries ?? 0} behind)` : ''}${m.connected ? '' : '  (not connected)'}\n`,
          )
        }
        // In a region: the lag to and from the other regions (kv regions says more).
        await write(io.stdout, clusterRegionLines(view))
        return 0
      }
      case 'transfer': {
        const to = args[0]
        const result = await client.transferLeadership(to)
        if (opts.json) await out(result)
        else
          await write(
            io.stdout,
            `${result.leaderId} leads epoch ${result.epoch} (was ${result.from}) at ${result.leaderUrl ?? '?'}\n`,
          )
        return 0
      }
      case 'rollbacks': {
        const records = []
        let after = 0
        for (;;) {
          const page = await client.rollbacks({ after, limit: 1000 })
          records.push(...page.rollbacks)
          if (page.next === null) break
          after = page.next
        }
        await out({ count: records.length, rollbacks: records })
        return 0
      }
      case 'status':
        await out(await client.status())
        return 0
      case 'digest':
        await out(await client.digest())
        return 0
      case 'member':
        return await runMember(client, args, opts, io)
      case 'regions':
      case 'conflicts':
        return await runRegionsCommand(command, client, args, opts, io)
      case 'shard':
      case 'shards':
        return await runShard(client, args, opts, io)
      case 'lease':
        return await runLease(client, args, opts, io)
      case 'lock':
        return await runLock(client, args, opts, io, argv.includes('--'))
      case 'backup': {
        if (args[0] !== 'create' || args.length > 1)
          throw new UsageError('backup takes create (online) or verify DIR (offline)')
        return await backupCreate(client, opts, io)
      }
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)}`)
    }
  } catch (err) {
    if (err instanceof UsageError) {
      await write(io.stderr, `kv: ${err.message}\n\n${usage}`)
      return 2
    }
    if (err instanceof MemberUsageError) {
      await write(io.stderr, `kv: ${err.message}\n\n${memberUsage}`)
      return 2
    }
    if (err instanceof ShardUsageError) {
      await write(io.stderr, `kv: ${err.message}\n\n${shardUsage}`)
      return 2
    }
    if (err instanceof LeaseUsageError) {
      await write(io.stderr, `kv: ${err.message}\n\n${leaseUsage}`)
      return 2
    }
    if (err instanceof RegionsUsageError) {
      await write(io.stderr, `kv: ${err.message}\n\n${regionsUsage}`)
      return 2
    }
    if (err instanceof KvError) {
      const details = Object.entries(err.details)
        .filter(([name]) => name !== 'url')
        .map(([name, value]) => `${name}=${String(value)}`)
        .join(' ')
      await write(io.stderr, `kv: ${err.code}: ${err.message}${details ? ` (${details})` : ''}\n`)
      if (err.code === 'KV_ERR_KEY_NOT_FOUND') return 3
      if (err.code === 'KV_ERR_PRECONDITION_FAILED') return 4
      return 1
    }
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      await write(io.stderr, `kv: ${(err as Error).message}\n`)
      return 1
    }
    throw err
  } finally {
    await client.close()
  }
}
