/**
 * The RESP front (`--resp-port`): the Redis protocol, RESP2 and RESP3 (HELLO 3), so redis-cli,
 * redis-benchmark and Redis client libraries (ioredis) work against a node.
 *
 * - Secure like the client port: TLS with the node's certificate when the node has one (a
 *   client certificate the cluster's CA signed that names a user logs in as that user), and,
 *   with auth on, nothing but AUTH, HELLO, PING and QUIT before a user is known (-NOAUTH).
 * - Commands run on the node's own paths: writes through `sequenceWrite` (the HTTP API's:
 *   leader check, the sequencer, the default ack), reads from the store as a default HTTP read,
 *   permissions per key as the HTTP API checks them, EX/PX through the lessor.
 * - A follower refuses a write with Redis's own `-READONLY` error, naming the leader's RESP
 *   address, and answers ROLE, INFO replication and SENTINEL get-master-addr-by-name, so a
 *   Redis client's own failover handling finds the leader (docs/resp.md).
 * - Per connection: pipelined commands run at once, and replies go out in order. At most
 *   `respPendingRepliesMax` are in flight (then reading pauses), at most `respOutputBytesMax`
 *   of replies wait for the client (then the connection is closed), and each command is held
 *   to `respCommandBytesMax` and `respArgsMax`. At most `respPendingBytesMax` of commands are
 *   in flight (then reading pauses too), and while an AUTH runs, at most `respCommandBytesMax`
 *   waits unparsed. At most `respConnectionsMax` connections; with auth on, one that has not
 *   authenticated after `respAuthTimeoutMs` is closed.
 */
import net from 'node:net'
import tls from 'node:tls'
import type { Logger } from 'pino'
import { certificateIdentity } from '@kvstore/protocol/identity'
import type { AppContext } from '../http/context.js'
import { encode, error, RespParser, RespProtocolError, type Reply } from './codec.js'
import { RespCommands, type RespSession } from './commands.js'
import { RespStats } from './stats.js'

export { RespStats }

export interface RespServerHandle {
  readonly port: number
  close(): Promise<void>
}

/** Why the RESP front cannot run on this node, or null. */
export function respUnsupported(ctx: AppContext): string | null {
  if (ctx.leaderless !== null) return 'leaderless mode'
  if (ctx.shards !== null) return 'shard mode (--shard-map)'
  if (ctx.regions !== null) return 'region mode (--region)'
  return null
}

export async function startRespServer(
  ctx: AppContext,
  logger: Logger,
  stats: RespStats = new RespStats(),
): Promise<RespServerHandle | null> {
  const { config } = ctx
  if (config.respPort < 0) return null
  const why = respUnsupported(ctx)
  if (why !== null)
    throw new Error(
      `--resp-port is not supported in ${why}; it serves single-leader and standalone`,
    )
  const log = logger.child({ component: 'resp' })
  const commands = new RespCommands(ctx, log)
  const sockets = new Set<net.Socket>()
  let nextId = 1

  const serve = (socket: net.Socket, secure: boolean): void => {
    if (sockets.size >= config.respConnectionsMax) {
      stats.closed.connections++
      socket.end(
        `-KV_ERR_RESP_CONNECTIONS_TOO_MANY this node holds ${config.respConnectionsMax} RESP connections (respConnectionsMax); connect to another member or retry\r\n`,
      )
      socket.destroySoon()
      return
    }
    sockets.add(socket)
    stats.connections++
    socket.setNoDelay(true)
    socket.on('close', () => {
      if (sockets.delete(socket)) stats.connections--
    })
    socket.on('error', () => socket.destroy())
    let certUser: string | null = null
    if (secure) {
      const tlsSocket = socket as tls.TLSSocket
      if (tlsSocket.authorized) {
        const name = certificateIdentity(
          tlsSocket.getPeerCertificate()?.subjectaltname,
          ctx.security.clusterId,
          'user',
        )
        if (name !== null && ctx.security.auth.user(name) !== null) certUser = name
      }
    }
    const session: RespSession = {
      id: nextId++,
      proto: 2,
      user: certUser,
      name: null,
      lastWrite: null,
      cursors: new Map(),
      nextCursor: 1,
      remote: socket.remoteAddress ?? '',
      pendingWrite: null,
      pendingRead: null,
    }
    if (ctx.security.auth.enabled && certUser === null) {
      const timer = setTimeout(() => {
        if (session.user !== null || socket.destroyed) return
        stats.closed.authTimeout++
        socket.end(
          `-NOAUTH Authentication required within ${config.respAuthTimeoutMs} ms of connecting (respAuthTimeoutMs).\r\n`,
        )
        socket.destroySoon()
      }, config.respAuthTimeoutMs)
      timer.unref()
      socket.once('close', () => clearTimeout(timer))
    }
    new RespConnection(socket, commands, ctx, session, stats).start()
  }

  const tlsSource = ctx.tls
  let server: net.Server
  if (tlsSource !== null) {
    const secureServer = tls.createServer({
      ...tlsSource.contextOptions(),
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: config.tlsHandshakeTimeoutMs,
    })
    tlsSource.onReload(() => secureServer.setSecureContext(tlsSource.contextOptions()))
    secureServer.on('tlsClientError', (_err, socket) => socket.destroy())
    secureServer.on('secureConnection', (socket) => serve(socket, true))
    server = secureServer
  } else {
    server = net.createServer((socket) => serve(socket, false))
  }
  server.maxConnections = config.respConnectionsMax + 64 // the cap above answers with an error
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host: config.host, port: config.respPort }, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : config.respPort
  commands.selfPort = port
  log.info({ port, tls: tlsSource !== null }, 'RESP front listening')
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const socket of sockets) socket.destroy()
      }),
  }
}

