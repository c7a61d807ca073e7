/**
 * Leaderless peer transport over HTTP/2 (h2c) on the peer port.
 *
 * Each node keeps one long-lived channel to each peer: a POST to `/peer/v1/ll-stream` whose
 * request body carries request frames and whose response body carries reply frames. A frame is
 * a u32 length, a u32 call id and a protobuf PeerRequest or PeerReply; replies come back in
 * whatever order they finish and are matched by id. A call that gets no reply in time breaks
 * the channel (a paused or cut-off peer may hold it forever): every call waiting on it fails
 * with PeerUnreachable, and the next call opens a new one. `/peer/v1/ll` serves the same
 * requests one per HTTP/2 stream, for tools and tests.
 *
 * Both directions are validated: a request that fails to decode, names another cluster or
 * another receiver is refused with a stable code (KV_ERR_BAD_FRAME, KV_ERR_CLUSTER_MISMATCH);
 * a frame with an impossible length closes the channel; a reply that fails to decode fails
 * its call.
 */
import http2, {
  type ClientHttp2Session,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2'
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import {
  DecodeError,
  decodePeerReplyEnvelope,
  decodePeerRequest,
  encodePeerReply,
  encodePeerRequest,
  leaderlessLimits,
  type PeerReply,
  type PeerRequest,
  type PeerRequestBody,
} from '@kvstore/protocol'
import { peerConnectOptions } from '../cluster/peer-client.js'
import { listenPeerServer, type PeerSecurity, type PeerServer } from '../cluster/peer-server.js'
import type { MemberConfig } from '../config.js'
import {
  callsInFlightMax,
  channelBufferBytesMax,
  oneShotBytesMax,
  oneShotStreamsMax,
  servesBytesMax,
  servesInFlightMax,
} from '../limits.js'

/** One request per HTTP/2 stream (tools, tests). */
export const peerPath = '/peer/v1/ll'
/** A long-lived multiplexed channel: framed requests and replies matched by id. */
export const streamPath = '/peer/v1/ll-stream'

interface PendingCall {
  resolve: (reply: PeerReply) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

interface Channel {
  session: ClientHttp2Session
  stream: http2.ClientHttp2Stream
  /** Request frames of this turn of the event loop, written together. */
  outbox: FrameBatch
  pending: Map<number, PendingCall>
  nextId: number
  broken: boolean
  /** The connection was made: calls written on it may have been delivered. */
  connected: boolean
}

const oneShotUsage = Symbol('kv.oneShotUsage')
interface OneShotUsage {
  [oneShotUsage]?: { streams: number; bytes: number }
}

/** A frame: u32 big-endian length of what follows, u32 call id, then the message. */
function encodeFrame(id: number, message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(8 + message.length)
  out.writeUInt32BE(4 + message.length, 0)
  out.writeUInt32BE(id, 4)
  out.set(message, 8)
  return out
}

/**
 * The frames written to one stream in one turn of the event loop, sent as one write when the
 * turn ends (setImmediate: after every I/O callback of the turn, so the writes a LevelDB batch
 * or a burst of client requests set off travel together). One write is one HTTP/2 DATA frame
 * and, mostly, one socket write, on both ends one read; per frame it cost a stream write each,
 * and as many reads on the other side.
 */
class FrameBatch {
  private frames: Buffer[] = []
  /** Bytes queued and not yet handed to the stream. */
  bytes = 0
  private scheduled = false

  constructor(private readonly stream: http2.Http2Stream) {}

  push(frame: Buffer): void {
    this.frames.push(frame)
    this.bytes += frame.length
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => this.flush())
  }

  private flush(): void {
    this.scheduled = false
    const frames = this.frames
    this.frames = []
    this.bytes = 0
    if (frames.length === 0 || this.stream.destroyed || !this.stream.writable) return
    this.stream.write(frames.length === 1 ? (frames[0] as Buffer) : Buffer.concat(frames))
  }

  /** Drops what is queued (the stream is gone). */
  clear(): void {
    this.frames = []
    this.bytes = 0
  }
}

/** Cuts a byte stream into frames; throws on a length no peer may send. */
class FrameReader {
  /** Bytes received and not yet cut into frames, as the chunks that brought them. */
  private chunks: Buffer[] = []
  private buffered = 0
  /** Length of the frame being collected (its 4-byte prefix included), once known. */
  private needed = 0

  push(chunk: Buffer): { id: number; payload: Buffer }[] {
    this.chunks.push(chunk)
    this.buffered += chunk.length
    const frames: { id: number; payload: Buffer }[] = []
    for (;;) {
      if (this.needed === 0) {
        if (this.buffered < 4) break
        const length = this.peekLength()
        if (length < 4 || length > leaderlessLimits.messageBytesMax + 4) {
          throw new Error(`frame length ${length} is out of bounds`)
        }
        this.needed = 4 + length
      }
      // Join the chunks only once a whole frame is there: a large frame arriving in many
      // chunks is copied once, not once per chunk.
      if (this.buffered < this.needed) break
      const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks)
      frames.push({ id: all.readUInt32BE(4), payload: all.subarray(8, this.needed) })
      const rest = all.subarray(this.needed)
      this.chunks = rest.length > 0 ? [rest] : []
      this.buffered = rest.length
      this.needed = 0
    }
    return frames
  }

  private peekLength(): number {
    const first = this.chunks[0] as Buffer
    if (first.length >= 4) return first.readUInt32BE(0)
    const head = Buffer.concat(this.chunks).subarray(0, 4)
    return head.readUInt32BE(0)
  }
}

