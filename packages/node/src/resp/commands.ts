/**
 * The commands of the RESP front (see docs/resp.md for the table of what is supported and
 * why the rest is not). Each returns a reply, or a promise of one; a thrown KvError becomes a
 * RESP error: `-READONLY ...` for KV_ERR_NOT_LEADER (Redis's own text, which clients act on),
 * `-NOAUTH`/`-WRONGPASS`/`-NOPERM` for auth, and `-<code> <message>` for every other code.
 */
import { createHmac, randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { FastifyReply } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import { keyToBytes } from '@kvstore/protocol'
import { mayList, mayRead, mayWrite, type Permissions } from '@kvstore/core'
import type { StoredRecord } from '@kvstore/protocol'
import type { WriteOp, WriteRequest, WriteResult } from '@kvstore/storage'
import type { AppContext } from '../http/context.js'
import { sequenceWrite } from '../http/replication.js'
import { verifyPassword } from '../security/passwords.js'
import { checkLeasesSupported, parseTtlMs, withLeaseExtras } from '../leases/write.js'
import { array, bulk, error, int, map, nil, ok, simple, type Reply } from './codec.js'

/** What one connection carries between commands. */
export interface RespSession {
  id: number
  proto: 2 | 3
  /** The authenticated user; null: nobody (fine while auth is off). */
  user: string | null
  name: string | null
  /** This connection's last write, for WAIT. */
  lastWrite: { lsn: number; epoch: number } | null
  /** SCAN cursors handed out on this connection: number -> the last key of the page. */
  cursors: Map<number, { after: Buffer; prefix: string }>
  nextCursor: number
  remote: string
  /**
   * Settles once this connection's latest write is done (null: none in flight). A read, SCAN
   * or WAIT waits for it, so a pipeline's GET sees the SET before it, as on Redis; writes keep
   * their order without it (the sequencer takes them in the order they are called).
   */
  pendingWrite: Promise<void> | null
  /**
   * Settles once the latest read that waits for a write is done (null: none). A write waits
   * for it before it is sequenced, so a read never sees a write that came after it.
   */
  pendingRead: Promise<void> | null
}

/** Commands that must see this connection's earlier writes. */
const afterWrites = new Set(['get', 'exists', 'mget', 'scan', 'wait'])

/** SCAN cursors one connection keeps (the oldest goes first). */
export const scanCursorsPerConnectionMax = 64
/** SCAN's page size when COUNT is not given (Redis's default). */
const scanCountDefault = 10
/** How often WAIT looks at the followers' acknowledged LSNs. */
const waitPollMs = 5
/** Passed AUTH checks remembered, so a pool's many connections hash the password once. */
export const respVerifiedLoginsMax = 1024
/** The Redis version the front answers as (INFO, HELLO): the command set it follows. */
export const redisCompatVersion = '7.2.0'

/** A hash that never matches, checked when the user is unknown, so timing tells nothing. */
const decoyHash = `scrypt$15$8$1$${Buffer.alloc(16).toString('base64url')}$${Buffer.alloc(32).toString('base64url')}`

/** Commands a connection may send before it authenticates. */
const beforeAuth = new Set(['auth', 'hello', 'ping', 'quit'])

/** A reply object for `withLeaseExtras`, which sets a header on HTTP replies only. */
const noHeaders = {
  header() {
    return this
  },
} as unknown as FastifyReply

interface CommandInfo {
  arity: number
  flags: string[]
  firstKey: number
  lastKey: number
  step: number
}

const commandTable: Record<string, CommandInfo> = {
  ping: { arity: -1, flags: ['fast'], firstKey: 0, lastKey: 0, step: 0 },
  echo: { arity: 2, flags: ['fast'], firstKey: 0, lastKey: 0, step: 0 },
  quit: { arity: -1, flags: ['fast'], firstKey: 0, lastKey: 0, step: 0 },
  hello: { arity: -1, flags: ['fast', 'no-auth'], firstKey: 0, lastKey: 0, step: 0 },
  auth: { arity: -2, flags: ['fast', 'no-auth'], firstKey: 0, lastKey: 0, step: 0 },
  select: { arity: 2, flags: ['fast'], firstKey: 0, lastKey: 0, step: 0 },
  client: { arity: -2, flags: [], firstKey: 0, lastKey: 0, step: 0 },
  command: { arity: -1, flags: [], firstKey: 0, lastKey: 0, step: 0 },
  config: { arity: -2, flags: [], firstKey: 0, lastKey: 0, step: 0 },
  info: { arity: -1, flags: [], firstKey: 0, lastKey: 0, step: 0 },
  role: { arity: 1, flags: ['fast'], firstKey: 0, lastKey: 0, step: 0 },
  sentinel: { arity: -2, flags: [], firstKey: 0, lastKey: 0, step: 0 },
  readonly: { arity: 1, flags: ['fast'], firstKey: 0, lastKey: 0, step: 0 },
  readwrite: { arity: 1, flags: ['fast'], firstKey: 0, lastKey: 0, step: 0 },
  get: { arity: 2, flags: ['readonly', 'fast'], firstKey: 1, lastKey: 1, step: 1 },
  set: { arity: -3, flags: ['write'], firstKey: 1, lastKey: 1, step: 1 },
  del: { arity: -2, flags: ['write'], firstKey: 1, lastKey: -1, step: 1 },
  unlink: { arity: -2, flags: ['write'], firstKey: 1, lastKey: -1, step: 1 },
  exists: { arity: -2, flags: ['readonly', 'fast'], firstKey: 1, lastKey: -1, step: 1 },
  mget: { arity: -2, flags: ['readonly', 'fast'], firstKey: 1, lastKey: -1, step: 1 },
  mset: { arity: -3, flags: ['write'], firstKey: 1, lastKey: -1, step: 2 },
  incr: { arity: 2, flags: ['write', 'fast'], firstKey: 1, lastKey: 1, step: 1 },
  decr: { arity: 2, flags: ['write', 'fast'], firstKey: 1, lastKey: 1, step: 1 },
  incrby: { arity: 3, flags: ['write', 'fast'], firstKey: 1, lastKey: 1, step: 1 },
  decrby: { arity: 3, flags: ['write', 'fast'], firstKey: 1, lastKey: 1, step: 1 },
  scan: { arity: -2, flags: ['readonly'], firstKey: 0, lastKey: 0, step: 0 },
  wait: { arity: 3, flags: [], firstKey: 0, lastKey: 0, step: 0 },
}

function wrongArgs(name: string): KvError {
  return new KvError(
    'KV_ERR_INVALID_ARGUMENT',
    `ERR wrong number of arguments for '${name}' command`,
    { redis: true },
  )
}

function syntax(message = 'ERR syntax error'): KvError {
  return new KvError('KV_ERR_INVALID_ARGUMENT', message, { redis: true })
}

function notInteger(): KvError {
  return new KvError('KV_ERR_INVALID_ARGUMENT', 'ERR value is not an integer or out of range', {
    redis: true,
  })
}

/** An integer argument as Redis parses one. */
function integerArg(arg: Buffer | undefined): number {
  const text = arg?.toString('latin1') ?? ''
  if (!/^-?[0-9]{1,16}$/.test(text)) throw notInteger()
  const value = Number(text)
  if (!Number.isSafeInteger(value)) throw notInteger()
  return value
}

/** A Redis glob as a RegExp (*, ?, [...], \x); the literal prefix before the first glob sign. */
function globOf(pattern: string): { prefix: string; regex: RegExp | null } {
  const first = pattern.search(/[*?[\\]/)
  const prefix = first < 0 ? pattern : pattern.slice(0, first)
  if (first < 0) return { prefix, regex: new RegExp(`^${escapeRegex(pattern)}$`, 's') }
  if (pattern.slice(first) === '*') return { prefix, regex: null }
  let source = ''
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string
    if (c === '*') source += '.*'
    else if (c === '?') source += '.'
    else if (c === '\\' && i + 1 < pattern.length) source += escapeRegex(pattern[++i] as string)
    else if (c === '[') {
      const close = pattern.indexOf(']', i + 1)
      if (close < 0) source += '\\['
      else {
        let body = pattern.slice(i + 1, close)
        if (body.startsWith('^')) body = `^${body.slice(1).replace(/[\\\]]/g, '\\$&')}`
        else body = body.replace(/[\\\]]/g, '\\$&')
        source += `[${body}]`
        i = close
      }
    } else source += escapeRegex(c)
  }
  return { prefix, regex: new RegExp(`^${source}$`, 's') }
}

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