/** One client connection: parses commands, runs them, answers in order. */
class RespConnection {
  private readonly parser: RespParser
  /** Replies in command order; null while the command runs. */
  private readonly slots: (Reply | null)[] = []
  private paused = false
  private closing = false

  constructor(
    private readonly socket: net.Socket,
    private readonly commands: RespCommands,
    private readonly ctx: AppContext,
    private readonly session: RespSession,
    private readonly stats: RespStats,
  ) {
    this.parser = new RespParser({
      commandBytesMax: ctx.config.respCommandBytesMax,
      argsMax: ctx.config.respArgsMax,
    })
  }

  start(): void {
    this.socket.on('data', (chunk: Buffer) => {
      this.parser.feed(chunk)
      this.pump()
      // While an AUTH or HELLO runs nothing is parsed: hold what waits to one command's worth.
      if (this.parser.bufferedBytes > this.ctx.config.respCommandBytesMax) this.pause()
    })
    this.socket.on('drain', () => this.resumeIfRoom())
  }

  /** Runs the commands parsed so far, while fewer than respPendingRepliesMax are in flight. */
  private pump(): void {
    while (!this.closing && !this.barrier) {
      if (this.full()) {
        this.pause()
        return
      }
      let args: Buffer[] | null
      try {
        args = this.parser.next()
      } catch (err) {
        if (!(err instanceof RespProtocolError)) throw err
        this.stats.closed.protocol++
        this.slots.push(error(`KV_ERR_RESP_PROTOCOL Protocol error: ${err.message}`))
        this.closing = true
        this.flush()
        return
      }
      if (args === null) return
      if (args.length === 0) continue
      const absolute = this.flushed + this.slots.length
      this.slots.push(null)
      let bytes = 0
      for (const arg of args) bytes += arg.length
      this.pendingBytes += bytes
      this.bytesOf.set(absolute, bytes)
      // AUTH and HELLO change who the connection is: the commands after them wait for them.
      const name = (args[0] as Buffer).toString('latin1').toLowerCase()
      if (name === 'auth' || name === 'hello') this.barrier = true
      this.run(args, absolute)
    }
  }

  /** Replies flushed so far: a command's slot is `absolute - flushed`. */
  private flushed = 0
  /** Bytes of the arguments of the commands in flight, and each one's, by absolute index. */
  private pendingBytes = 0
  private readonly bytesOf = new Map<number, number>()

  /** True when no more commands may start: too many, or too many bytes, in flight. */
  private full(): boolean {
    return (
      this.slots.length >= this.ctx.config.respPendingRepliesMax ||
      this.pendingBytes >= this.ctx.config.respPendingBytesMax
    )
  }

  private run(args: Buffer[], absolute: number): void {
    let result: Reply | Promise<Reply>
    try {
      result = this.commands.run(this.session, args, () => this.quit())
    } catch (err) {
      result = this.commands.errorReply(err)
    }
    if (result instanceof Promise) {
      result.then(
        (reply) => this.settle(absolute, reply),
        (err: unknown) => this.settle(absolute, this.commands.errorReply(err)),
      )
    } else {
      this.settle(absolute, result)
    }
  }

  private settle(absolute: number, reply: Reply): void {
    const index = absolute - this.flushed
    if (index < 0 || index >= this.slots.length) return
    this.pendingBytes -= this.bytesOf.get(absolute) ?? 0
    this.bytesOf.delete(absolute)
    this.stats.commands++
    if (reply.t === 'error') this.stats.errors++
    this.slots[index] = reply
    this.flush()
    if (this.barrier && this.slots.every((slot) => slot !== null)) {
      this.barrier = false
      this.pump()
    }
  }

  /** True while an AUTH or HELLO runs: nothing after it starts until it is done. */
  private barrier = false

  private quitRequested = false

  private quit(): void {
    this.quitRequested = true
  }

  /** Writes every finished reply at the front, in order. */
  private flush(): void {
    let count = 0
    const out: Buffer[] = []
    while (count < this.slots.length && this.slots[count] !== null) {
      encode(this.slots[count] as Reply, this.session.proto, out)
      count++
    }
    if (count === 0) return
    this.slots.splice(0, count)
    this.flushed += count
    if (this.socket.destroyed) return
    if (out.length === 1) this.socket.write(out[0] as Buffer)
    else this.socket.write(Buffer.concat(out))
    if ((this.closing || this.quitRequested) && this.slots.length === 0) {
      this.socket.end()
      return
    }
    if (this.socket.writableLength > this.ctx.config.respOutputBytesMax) {
      this.closing = true
      this.stats.closed.output++
      this.socket.end(
        `-KV_ERR_RESP_OUTPUT_TOO_LARGE replies waiting for this client passed ${this.ctx.config.respOutputBytesMax} bytes (respOutputBytesMax); read the replies of a pipeline as you send it\r\n`,
      )
      this.socket.destroySoon()
      return
    }
    this.resumeIfRoom()
  }

  private pause(): void {
    if (this.paused) return
    this.paused = true
    this.socket.pause()
  }

  private resumeIfRoom(): void {
    if (this.closing) return
    if (this.full()) return
    if (this.socket.writableNeedDrain) {
      this.pause()
      return
    }
    if (this.paused) {
      this.paused = false
      this.socket.resume()
    }
    if (this.parser.bufferedBytes > 0) this.pump()
  }
}