export interface RpcOptions {
  self: MemberConfig
  members: MemberConfig[]
  clusterId: string
  host: string
  logger: Logger
  /** Mutual TLS and the identity checks (or the unsafe plaintext switch). */
  security: PeerSecurity
  /** Serves one request from a peer. */
  handle(request: PeerRequest): Promise<PeerReply>
  /** This member's ring version, stamped on every request and reply (0: none known yet). */
  ringVersion(): number
  /** A peer's reply carried its ring version. */
  onPeerRingVersion(peer: string, version: number): void
}

/** A call that got no reply: the peer is unreachable, too slow, or broke the stream. */
export class PeerUnreachable extends Error {
  constructor(
    readonly peer: string,
    reason: string,
    /**
     * True when the request may have reached the peer (the channel was connected): it may have
     * been applied there. False when it certainly was not delivered.
     */
    readonly unknownOutcome = false,
  ) {
    super(`${peer} did not answer: ${reason}`)
    this.name = 'PeerUnreachable'
  }
}

export class LeaderlessRpc {
  private readonly options: RpcOptions
  private server: PeerServer | null = null
  private readonly channels = new Map<string, Channel>()
  private readonly inbound = new Set<http2.ServerHttp2Session>()
  private readonly urls: Map<string, string>
  private closed = false

  constructor(options: RpcOptions) {
    this.options = options
    this.urls = new Map(options.members.map((m) => [m.id, m.peerUrl]))
  }

  /**
   * The ring changed: where its members are now. Channels to members that left or moved are
   * closed; the seeds --members named stay reachable until the ring names them otherwise.
   */
  setMembers(members: readonly MemberConfig[], removed: readonly string[]): void {
    for (const m of members) {
      const known = this.urls.get(m.id)
      if (known !== undefined && known !== m.peerUrl) {
        const channel = this.channels.get(m.id)
        if (channel) this.breakChannel(m.id, channel, 'its peer URL changed')
      }
      this.urls.set(m.id, m.peerUrl)
    }
    for (const id of removed) {
      if (id === this.options.self.id) continue
      this.urls.delete(id)
      const channel = this.channels.get(id)
      if (channel) this.breakChannel(id, channel, 'removed from the ring')
    }
  }

  async listen(): Promise<void> {
    this.server = await listenPeerServer({
      peerUrl: this.options.self.peerUrl,
      host: this.options.host,
      streamsMax: oneShotStreamsMax + 4,
      sessions: this.inbound,
      security: this.options.security,
      onStream: (stream, headers, peer) => this.accept(stream, headers, peer),
    })
  }

  private accept(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    peer: string | null,
  ): void {
    stream.on('error', () => {})
    if (headers[':method'] === 'POST' && headers[':path'] === streamPath) {
      this.acceptStream(stream, peer)
      return
    }
    if (headers[':path'] !== peerPath || headers[':method'] !== 'POST') {
      stream.respond({ ':status': 404 })
      stream.end()
      return
    }
    // Per-peer memory cap on the one-request path: few streams, and a byte budget shared by
    // every stream of the session.
    const session = stream.session as (ServerHttp2Stream['session'] & OneShotUsage) | undefined
    if (session === undefined) return
    session[oneShotUsage] ??= { streams: 0, bytes: 0 }
    const usage = session[oneShotUsage]
    if (usage.streams >= oneShotStreamsMax) {
      this.options.security.onRefused('buffer_limit', { peer, streams: usage.streams })
      this.reply(stream, 503, {
        kind: 'refusal',
        code: 'KV_ERR_OVERLOADED',
        message: `${oneShotStreamsMax} requests from this peer are already being received`,
      })
      return
    }
    usage.streams++
    const chunks: Buffer[] = []
    let bytes = 0
    let refused = false
    const release = () => {
      usage.bytes -= bytes
      bytes = 0
    }
    stream.once('close', () => {
      usage.streams--
      release()
    })
    stream.on('data', (chunk: Buffer) => {
      if (refused) return
      bytes += chunk.length
      usage.bytes += chunk.length
      if (bytes > leaderlessLimits.messageBytesMax || usage.bytes > oneShotBytesMax) {
        refused = true
        release()
        chunks.length = 0
        if (usage.bytes > oneShotBytesMax)
          this.options.security.onRefused('buffer_limit', { peer, bytes: usage.bytes })
        this.reply(stream, 413, {
          kind: 'refusal',
          code: 'KV_ERR_BAD_FRAME',
          message: `request larger than ${leaderlessLimits.messageBytesMax} bytes, or more than ${oneShotBytesMax} bytes buffered for this peer`,
        })
        return
      }
      chunks.push(chunk)
    })
    stream.on('end', () => {
      if (refused) return
      const body = Buffer.concat(chunks)
      chunks.length = 0
      void this.serve(body, peer).then(({ status, reply }) => {
        release()
        this.reply(stream, status, reply)
      })
    })
  }

