/**
 * Peer transport: long-lived HTTP/2 (h2c) streams between nodes, carrying length-delimited
 * protobuf frames.
 *
 * Every node keeps one outbound stream to every other member (POST /peer/v1/stream on the
 * peer's port), reconnecting with backoff whenever it breaks, and accepts theirs: any member
 * may need to reach any other (votes, appends, acknowledgements). A frame goes out on the
 * outbound stream, or on the peer's inbound one while the outbound is down. A peer counts as
 * connected while either stream is up. Both sides open with a Hello naming the cluster and the
 * intended receiver; a mismatch is refused. Every frame is validated when decoded; a bad one
 * closes the stream.
 */
import http2, {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type ServerHttp2Stream,
} from 'node:http2'
import { connect, type Socket } from 'node:net'
import type { Logger } from 'pino'
import {
  DecodeError,
  FrameDecoder,
  encodeFrame,
  type Frame,
  type FrameBody,
} from '@kvstore/protocol'
import { invariant } from '@kvstore/core'
import type { MemberConfig } from '../config.js'
import { listenPeerServer, sessionPeer, type PeerSecurity, type PeerServer } from './peer-server.js'
import { peerConnectOptions } from './peer-client.js'

export interface TransportHandlers {
  /** A frame from `peer` (after its Hello). */
  onFrame(peer: string, frame: Frame): void
  /** A first stream with `peer` is up. */
  onConnected(peer: string): void
  /** The last stream with `peer` is gone. */
  onDisconnected(peer: string): void
  /** `peer` refused this node's stream, with a refusal code (KV_ERR_NOT_A_MEMBER: removed). */
  onRefusedBy?(peer: string, code: string): void
}

export interface TransportOptions {
  self: MemberConfig
  /** A member of the configuration in effect, by id (it changes as members come and go). */
  memberOf: (id: string) => MemberConfig | undefined
  clusterId: string
  /** Address the peer server binds to. */
  host: string
  frameBytesMax: number
  /** Bytes buffered on one stream beyond which heartbeats are skipped (the peer is not reading). */
  streamBufferBytesMax: number
  epoch: () => number
  logger: Logger
  handlers: TransportHandlers
  /** Mutual TLS and the identity checks (or the unsafe plaintext switch). */
  security: PeerSecurity
}

type PeerStream = ClientHttp2Stream | ServerHttp2Stream

const backoffMinMs = 100
const backoffMaxMs = 2000

export class PeerTransport {
  private readonly options: TransportOptions
  private readonly log: Logger
  private server: PeerServer | null = null
  private readonly outbound = new Map<string, ClientHttp2Stream>()
  private readonly inbound = new Map<string, ServerHttp2Stream>()
  private readonly sessions = new Map<string, ClientHttp2Session>()
  private readonly wanted = new Set<string>()
  private readonly backoff = new Map<string, number>()
  private readonly timers = new Map<string, NodeJS.Timeout>()
  private readonly inboundSessions = new Set<http2.ServerHttp2Session>()
  private closed = false
  /** Bytes written per peer, for metrics. */
  readonly bytesSent = new Map<string, number>()

  constructor(options: TransportOptions) {
    this.options = options
    this.log = options.logger
  }

  /** Starts the peer server on the port of this node's peer URL. */
  async listen(): Promise<void> {
    this.server = await listenPeerServer({
      peerUrl: this.options.self.peerUrl,
      host: this.options.host,
      streamsMax: 64,
      sessions: this.inboundSessions,
      security: this.options.security,
      onStream: (stream, headers, certPeer) => this.acceptStream(stream, headers, certPeer),
    })
  }

  /** Keeps an outbound stream to `peer` open (reconnecting) until `disconnect`. */
  connect(peer: string): void {
    if (this.wanted.has(peer)) return
    this.wanted.add(peer)
    this.open(peer)
  }

  /** Stops keeping a stream to `peer`. */
  disconnect(peer: string): void {
    this.wanted.delete(peer)
    clearTimeout(this.timers.get(peer))
    this.timers.delete(peer)
    this.drop(peer, 'disconnect')
  }