export class RespCommands {
  /** The port the front listens on (set once it listens); members share its offset. */
  selfPort = 0
  /** Digests of AUTH checks that passed (see authenticate), oldest first. */
  private readonly verified = new Set<string>()
  private readonly authCacheKey = randomBytes(32)

  constructor(
    private readonly ctx: AppContext,
    private readonly log: Logger,
  ) {}

  /** A thrown error as a RESP error reply. */
  errorReply(err: unknown): Reply {
    if (err instanceof KvError) {
      if (err.details.redis === true) return error(err.message)
      switch (err.code) {
        case 'KV_ERR_NOT_LEADER':
          return error(
            `READONLY You can't write against a read only replica. (KV_ERR_NOT_LEADER ${this.leaderHint()})`,
          )
        case 'KV_ERR_UNAUTHENTICATED':
          return error(`NOAUTH Authentication required. (${err.message})`)
        case 'KV_ERR_PERMISSION_DENIED':
          return error(`NOPERM ${err.message}`)
        default:
          return error(`${err.code} ${err.message}`)
      }
    }
    this.log.error({ err }, 'RESP command failed')
    return error('KV_ERR_INTERNAL an unexpected failure inside the node; its log has the details')
  }

  /** Where the leader's RESP front is, as `leader <id> at <host>:<port>`, or `no leader known`. */
  private leaderHint(): string {
    const leader = this.leaderAddress()
    return leader === null
      ? 'no leader known'
      : `leader ${leader.id} at ${leader.host}:${leader.port}`
  }

