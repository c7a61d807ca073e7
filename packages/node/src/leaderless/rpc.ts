/**
 * Leaderless peer transport: one HTTP/2 (h2c) stream per request. A node POSTs a protobuf
 * PeerRequest to `/peer/v1/ll` on the peer's port and reads a PeerReply. Each peer gets one
 * long-lived client session, reopened on demand after it breaks; requests multiplex on it.
 *
 * Both directions are validated: a request that fails to decode, names another cluster or
 * another receiver is refused with a stable code (KV_ERR_BAD_FRAME, KV_ERR_CLUSTER_MISMATCH),
 * and a reply that fails to decode rejects the call.
 */
import http2, {
  type ClientHttp2Session,
  type Http2Server,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2'
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import {
  DecodeError,
  decodePeerReply,
  decodePeerRequest,
  encodePeerReply,
  encodePeerRequest,
  leaderlessLimits,
  type PeerReply,
  type PeerRequest,
  type PeerRequestBody,
} from '@kvstore/protocol'
import type { MemberConfig } from '../config.js'

export const peerPath = '/peer/v1/ll'

export interface RpcOptions {
  self: MemberConfig
  members: MemberConfig[]
  clusterId: string
  host: string
  logger: Logger
  /** Serves one request from a peer. */
  handle(request: PeerRequest): Promise<PeerReply>
}

/** A call that got no reply: the peer is unreachable, too slow, or broke the stream. */
export class PeerUnreachable extends Error {
  constructor(
    readonly peer: string,
    reason: string,
  ) {
    super(`${peer} did not answer: ${reason}`)
    this.name = 'PeerUnreachable'
  }
}

export class LeaderlessRpc {
  private readonly options: RpcOptions
  private server: Http2Server | null = null
  private readonly sessions = new Map<string, ClientHttp2Session>()
  private readonly inbound = new Set<http2.ServerHttp2Session>()
  private readonly urls: Map<string, string>
  private closed = false
  /** Bytes sent per peer, for metrics. */
  readonly bytesSent = new Map<string, number>()

  constructor(options: RpcOptions) {
    this.options = options
    this.urls = new Map(options.members.map((m) => [m.id, m.peerUrl]))
  }

  async listen(): Promise<void> {
    const server = http2.createServer({ settings: { maxConcurrentStreams: 1000 } })
    server.on('connection', (socket: Socket) => socket.setNoDelay(true))
    server.on('session', (session) => {
      this.inbound.add(session)
      session.on('close', () => this.inbound.delete(session))
      session.on('error', () => {})
    })
    server.on('stream', (stream, headers) => this.accept(stream, headers))
    const port = Number(new URL(this.options.self.peerUrl).port)
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, this.options.host, () => {
        server.removeListener('error', reject)
        resolve()
      })
    })
    this.server = server
  }

  private accept(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on('error', () => {})
    if (headers[':path'] !== peerPath || headers[':method'] !== 'POST') {
      stream.respond({ ':status': 404 })
      stream.end()
      return
    }
    const chunks: Buffer[] = []
    let bytes = 0
    let refused = false
    stream.on('data', (chunk: Buffer) => {
      if (refused) return
      bytes += chunk.length
      if (bytes > leaderlessLimits.messageBytesMax) {
        refused = true
        this.reply(stream, 413, {
          kind: 'refusal',
          code: 'KV_ERR_BAD_FRAME',
          message: `request larger than ${leaderlessLimits.messageBytesMax} bytes`,
        })
        return
      }
      chunks.push(chunk)
    })
    stream.on('end', () => {
      if (refused) return
      let request: PeerRequest
      try {
        request = decodePeerRequest(Buffer.concat(chunks))
      } catch (err) {
        this.options.logger.warn({ err }, 'refused a malformed leaderless request')
        this.reply(stream, 400, {
          kind: 'refusal',
          code: 'KV_ERR_BAD_FRAME',
          message: err instanceof DecodeError ? err.message : 'undecodable request',
        })
        return
      }
      if (request.clusterId !== this.options.clusterId || request.to !== this.options.self.id) {
        this.reply(stream, 409, {
          kind: 'refusal',
          code: 'KV_ERR_CLUSTER_MISMATCH',
          message: `this is ${this.options.self.id} of cluster ${this.options.clusterId}; the request was meant for ${request.to} of ${request.clusterId}`,
        })
        return
      }
      if (!this.urls.has(request.from)) {
        this.reply(stream, 409, {
          kind: 'refusal',
          code: 'KV_ERR_CLUSTER_MISMATCH',
          message: `${request.from} is not a member of this cluster`,
        })
        return
      }
      this.options.handle(request).then(
        (reply) => this.reply(stream, 200, reply),
        (err: unknown) => {
          const code =
            err !== null && typeof err === 'object' && 'code' in err && typeof err.code === 'string'
              ? err.code
              : 'KV_ERR_INTERNAL'
          this.reply(stream, 200, {
            kind: 'refusal',
            code: code.startsWith('KV_ERR_') ? code : 'KV_ERR_INTERNAL',
            message: (err as Error).message ?? String(err),
          })
        },
      )
    })
  }

  private reply(stream: ServerHttp2Stream, status: number, reply: PeerReply): void {
    if (stream.destroyed || stream.closed) return
    try {
      stream.respond({ ':status': status, 'content-type': 'application/x-protobuf' })
      stream.end(encodePeerReply(reply))
    } catch {
      stream.destroy()
    }
  }

  private session(peer: string): ClientHttp2Session {
    const existing = this.sessions.get(peer)
    if (existing && !existing.closed && !existing.destroyed) return existing
    const url = this.urls.get(peer)
    if (url === undefined) throw new PeerUnreachable(peer, 'not a member')
    const session = http2.connect(url)
    session.on('error', () => {})
    session.on('close', () => {
      if (this.sessions.get(peer) === session) this.sessions.delete(peer)
    })
    session.on('goaway', () => session.close())
    session.on('connect', (s: ClientHttp2Session, socket: Socket) => socket.setNoDelay(true))
    session.unref()
    this.sessions.set(peer, session)
    return session
  }

  /** Sends one request to `peer`; rejects with PeerUnreachable when no reply comes in time. */
  call(peer: string, body: PeerRequestBody, timeoutMs: number): Promise<PeerReply> {
    if (this.closed) return Promise.reject(new PeerUnreachable(peer, 'transport closed'))
    const payload = encodePeerRequest({
      clusterId: this.options.clusterId,
      from: this.options.self.id,
      to: peer,
      body,
    })
    return new Promise<PeerReply>((resolve, reject) => {
      let session: ClientHttp2Session
      try {
        session = this.session(peer)
      } catch (err) {
        reject(err)
        return
      }
      let stream: http2.ClientHttp2Stream
      try {
        stream = session.request({
          ':method': 'POST',
          ':path': peerPath,
          'content-type': 'application/x-protobuf',
        })
      } catch (err) {
        // A session that cannot open streams (closing, or out of stream ids): start afresh.
        if (this.sessions.get(peer) === session) this.sessions.delete(peer)
        session.destroy()
        reject(new PeerUnreachable(peer, (err as Error).message))
        return
      }
      let settled = false
      const finish = (err: Error | null, reply?: PeerReply) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (err) {
          stream.close(http2.constants.NGHTTP2_CANCEL)
          reject(err)
        } else resolve(reply as PeerReply)
      }
      const timer = setTimeout(() => {
        finish(new PeerUnreachable(peer, `no reply within ${timeoutMs} ms`))
        // A peer that stopped answering (paused, partitioned) may hold the session forever:
        // start afresh next time.
        if (this.sessions.get(peer) === session) {
          this.sessions.delete(peer)
          session.destroy()
        }
      }, timeoutMs)
      const chunks: Buffer[] = []
      let bytes = 0
      stream.on('data', (chunk: Buffer) => {
        bytes += chunk.length
        if (bytes > leaderlessLimits.messageBytesMax) {
          finish(new PeerUnreachable(peer, 'reply too large'))
          return
        }
        chunks.push(chunk)
      })
      stream.on('end', () => {
        try {
          finish(null, decodePeerReply(Buffer.concat(chunks)))
        } catch (err) {
          finish(new PeerUnreachable(peer, `bad reply: ${(err as Error).message}`))
        }
      })
      stream.on('error', (err) => {
        if (!settled) finish(new PeerUnreachable(peer, err.message))
      })
      stream.on('close', () => {
        if (!settled) finish(new PeerUnreachable(peer, 'stream closed'))
      })
      stream.end(payload)
      this.bytesSent.set(peer, (this.bytesSent.get(peer) ?? 0) + payload.length)
    })
  }

  async close(): Promise<void> {
    this.closed = true
    for (const session of this.sessions.values()) session.destroy()
    this.sessions.clear()
    for (const session of this.inbound) session.destroy()
    const server = this.server
    this.server = null
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}