  /**
   * `peer` was removed from the cluster: no stream to it any more, and its connections to this
   * node are closed too (new ones are refused at the handshake; an HTTP/2 session opened
   * before the removal would otherwise still carry new streams).
   */
  forget(peer: string): void {
    this.disconnect(peer)
    const outbound = this.sessions.get(peer)
    this.sessions.delete(peer)
    outbound?.destroy()
    for (const session of this.inboundSessions) {
      if (sessionPeer(session) === peer) session.destroy()
    }
  }

  /**
   * Writes a frame to `peer` on whichever stream is up. Returns false (and drops the frame)
   * when there is none, or when it is a heartbeat and the peer has stopped reading.
   */
  send(peer: string, frame: Frame): boolean {
    const stream = this.streamTo(peer)
    if (stream === undefined) return false
    if (
      (frame.body.kind === 'heartbeat' || frame.body.kind === 'heartbeatAck') &&
      stream.writableLength > this.options.streamBufferBytesMax
    ) {
      return false
    }
    const bytes = encodeFrame(frame)
    stream.write(bytes)
    this.bytesSent.set(peer, (this.bytesSent.get(peer) ?? 0) + bytes.length)
    return true
  }

  /** The stream frames to `peer` go on: the outbound one, else the peer's inbound one. */
  private streamTo(peer: string): PeerStream | undefined {
    for (const stream of [this.outbound.get(peer), this.inbound.get(peer)]) {
      if (stream !== undefined && !stream.destroyed && stream.writable) return stream
    }
    return undefined
  }

  /** Resolves once the stream to `peer` can take more (or is gone). */
  drained(peer: string): Promise<void> {
    const stream = this.streamTo(peer)
    if (!stream || !stream.writableNeedDrain) return Promise.resolve()
    return new Promise((resolve) => {
      const done = () => {
        stream.removeListener('drain', done)
        stream.removeListener('close', done)
        resolve()
      }
      stream.once('drain', done)
      stream.once('close', done)
    })
  }

  /** Pauses or resumes reading frames from `peer` (backpressure while installing a snapshot). */
  setReading(peer: string, reading: boolean): void {
    for (const stream of [this.outbound.get(peer), this.inbound.get(peer)]) {
      if (stream === undefined) continue
      if (reading) stream.resume()
      else stream.pause()
    }
  }

  isConnected(peer: string): boolean {
    return this.streamTo(peer) !== undefined
  }

  /** Closes the streams with one peer (a bad frame or a broken snapshot); both sides reconnect. */
  reset(peer: string, reason: string): void {
    this.drop(peer, reason)
  }

  async close(): Promise<void> {
    this.closed = true
    for (const timer of this.timers.values()) clearTimeout(timer)
    for (const peer of new Set([...this.outbound.keys(), ...this.inbound.keys()]))
      this.drop(peer, 'closing')
    for (const session of this.sessions.values()) session.destroy()
    for (const session of this.inboundSessions) session.destroy()
    await this.server?.close()
  }

  // ------------------------------------------------------------------ outbound

  private member(peer: string): MemberConfig | undefined {
    return this.options.memberOf(peer)
  }