  /** Decodes, checks and serves one request; never rejects (failures become refusals). */
  private async serve(
    bytes: Uint8Array,
    peer: string | null,
  ): Promise<{ status: number; reply: PeerReply }> {
    let request: PeerRequest
    try {
      request = decodePeerRequest(bytes)
    } catch (err) {
      this.options.logger.warn({ err }, 'refused a malformed leaderless request')
      return {
        status: 400,
        reply: {
          kind: 'refusal',
          code: 'KV_ERR_BAD_FRAME',
          message: err instanceof DecodeError ? err.message : 'undecodable request',
        },
      }
    }
    if (request.clusterId !== this.options.clusterId || request.to !== this.options.self.id) {
      return {
        status: 409,
        reply: {
          kind: 'refusal',
          code: 'KV_ERR_CLUSTER_MISMATCH',
          message: `this is ${this.options.self.id} of cluster ${this.options.clusterId}; the request was meant for ${request.to} of ${request.clusterId}`,
        },
      }
    }
    if (peer !== null && request.from !== peer) {
      // The connection was authenticated as `peer`; a request naming anyone else is forged.
      this.options.security.onRefused('sender_mismatch', { peer, claimed: request.from })
      return {
        status: 403,
        reply: {
          kind: 'refusal',
          code: 'KV_ERR_PEER_IDENTITY',
          message: `this connection belongs to ${peer}, not ${request.from}`,
        },
      }
    }
    // Whether the sender is a member is the engine's to say, against its ring (after learning
    // a newer one the sender may carry): a member added since this one last heard is one.
    try {
      return { status: 200, reply: await this.options.handle(request) }
    } catch (err) {
      const code =
        err !== null && typeof err === 'object' && 'code' in err && typeof err.code === 'string'
          ? err.code
          : 'KV_ERR_INTERNAL'
      return {
        status: 200,
        reply: {
          kind: 'refusal',
          code: code.startsWith('KV_ERR_') ? code : 'KV_ERR_INTERNAL',
          message: (err as Error).message ?? String(err),
        },
      }
    }
  }

  /**
   * A peer's multiplexed channel: requests arrive as frames on the request body and replies
   * leave as frames on the response body, matched by id, in whatever order they finish.
   */
  private acceptStream(stream: ServerHttp2Stream, peer: string | null): void {
    stream.respond({ ':status': 200, 'content-type': 'application/x-kv-frames' })
    const reader = new FrameReader()
    const replies = new FrameBatch(stream)
    let serving = 0
    let servingBytes = 0
    stream.on('data', (chunk: Buffer) => {
      let frames: { id: number; payload: Buffer }[]
      try {
        frames = reader.push(chunk)
      } catch (err) {
        this.options.logger.warn({ err }, 'closed a leaderless peer channel with a bad frame')
        stream.close(http2.constants.NGHTTP2_PROTOCOL_ERROR)
        return
      }
      for (const { id, payload } of frames) {
        serving++
        servingBytes += payload.length
        // Backpressure: past servesInFlightMax requests (or servesBytesMax bytes) in service,
        // stop reading the channel (the peer's writes then wait in TCP) until some are answered.
        if ((serving >= servesInFlightMax || servingBytes >= servesBytesMax) && !stream.isPaused())
          stream.pause()
        void this.serve(payload, peer).then(({ reply }) => {
          serving--
          servingBytes -= payload.length
          if (
            serving < servesInFlightMax / 2 &&
            servingBytes < servesBytesMax / 2 &&
            stream.isPaused()
          )
            stream.resume()
          if (!stream.destroyed && stream.writable)
            replies.push(encodeFrame(id, encodePeerReply(reply, this.options.ringVersion())))
        })
      }
    })
    stream.on('end', () => {
      if (!stream.destroyed) stream.end()
    })
  }