  /** This node's client port, to find every member's RESP port by the same offset. */
  private clientPortOf(url: string): number {
    return Number(new URL(url).port)
  }

  /**
   * The leader's RESP address: its client URL's host, and its client port plus the offset
   * between this node's RESP and client ports (every member uses the same offset; kv-cluster
   * gives client port + 300). Standalone: this node.
   */
  leaderAddress(): { id: string; host: string; port: number } | null {
    const replicator = this.ctx.replicator
    if (replicator === null)
      return { id: this.ctx.config.nodeId, host: this.hostOf(null), port: this.selfPort }
    const leader = replicator.leaderMember
    if (leader === undefined) return null
    return { id: leader.id, ...this.respAddressOf(leader.clientUrl) }
  }

  private respAddressOf(clientUrl: string): { host: string; port: number } {
    const replicator = this.ctx.replicator
    const ownClient =
      replicator === null
        ? this.ctx.config.port
        : this.clientPortOf(replicator.cluster.self.clientUrl)
    const offset = this.selfPort - ownClient
    const url = new URL(clientUrl)
    return { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port) + offset }
  }

  private hostOf(clientUrl: string | null): string {
    if (clientUrl !== null) return new URL(clientUrl).hostname
    const host = this.ctx.config.host
    return host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host
  }

  private get isMaster(): boolean {
    return this.ctx.replicator === null || this.ctx.replicator.isLeader
  }

  /** Runs one command. `quit` closes the connection once earlier replies are out. */
  run(session: RespSession, args: Buffer[], quit: () => void): Reply | Promise<Reply> {
    const name = (args[0] as Buffer).toString('latin1').toLowerCase()
    const authOn = this.ctx.security.auth.enabled
    if (authOn && session.user === null && !beforeAuth.has(name))
      return error('NOAUTH Authentication required.')
    const info = commandTable[name]
    if (info === undefined) {
      const shown = (args[0] as Buffer).toString('utf8').slice(0, 128)
      const rest = args
        .slice(1, 4)
        .map((a) => `'${a.toString('utf8').slice(0, 64)}'`)
        .join(' ')
      return error(`ERR unknown command '${shown}', with args beginning with: ${rest}`)
    }
    if (info.arity > 0 ? args.length !== info.arity : args.length < -info.arity)
      throw wrongArgs(name)
    const pending = session.pendingWrite
    if (pending !== null && afterWrites.has(name)) {
      const reply = pending.then(() => this.dispatch(session, name, args, quit))
      const settled = reply.then(
        () => {},
        () => {},
      )
      session.pendingRead = settled
      void settled.then(() => {
        if (session.pendingRead === settled) session.pendingRead = null
      })
      return reply
    }
    return this.dispatch(session, name, args, quit)
  }

  private dispatch(
    session: RespSession,
    name: string,
    args: Buffer[],
    quit: () => void,
  ): Reply | Promise<Reply> {
    switch (name) {
      case 'ping':
        if (args.length > 2) throw wrongArgs(name)
        return args.length === 2 ? bulk(args[1] as Buffer) : simple('PONG')
      case 'echo':
        return bulk(args[1] as Buffer)
      case 'quit':
        quit()
        return ok
      case 'hello':
        return this.hello(session, args)
      case 'auth':
        return this.auth(session, args)
      case 'select':
        return integerArg(args[1]) === 0 ? ok : error('ERR DB index is out of range')
      case 'readonly':
      case 'readwrite':
        return ok
      case 'client':
        return this.client(session, args)
      case 'command':
        return this.command(args)
      case 'config':
        return this.configCommand(args)
      case 'info':
        return this.info(args)
      case 'role':
        return this.role()
      case 'sentinel':
        return this.sentinel(args)
      case 'get':
        return this.get(session, args[1] as Buffer)
      case 'exists':
        return this.exists(session, args.slice(1))
      case 'mget':
        return this.mget(session, args.slice(1))
      case 'set':
        return this.set(session, args)
      case 'del':
      case 'unlink':
        return this.del(session, args.slice(1))
      case 'mset':
        return this.mset(session, args.slice(1))
      case 'incr':
        return this.incrBy(session, args[1] as Buffer, 1)
      case 'decr':
        return this.incrBy(session, args[1] as Buffer, -1)
      case 'incrby':
        return this.incrBy(session, args[1] as Buffer, integerArg(args[2]))
      case 'decrby':
        return this.incrBy(session, args[1] as Buffer, -integerArg(args[2]))
      case 'scan':
        return this.scan(session, args)
      case 'wait':
        return this.wait(session, args)
    }
    throw new KvError('KV_ERR_INTERNAL', `command ${name} has no handler`)
  }

  // ------------------------------------------------------------------ connection

  private async authenticate(session: RespSession, user: string, password: string): Promise<void> {
    const { auth, hashLimiter, audit } = this.ctx.security
    if (!auth.enabled) {
      // Auth is off: every connection may do everything, as on the HTTP API; nothing to check.
      session.user = user
      return
    }
    const record = auth.user(user)
    // A client that opens many connections (redis-benchmark -c 50, a pool) sends the same AUTH
    // on each: a check that passed is remembered (a keyed digest of user, password and the
    // stored hash, so a new password misses), so only the first pays for the hash.
    const digest = createHmac('sha256', this.authCacheKey)
      .update(`${user}\u0000${password}\u0000${record?.passwordHash ?? ''}`)
      .digest('base64')
    const remembered = record !== null && record.passwordHash !== '' && this.verified.has(digest)
    const okPassword =
      remembered || (await verifyPassword(password, record?.passwordHash || decoyHash, hashLimiter))
    if (okPassword && !remembered && record !== null) {
      if (this.verified.size >= respVerifiedLoginsMax) {
        const oldest = this.verified.values().next().value
        if (oldest !== undefined) this.verified.delete(oldest)
      }
      this.verified.add(digest)
    }
    const entry = {
      user,
      via: 'password' as const,
      remote: session.remote,
      method: 'AUTH',
      url: 'resp',
    }
    if (!okPassword || record === null || record.passwordHash === '') {
      this.ctx.metrics.logins.inc({ method: 'password', result: 'failed' })
      audit.record({ ...entry, status: 401, code: 'KV_ERR_UNAUTHENTICATED' }, 'RESP login failed')
      throw new KvError(
        'KV_ERR_UNAUTHENTICATED',
        'WRONGPASS invalid username-password pair or user is disabled.',
        { redis: true },
      )
    }
    this.ctx.metrics.logins.inc({ method: 'password', result: 'ok' })
    audit.record({ ...entry, status: 200 }, 'RESP login')
    session.user = record.name
  }

  /** AUTH password (the user named `default`, as Redis) or AUTH user password. */
  private async auth(session: RespSession, args: Buffer[]): Promise<Reply> {
    if (args.length > 3) throw syntax()
    const user = args.length === 3 ? (args[1] as Buffer).toString('utf8') : 'default'
    const password = (args[args.length - 1] as Buffer).toString('utf8')
    await this.authenticate(session, user, password)
    return ok
  }

  private async hello(session: RespSession, args: Buffer[]): Promise<Reply> {
    let proto = session.proto
    let i = 1
    if (args.length > 1) {
      const version = (args[1] as Buffer).toString('latin1')
      if (version !== '2' && version !== '3') return error('NOPROTO unsupported protocol version')
      proto = version === '3' ? 3 : 2
      i = 2
    }
    let name: string | null = null
    while (i < args.length) {
      const option = (args[i] as Buffer).toString('latin1').toLowerCase()
      if (option === 'auth' && i + 2 < args.length) {
        await this.authenticate(
          session,
          (args[i + 1] as Buffer).toString('utf8'),
          (args[i + 2] as Buffer).toString('utf8'),
        )
        i += 3
      } else if (option === 'setname' && i + 1 < args.length) {
        name = (args[i + 1] as Buffer).toString('utf8')
        i += 2
      } else {
        throw syntax(`ERR Syntax error in HELLO option '${option}'`)
      }
    }
    if (this.ctx.security.auth.enabled && session.user === null)
      return error(
        'NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time',
      )
    session.proto = proto
    if (name !== null) session.name = name
    return map([
      [bulk('server'), bulk('redis')],
      [bulk('version'), bulk(redisCompatVersion)],
      [bulk('proto'), int(proto)],
      [bulk('id'), int(session.id)],
      [bulk('mode'), bulk('standalone')],
      [bulk('role'), bulk(this.isMaster ? 'master' : 'replica')],
      [bulk('modules'), array([])],
    ])
  }

  private client(session: RespSession, args: Buffer[]): Reply {
    const sub = (args[1] as Buffer).toString('latin1').toLowerCase()
    switch (sub) {
      case 'setname': {
        if (args.length !== 3) throw wrongArgs('client|setname')
        const name = (args[2] as Buffer).toString('utf8')
        if (/[\s]/.test(name) || name.length > 256)
          return error('ERR Client names cannot contain spaces, newlines or special characters.')
        session.name = name === '' ? null : name
        return ok
      }
      case 'getname':
        return bulk(session.name)
      case 'id':
        return int(session.id)
      case 'setinfo':
        return ok
      case 'info':
        return bulk(
          `id=${session.id} addr=${session.remote} name=${session.name ?? ''} user=${session.user ?? 'default'} resp=${session.proto}\n`,
        )
      default:
        return error(
          `ERR unknown subcommand '${sub.slice(0, 64)}'. Try CLIENT SETNAME, GETNAME, ID, SETINFO or INFO.`,
        )
    }
  }

  private commandInfo(name: string): Reply {
    const info = commandTable[name] as CommandInfo
    return array([
      bulk(name),
      int(info.arity),
      array(info.flags.map((f) => simple(f))),
      int(info.firstKey),
      int(info.lastKey),
      int(info.step),
    ])
  }

  private command(args: Buffer[]): Reply {
    if (args.length === 1) return array(Object.keys(commandTable).map((n) => this.commandInfo(n)))
    const sub = (args[1] as Buffer).toString('latin1').toLowerCase()
    switch (sub) {
      case 'count':
        return int(Object.keys(commandTable).length)
      case 'docs':
        return map([])
      case 'info':
        return array(
          args.slice(2).map((a) => {
            const n = a.toString('latin1').toLowerCase()
            return commandTable[n] === undefined ? nil : this.commandInfo(n)
          }),
        )
      case 'list':
        return array(Object.keys(commandTable).map((n) => bulk(n)))
      default:
        return error(
          `ERR unknown subcommand '${sub.slice(0, 64)}'. Try COMMAND COUNT, DOCS, INFO or LIST.`,
        )
    }
  }

  /** CONFIG GET answers the two settings redis-benchmark reads; nothing can be set. */
  private configCommand(args: Buffer[]): Reply {
    const sub = (args[1] as Buffer).toString('latin1').toLowerCase()
    if (sub !== 'get')
      return error(
        'ERR CONFIG SET and other subcommands are not supported; configure the node with kv-node options',
      )
    const known: Record<string, string> = {
      // No RDB snapshots; every write goes to the log (fsync per --fsync) as AOF would.
      save: '',
      appendonly: this.ctx.config.fsync ? 'yes' : 'no',
    }
    const pairs: [Reply, Reply][] = []
    for (const a of args.slice(2)) {
      const key = a.toString('latin1').toLowerCase()
      if (known[key] !== undefined) pairs.push([bulk(key), bulk(known[key])])
    }
    return map(pairs)
  }

  // ------------------------------------------------------------------ replication view

  private replicationLines(): string[] {
    const { replicator, store } = this.ctx
    const lines = ['# Replication']
    if (replicator === null) {
      lines.push('role:master', 'connected_slaves:0', `master_repl_offset:${store.appliedLsn}`)
      return lines
    }
    const lag = replicator.lag()
    if (replicator.isLeader) {
      const followers = replicator.cluster.members.filter(
        (m) => m.id !== replicator.cluster.self.id,
      )
      const connected = followers.filter((m) => replicator.progressOf(m.id).connected)
      lines.push('role:master', `connected_slaves:${connected.length}`)
      followers.forEach((m, i) => {
        const p = replicator.progressOf(m.id)
        const address = this.respAddressOf(m.clientUrl)
        lines.push(
          `slave${i}:ip=${address.host},port=${address.port},state=${p.connected ? 'online' : 'disconnected'},offset=${p.matchLsn},lag=${Math.floor((p.lastContactMs ?? 0) / 1000)},kv_id=${m.id}`,
        )
      })
    } else {
      const leader = this.leaderAddress()
      lines.push(
        'role:slave',
        `master_host:${leader?.host ?? ''}`,
        `master_port:${leader?.port ?? 0}`,
        `master_link_status:${leader === null ? 'down' : 'up'}`,
        `slave_repl_offset:${store.appliedLsn}`,
        'slave_read_only:1',
      )
    }
    lines.push(
      `master_repl_offset:${replicator.isLeader ? replicator.lastLsn : store.appliedLsn}`,
      `kv_role:${replicator.role}`,
      `kv_epoch:${replicator.epoch}`,
      `kv_leader_id:${replicator.leaderMember?.id ?? ''}`,
      `kv_commit_lsn:${replicator.knownCommitLsn}`,
      `kv_applied_lsn:${store.appliedLsn}`,
      `kv_lag_entries:${lag.entries}`,
      `kv_lag_ms:${lag.ms}`,
    )
    return lines
  }

  private info(args: Buffer[]): Reply {
    const sections = new Set(args.slice(1).map((a) => a.toString('latin1').toLowerCase()))
    const all =
      sections.size === 0 ||
      sections.has('all') ||
      sections.has('everything') ||
      sections.has('default')
    const lines: string[] = []
    if (all || sections.has('server'))
      lines.push(
        '# Server',
        `redis_version:${redisCompatVersion}`,
        `kvstore_version:${this.ctx.version}`,
        `kv_node_id:${this.ctx.config.nodeId}`,
        `kv_mode:${this.ctx.config.mode}`,
        `tcp_port:${this.selfPort}`,
        `uptime_in_seconds:${Math.floor((Date.now() - this.ctx.startedAtMs) / 1000)}`,
        '',
      )
    if (all || sections.has('persistence')) lines.push('# Persistence', 'loading:0', '')
    if (all || sections.has('replication')) lines.push(...this.replicationLines(), '')
    return bulk(lines.join('\r\n'))
  }

  private role(): Reply {
    const { replicator, store } = this.ctx
    if (replicator === null || replicator.isLeader) {
      const followers =
        replicator === null
          ? []
          : replicator.cluster.members.filter((m) => m.id !== replicator.cluster.self.id)
      return array([
        bulk('master'),
        int(replicator === null ? store.appliedLsn : replicator.lastLsn),
        array(
          followers.map((m) => {
            const address = this.respAddressOf(m.clientUrl)
            return array([
              bulk(address.host),
              bulk(String(address.port)),
              bulk(String(replicator?.progressOf(m.id).matchLsn ?? 0)),
            ])
          }),
        ),
      ])
    }
    const leader = this.leaderAddress()
    return array([
      bulk('slave'),
      bulk(leader?.host ?? ''),
      int(leader?.port ?? 0),
      bulk(leader === null ? 'connect' : 'connected'),
      int(store.appliedLsn),
    ])
  }

  /**
   * What Redis Sentinel answers, for clients in Sentinel mode (ioredis `sentinels: [...]`):
   * every member is a sentinel of the one master (the leader), whatever the master name.
   */
  private sentinel(args: Buffer[]): Reply {
    const sub = (args[1] as Buffer).toString('latin1').toLowerCase()
    switch (sub) {
      case 'get-master-addr-by-name': {
        if (args.length !== 3) throw wrongArgs('sentinel|get-master-addr-by-name')
        const leader = this.leaderAddress()
        return leader === null ? array(null) : array([bulk(leader.host), bulk(String(leader.port))])
      }
      case 'sentinels': {
        const replicator = this.ctx.replicator
        if (replicator === null) return array([])
        return array(
          replicator.cluster.members
            .filter((m) => m.id !== replicator.cluster.self.id)
            .map((m) => {
              const address = this.respAddressOf(m.clientUrl)
              return array([
                bulk('name'),
                bulk(m.id),
                bulk('ip'),
                bulk(address.host),
                bulk('port'),
                bulk(String(address.port)),
                bulk('flags'),
                bulk('sentinel'),
              ])
            }),
        )
      }
      default:
        return error(
          `ERR unknown subcommand '${sub.slice(0, 64)}'. This node answers SENTINEL GET-MASTER-ADDR-BY-NAME and SENTINELS only.`,
        )
    }
  }

  // ------------------------------------------------------------------ keys

  private permissions(session: RespSession): Permissions | null {
    const { auth } = this.ctx.security
    if (!auth.enabled) return null
    const permissions = session.user === null ? null : auth.permissions(session.user)
    if (permissions === null)
      throw new KvError('KV_ERR_UNAUTHENTICATED', `user ${session.user ?? ''} no longer exists`)
    return permissions
  }

  private keyOf(arg: Buffer): { key: Buffer; text: string } {
    const text = arg.toString('utf8')
    if (!Buffer.from(text, 'utf8').equals(arg))
      throw new KvError('KV_ERR_INVALID_KEY', 'the key is not valid UTF-8; keys are UTF-8 text')
    return { key: keyToBytes(text, this.ctx.config.keyBytesMax), text }
  }

  private readKeys(session: RespSession, args: Buffer[]): Buffer[] {
    const permissions = this.permissions(session)
    return args.map((arg) => {
      const { key, text } = this.keyOf(arg)
      if (permissions !== null && !mayRead(permissions, text))
        throw new KvError(
          'KV_ERR_PERMISSION_DENIED',
          `${session.user} may not read ${JSON.stringify(text)}`,
        )
      return key
    })
  }

  private writeKeys(session: RespSession, args: Buffer[]): Buffer[] {
    const permissions = this.permissions(session)
    return args.map((arg) => {
      const { key, text } = this.keyOf(arg)
      if (permissions !== null && !mayWrite(permissions, text))
        throw new KvError(
          'KV_ERR_PERMISSION_DENIED',
          `${session.user} may not write ${JSON.stringify(text)}`,
        )
      return key
    })
  }

  private valueOf(arg: Buffer): Buffer {
    const max = this.ctx.config.valueBytesMax
    if (arg.length > max)
      throw new KvError(
        'KV_ERR_VALUE_TOO_LARGE',
        `the value is ${arg.length} bytes; the limit is ${max}`,
      )
    return arg
  }

  private checkKeyCount(count: number): void {
    if (count > this.ctx.config.batchOpsMax)
      throw new KvError(
        'KV_ERR_BATCH_TOO_LARGE',
        `the command names ${count} keys; the limit is ${this.ctx.config.batchOpsMax} (batchOpsMax)`,
      )
  }

  /** A record as this node has it (a default read, as GET /v1/kv without a session). */
  private read(key: Buffer): StoredRecord | null | Promise<StoredRecord | null> {
    const cached = this.ctx.store.getCached(key)
    if (cached !== undefined) return cached
    return this.ctx.store.get(key)
  }

  private static live(record: StoredRecord | null): StoredRecord | null {
    return record === null || record.tombstone ? null : record
  }

  private get(session: RespSession, arg: Buffer): Reply | Promise<Reply> {
    const [key] = this.readKeys(session, [arg]) as [Buffer]
    const record = this.read(key)
    if (record instanceof Promise)
      return record.then((r) => bulk(RespCommands.live(r)?.value ?? null))
    return bulk(RespCommands.live(record)?.value ?? null)
  }

  private async exists(session: RespSession, args: Buffer[]): Promise<Reply> {
    this.checkKeyCount(args.length)
    const keys = this.readKeys(session, args)
    const records = await Promise.all(keys.map((k) => Promise.resolve(this.read(k))))
    return int(records.filter((r) => RespCommands.live(r) !== null).length)
  }

  private async mget(session: RespSession, args: Buffer[]): Promise<Reply> {
    this.checkKeyCount(args.length)
    const keys = this.readKeys(session, args)
    const records = await Promise.all(keys.map((k) => Promise.resolve(this.read(k))))
    return array(records.map((r) => bulk(RespCommands.live(r)?.value ?? null)))
  }

  private async write(session: RespSession, write: WriteRequest): Promise<WriteResult> {
    const read = session.pendingRead
    const running =
      read === null
        ? sequenceWrite(this.ctx, write, this.ctx.config.defaultAck)
        : read.then(() => sequenceWrite(this.ctx, write, this.ctx.config.defaultAck))
    const settled = running.then(
      () => {},
      () => {},
    )
    session.pendingWrite = settled
    void settled.then(() => {
      if (session.pendingWrite === settled) session.pendingWrite = null
    })
    const result = await running
    session.lastWrite = { lsn: result.lsn, epoch: result.epoch }
    return result
  }

  /** SET key value [NX | XX] [EX seconds | PX milliseconds] */
  private async set(session: RespSession, args: Buffer[]): Promise<Reply> {
    const [key] = this.writeKeys(session, [args[1] as Buffer]) as [Buffer]
    const value = this.valueOf(args[2] as Buffer)
    let condition: 'nx' | 'xx' | null = null
    let ttlMs: number | null = null
    for (let i = 3; i < args.length; i++) {
      const option = (args[i] as Buffer).toString('latin1').toLowerCase()
      if (option === 'nx' || option === 'xx') {
        if (condition !== null) throw syntax()
        condition = option
      } else if ((option === 'ex' || option === 'px') && i + 1 < args.length) {
        if (ttlMs !== null) throw syntax()
        const amount = integerArg(args[++i])
        if (amount <= 0) return error("ERR invalid expire time in 'set' command")
        ttlMs = parseTtlMs(option === 'ex' ? amount * 1000 : amount)
      } else {
        throw syntax(
          option === 'get' || option === 'keepttl' || option === 'exat' || option === 'pxat'
            ? `ERR SET ${option.toUpperCase()} is not supported by this store (docs/resp.md)`
            : 'ERR syntax error',
        )
      }
    }
    const op: WriteOp = {
      type: 'put',
      key,
      value,
      ...(condition === 'nx' ? { ifAbsent: true } : condition === 'xx' ? { ifExists: true } : {}),
    }
    const plain: WriteRequest = { kind: 'put', ops: [op] }
    let leased: ReturnType<typeof withLeaseExtras> | null = null
    if (ttlMs !== null) {
      checkLeasesSupported(this.ctx, false)
      leased = withLeaseExtras(this.ctx, noHeaders, { ttlMs }, plain)
    }
    try {
      await this.write(session, leased?.write ?? plain)
    } catch (err) {
      if (condition !== null && err instanceof KvError && err.code === 'KV_ERR_PRECONDITION_FAILED')
        return nil
      throw err
    } finally {
      leased?.settled()
    }
    return ok
  }

  /** DEL key...: one entry deleting every key; the count of those that existed when it was sequenced. */
  private async del(session: RespSession, args: Buffer[]): Promise<Reply> {
    this.checkKeyCount(args.length)
    const keys = this.writeKeys(session, args)
    let existed = 0
    await this.write(session, {
      kind: 'batch',
      ops: keys.map((key) => ({ type: 'delete', key })),
      compute: (view) => {
        existed = 0
        const seen = new Set<string>()
        for (const key of keys) {
          const hex = key.toString('hex')
          if (seen.has(hex)) continue
          seen.add(hex)
          if (RespCommands.live(view.read(key)) !== null) existed++
        }
        return keys.map((key) => ({ type: 'delete', key }))
      },
    })
    return int(existed)
  }

  /** MSET k v [k v ...]: one batch, applied whole or not at all. */
  private async mset(session: RespSession, args: Buffer[]): Promise<Reply> {
    if (args.length % 2 !== 0) throw wrongArgs('mset')
    this.checkKeyCount(args.length / 2)
    const keys = this.writeKeys(
      session,
      args.filter((_a, i) => i % 2 === 0),
    )
    const ops: WriteOp[] = keys.map((key, i) => ({
      type: 'put',
      key,
      value: this.valueOf(args[2 * i + 1] as Buffer),
    }))
    await this.write(session, { kind: 'batch', ops })
    return ok
  }

  /**
   * INCRBY: read, add and write in the leader's sequencer step (`compute`), so no other write
   * to the key can come between the read and the write: the compare-and-set holds by
   * construction and never has to retry.
   */
  private async incrBy(session: RespSession, arg: Buffer, delta: number): Promise<Reply> {
    const [key] = this.writeKeys(session, [arg]) as [Buffer]
    let next = 0
    await this.write(session, {
      kind: 'batch',
      ops: [{ type: 'put', key, value: Buffer.alloc(0) }],
      compute: (view) => {
        const record = RespCommands.live(view.read(key))
        let current = 0
        if (record !== null) {
          const text = record.value.toString('latin1')
          if (!/^-?[0-9]{1,16}$/.test(text) || !Number.isSafeInteger(Number(text)))
            throw notInteger()
          current = Number(text)
        }
        next = current + delta
        if (!Number.isSafeInteger(next))
          throw new KvError(
            'KV_ERR_INVALID_ARGUMENT',
            'ERR increment or decrement would overflow',
            {
              redis: true,
            },
          )
        return [{ type: 'put', key, value: Buffer.from(String(next), 'latin1') }]
      },
    })
    return int(next)
  }

  /**
   * SCAN cursor [MATCH pattern] [COUNT n]: keys in order, from the listing of the pattern's
   * literal prefix (a list needs read on that whole prefix). Cursors are numbers, as redis-cli
   * parses them, kept per connection (scanCursorsPerConnectionMax); 0 starts and ends.
   */
  private async scan(session: RespSession, args: Buffer[]): Promise<Reply> {
    const cursorText = (args[1] as Buffer).toString('latin1')
    if (!/^[0-9]{1,16}$/.test(cursorText)) return error('ERR invalid cursor')
    const cursor = Number(cursorText)
    let pattern = '*'
    let count = scanCountDefault
    for (let i = 2; i < args.length; i++) {
      const option = (args[i] as Buffer).toString('latin1').toLowerCase()
      if (option === 'match' && i + 1 < args.length)
        pattern = (args[++i] as Buffer).toString('utf8')
      else if (option === 'count' && i + 1 < args.length) {
        count = integerArg(args[++i])
        if (count < 1) throw syntax()
      } else if (option === 'type' && i + 1 < args.length) {
        const type = (args[++i] as Buffer).toString('latin1').toLowerCase()
        if (type !== 'string') return array([bulk('0'), array([])])
      } else throw syntax()
    }
    const { prefix, regex } = globOf(pattern)
    const permissions = this.permissions(session)
    if (permissions !== null && !mayList(permissions, prefix))
      throw new KvError(
        'KV_ERR_PERMISSION_DENIED',
        `${session.user} may not list ${prefix === '' ? 'every key' : `prefix ${JSON.stringify(prefix)}`}: SCAN needs read on the whole literal prefix of MATCH`,
      )
    let after: Buffer | undefined
    if (cursor !== 0) {
      const saved = session.cursors.get(cursor)
      if (saved === undefined || saved.prefix !== prefix)
        return error(
          'ERR invalid cursor (cursors belong to the connection and pattern that got them)',
        )
      session.cursors.delete(cursor)
      after = saved.after
    }
    const limit = Math.min(count, this.ctx.config.listLimitMax)
    const page = await this.ctx.store.list({
      ...(prefix !== '' ? { prefix: keyToBytes(prefix, this.ctx.config.keyBytesMax) } : {}),
      ...(after !== undefined ? { after } : {}),
      limit,
      bytesMax: this.ctx.config.listBytesMax,
    })
    const keys = page.items
      .map((item) => (item.key as Buffer).toString('utf8'))
      .filter((k) => regex === null || regex.test(k))
    const last = page.items[page.items.length - 1]?.key as Buffer | undefined
    let next = 0
    if (page.more && last !== undefined) {
      next = session.nextCursor++
      if (session.cursors.size >= scanCursorsPerConnectionMax) {
        const oldest = session.cursors.keys().next().value
        if (oldest !== undefined) session.cursors.delete(oldest)
      }
      session.cursors.set(next, { after: Buffer.from(last), prefix })
    }
    return array([bulk(String(next)), array(keys.map((k) => bulk(k)))])
  }

  /**
   * WAIT numreplicas timeout: waits until `numreplicas` followers acknowledged this connection's
   * last write (their stored LSN), or `timeout` ms (0: up to ackTimeoutMs); answers how many did.
   */
  private async wait(session: RespSession, args: Buffer[]): Promise<Reply> {
    const wanted = integerArg(args[1])
    const timeout = integerArg(args[2])
    if (wanted < 0 || timeout < 0) return error('ERR timeout is negative')
    const replicator = this.ctx.replicator
    if (replicator === null) return int(0)
    if (!replicator.isLeader) return error('ERR WAIT cannot be used with replica instances.')
    const followers = replicator.cluster.members.filter((m) => m.id !== replicator.cluster.self.id)
    const target = session.lastWrite?.lsn ?? 0
    const acknowledged = () =>
      followers.filter((m) => replicator.progressOf(m.id).matchLsn >= target).length
    const waitMs =
      timeout === 0 ? this.ctx.config.ackTimeoutMs : Math.min(timeout, this.ctx.config.ackTimeoutMs)
    const deadline = performance.now() + waitMs
    let count = acknowledged()
    while (count < wanted && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, waitPollMs))
      count = acknowledged()
    }
    return int(count)
  }
}