  private open(peer: string): void {
    if (this.closed || !this.wanted.has(peer)) return
    const member = this.member(peer)
    // Streams are opened only to members (start connects to each, and so does every change of
    // the configuration that adds one); one removed since is no longer wanted.
    invariant(member !== undefined, () => `a stream to ${peer}, which is not a member`)
    let session = this.sessions.get(peer)
    if (!session || session.destroyed || session.closed) {
      const target = new URL(member.peerUrl)
      const security = this.options.security
      session =
        security.tls === null
          ? http2.connect(member.peerUrl, {
              createConnection: () =>
                connect({ host: target.hostname, port: Number(target.port), noDelay: true }),
            })
          : http2.connect(member.peerUrl, peerConnectOptions(security, peer))
      // Frames are small and latency-bound: never let Nagle hold one back for an ACK.
      session.on('connect', (_s: ClientHttp2Session, socket: Socket) => socket.setNoDelay(true))
      const current = session
      this.sessions.set(peer, current)
      current.on('error', (err) => this.log.debug({ peer, err: err.message }, 'peer session error'))
      current.on('close', () => {
        if (this.sessions.get(peer) === current) this.sessions.delete(peer)
      })
    }
    let stream: ClientHttp2Stream
    try {
      stream = session.request({
        ':method': 'POST',
        ':path': '/peer/v1/stream',
        'content-type': 'application/x-kv-frames',
      })
    } catch (err) {
      this.log.debug({ peer, err: (err as Error).message }, 'cannot open peer stream')
      this.retryLater(peer)
      return
    }
    stream.write(this.hello(peer))
    const decoder = new FrameDecoder(this.options.frameBytesMax)
    let accepted = false
    stream.on('response', (headers) => {
      if (headers[':status'] === 200) {
        accepted = true
        const wasConnected = this.isConnected(peer)
        this.outbound.set(peer, stream)
        this.backoff.delete(peer)
        this.log.info({ peer }, 'peer stream open')
        if (!wasConnected) this.options.handlers.onConnected(peer)
      }
    })
    stream.on('data', (chunk: Buffer) => {
      let frames: Frame[]
      try {
        frames = decoder.push(chunk)
      } catch (err) {
        this.log.warn(
          { peer, err: (err as Error).message },
          'bad frame from peer; closing the stream',
        )
        stream.destroy()
        return
      }
      for (const frame of frames) {
        if (frame.body.kind === 'refusal') {
          this.log.warn(
            { peer, code: frame.body.code, reason: frame.body.message },
            'peer refused the stream',
          )
          this.options.handlers.onRefusedBy?.(peer, frame.body.code)
          continue
        }
        if (frame.body.kind === 'hello') continue
        if (frame.from !== peer) {
          this.senderMismatch(peer, frame.from)
          stream.destroy()
          return
        }
        if (accepted) this.options.handlers.onFrame(peer, frame)
      }
    })
    const onGone = () => {
      if (this.outbound.get(peer) === stream) {
        this.outbound.delete(peer)
        if (!this.isConnected(peer)) this.options.handlers.onDisconnected(peer)
      }
      this.retryLater(peer)
    }
    stream.on('close', onGone)
    stream.on('error', () => {})
  }

  private retryLater(peer: string): void {
    if (this.closed || !this.wanted.has(peer) || this.timers.has(peer)) return
    const previous = this.backoff.get(peer) ?? backoffMinMs / 2
    const delay = Math.min(backoffMaxMs, previous * 2)
    this.backoff.set(peer, delay)
    const jittered = delay / 2 + Math.random() * (delay / 2)
    const timer = setTimeout(() => {
      this.timers.delete(peer)
      this.open(peer)
    }, jittered)
    timer.unref()
    this.timers.set(peer, timer)
  }

  private hello(peer: string): Buffer {
    return encodeFrame({
      from: this.options.self.id,
      epoch: this.options.epoch(),
      body: {
        kind: 'hello',
        clusterId: this.options.clusterId,
        to: peer,
        leader: '',
      },
    })
  }

  // ------------------------------------------------------------------ inbound