  private reply(stream: ServerHttp2Stream, status: number, reply: PeerReply): void {
    if (stream.destroyed || stream.closed) return
    try {
      stream.respond({ ':status': status, 'content-type': 'application/x-protobuf' })
      stream.end(encodePeerReply(reply, this.options.ringVersion()))
    } catch {
      stream.destroy()
    }
  }

  /** The open channel to `peer`, or a new one. */
  private channel(peer: string): Channel {
    const existing = this.channels.get(peer)
    if (existing && !existing.broken) return existing
    const url = this.urls.get(peer)
    if (url === undefined) throw new PeerUnreachable(peer, 'not a member')
    const security = this.options.security
    const session =
      security.tls === null
        ? http2.connect(url)
        : http2.connect(url, peerConnectOptions(security, peer))
    session.on('error', () => {})
    session.on('goaway', () => session.close())
    session.on('connect', (_s: ClientHttp2Session, socket: Socket) => socket.setNoDelay(true))
    session.unref()
    const stream = session.request({
      ':method': 'POST',
      ':path': streamPath,
      'content-type': 'application/x-kv-frames',
    })
    const channel: Channel = {
      session,
      stream,
      outbox: new FrameBatch(stream),
      pending: new Map(),
      nextId: 1,
      broken: false,
      connected: false,
    }
    session.once('connect', () => (channel.connected = true))
    const reader = new FrameReader()
    stream.on('data', (chunk: Buffer) => {
      let frames: { id: number; payload: Buffer }[]
      try {
        frames = reader.push(chunk)
      } catch (err) {
        this.breakChannel(peer, channel, `bad frame: ${(err as Error).message}`)
        return
      }
      for (const { id, payload } of frames) {
        const call = channel.pending.get(id)
        if (!call) continue // it timed out
        channel.pending.delete(id)
        clearTimeout(call.timer)
        try {
          const { ringVersion, reply } = decodePeerReplyEnvelope(payload)
          this.options.onPeerRingVersion(peer, ringVersion)
          call.resolve(reply)
        } catch (err) {
          call.reject(new PeerUnreachable(peer, `bad reply: ${(err as Error).message}`))
        }
      }
    })
    stream.on('error', (err) => this.breakChannel(peer, channel, err.message))
    stream.on('close', () => this.breakChannel(peer, channel, 'channel closed'))
    session.on('close', () => this.breakChannel(peer, channel, 'session closed'))
    this.channels.set(peer, channel)
    return channel
  }

  /** Fails every call waiting on the channel and drops it; the next call opens a new one. */
  private breakChannel(peer: string, channel: Channel, reason: string): void {
    if (channel.broken) return
    channel.broken = true
    if (this.channels.get(peer) === channel) this.channels.delete(peer)
    for (const call of channel.pending.values()) {
      clearTimeout(call.timer)
      call.reject(new PeerUnreachable(peer, reason, channel.connected))
    }
    channel.pending.clear()
    channel.outbox.clear()
    channel.session.destroy()
  }

  /** Sends one request to `peer`; rejects with PeerUnreachable when no reply comes in time. */
  call(peer: string, body: PeerRequestBody, timeoutMs: number): Promise<PeerReply> {
    if (this.closed) return Promise.reject(new PeerUnreachable(peer, 'transport closed'))
    let channel: Channel
    try {
      channel = this.channel(peer)
    } catch (err) {
      return Promise.reject(err as Error)
    }
    if (channel.pending.size >= callsInFlightMax) {
      return Promise.reject(
        new PeerUnreachable(peer, `${callsInFlightMax} calls are already waiting for it`),
      )
    }
    const waiting = channel.stream.writableLength + channel.outbox.bytes
    if (waiting > channelBufferBytesMax) {
      // The peer is not reading (slow, or paused): fail at once rather than buffer without
      // bound. Nothing was sent, so the outcome is known.
      return Promise.reject(new PeerUnreachable(peer, `${waiting} bytes are waiting to be sent`))
    }
    const payload = encodePeerRequest({
      clusterId: this.options.clusterId,
      from: this.options.self.id,
      to: peer,
      ringVersion: this.options.ringVersion(),
      body,
    })
    const id = channel.nextId
    channel.nextId = channel.nextId >= 0xffffffff ? 1 : channel.nextId + 1
    return new Promise<PeerReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        // A peer that stopped answering (paused, partitioned) may hold the channel forever:
        // fail what waits on it and start afresh next time.
        this.breakChannel(peer, channel, `no reply within ${timeoutMs} ms`)
      }, timeoutMs)
      channel.pending.set(id, { resolve, reject, timer })
      channel.outbox.push(encodeFrame(id, payload))
    })
  }

  async close(): Promise<void> {
    this.closed = true
    for (const [peer, channel] of [...this.channels])
      this.breakChannel(peer, channel, 'transport closed')
    for (const session of this.inbound) session.destroy()
    const server = this.server
    this.server = null
    await server?.close()
  }
}