  private acceptStream(
    stream: ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    certPeer: string | null,
  ): void {
    stream.on('error', () => {})
    if (headers[':method'] !== 'POST' || headers[':path'] !== '/peer/v1/stream') {
      stream.respond({ ':status': 404 })
      stream.end()
      return
    }
    const decoder = new FrameDecoder(this.options.frameBytesMax)
    let peer: string | null = null
    let refused = false
    const refuse = (code: string, message: string) => {
      refused = true
      const security = this.options.security
      if (code === 'KV_ERR_BAD_FRAME')
        security.onRefused('bad_frame', { peer: peer ?? certPeer, reason: message })
      if (code === 'KV_ERR_NOT_A_MEMBER') {
        const who = certPeer ?? ''
        security.onRefused(security.roster.isRemoved(who) ? 'removed_member' : 'not_a_member', {
          peer: certPeer,
          reason: message,
        })
      }
      this.log.warn({ peer, code, reason: message }, 'refusing a peer stream')
      if (!stream.headersSent)
        stream.respond({
          ':status':
            code === 'KV_ERR_BAD_FRAME' ? 400 : code === 'KV_ERR_PEER_IDENTITY' ? 403 : 409,
        })
      stream.end(this.refusal(code, message))
    }
    stream.on('data', (chunk: Buffer) => {
      if (refused) return
      let frames: Frame[]
      try {
        frames = decoder.push(chunk)
      } catch (err) {
        refuse('KV_ERR_BAD_FRAME', err instanceof DecodeError ? err.message : 'malformed frame')
        return
      }
      for (const frame of frames) {
        if (peer === null) {
          const problem = this.checkHello(frame, certPeer)
          if (problem !== null) {
            refuse(problem.code, problem.message)
            return
          }
          peer = frame.from
          const wasConnected = this.isConnected(peer)
          const previous = this.inbound.get(peer)
          this.inbound.set(peer, stream)
          if (previous) previous.destroy()
          stream.respond({ ':status': 200, 'content-type': 'application/x-kv-frames' })
          stream.write(this.hello(peer))
          if (!wasConnected) this.options.handlers.onConnected(peer)
          continue
        }
        if (frame.from !== peer) {
          // The connection was authenticated as `peer`; a frame naming anyone else is forged.
          this.senderMismatch(peer, frame.from)
          refuse('KV_ERR_PEER_IDENTITY', `this stream belongs to ${peer}, not ${frame.from}`)
          return
        }
        this.options.handlers.onFrame(peer, frame)
      }
    })
    stream.on('close', () => {
      if (peer !== null && this.inbound.get(peer) === stream) {
        this.inbound.delete(peer)
        if (!this.isConnected(peer)) this.options.handlers.onDisconnected(peer)
      }
    })
  }

  private senderMismatch(peer: string, claimed: string): void {
    this.options.security.onRefused('sender_mismatch', { peer, claimed })
  }

  private checkHello(
    frame: Frame,
    certPeer: string | null,
  ): { code: string; message: string } | null {
    const body: FrameBody = frame.body
    if (body.kind !== 'hello')
      return { code: 'KV_ERR_BAD_FRAME', message: 'the first frame must be a hello' }
    if (certPeer !== null && frame.from !== certPeer) {
      this.senderMismatch(certPeer, frame.from)
      return {
        code: 'KV_ERR_PEER_IDENTITY',
        message: `the certificate names ${certPeer}; the hello claims ${frame.from}`,
      }
    }
    if (body.clusterId !== this.options.clusterId) {
      return {
        code: 'KV_ERR_CLUSTER_MISMATCH',
        message: `this node is in cluster ${this.options.clusterId}, not ${body.clusterId}`,
      }
    }
    if (body.to !== this.options.self.id) {
      return {
        code: 'KV_ERR_CLUSTER_MISMATCH',
        message: `this is node ${this.options.self.id}, not ${body.to}`,
      }
    }
    // A member of the configuration, or one it does not name yet (added while this node was
    // behind); never one it removed (see membership/roster.ts).
    if (!this.options.security.roster.allowed(frame.from)) {
      return {
        code: 'KV_ERR_NOT_A_MEMBER',
        message: `${frame.from} is not a member of this cluster`,
      }
    }
    return null
  }

  private refusal(code: string, message: string): Buffer {
    return encodeFrame({
      from: this.options.self.id,
      epoch: this.options.epoch(),
      body: { kind: 'refusal', code, message },
    })
  }

  private drop(peer: string, reason: string): void {
    const streams = [this.outbound.get(peer), this.inbound.get(peer)]
    this.outbound.delete(peer)
    this.inbound.delete(peer)
    if (streams.every((s) => s === undefined)) return
    this.log.debug({ peer, reason }, 'peer streams closed')
    for (const stream of streams) stream?.destroy()
    this.options.handlers.onDisconnected(peer)
    this.retryLater(peer)
  }
}
