/**
 * The server on a node's peer port, shared by the single-leader transport and the leaderless
 * RPC: HTTP/2 over mutual TLS, no Nagle delay, inbound sessions tracked so they can be closed
 * on stop.
 *
 * Who is talking is settled before a single HTTP/2 byte is read. The TLS handshake requires a
 * client certificate signed by the cluster's CA; then the certificate must name exactly one
 * member of this cluster (`kv://<cluster-id>/member/<id>`), another one than this node (one
 * the configuration removed is let through only to be refused at its first frame: see
 * membership/roster.ts and transport.ts). A
 * connection that fails any check is closed, logged and counted; only then is the socket
 * handed to the HTTP/2 server, and every stream on it carries the member its certificate names.
 * Handlers must refuse a message whose claimed sender is another member.
 *
 * With the unsafe plaintext switch (tests and benchmarks on loopback) the port speaks h2c and
 * streams carry no verified member.
 */
import http2, {
  type Http2Server,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2'
import type { Socket } from 'node:net'
import tls, { type TLSSocket } from 'node:tls'
import { certificateIdentity } from '@kvstore/protocol/identity'
import type { TlsSource } from '../security/tls.js'
import type { PeerRoster } from '../membership/roster.js'

/** Why a peer connection or message was refused; the label of kv_peer_refused_total. */
export type PeerRefusal =
  | 'handshake'
  | 'no_member_identity'
  | 'not_a_member'
  | 'removed_member'
  | 'sender_mismatch'
  | 'bad_frame'
  | 'too_many_connections'
  | 'buffer_limit'

export interface PeerSecurity {
  /** The member certificate and CA; null with the unsafe plaintext switch. */
  tls: TlsSource | null
  clusterId: string
  selfId: string
  /** Who may connect now: the configuration's members, and ids it has not removed. */
  roster: PeerRoster
  handshakeTimeoutMs: number
  /** Called for every refused connection or message (for logs and metrics). */
  onRefused(reason: PeerRefusal, detail: Record<string, unknown>): void
}

export interface PeerServerOptions {
  /** This node's peer URL: the server listens on its port. */
  peerUrl: string
  host: string
  /** Concurrent streams one peer session may open. */
  streamsMax: number
  /** Inbound sessions, added while open. */
  sessions: Set<ServerHttp2Session>
  security: PeerSecurity
  /**
   * A new stream. `peer` is the member its connection's certificate names (null only with
   * the unsafe plaintext switch).
   */
  onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, peer: string | null): void
}

const peerOf = Symbol('kv.peer')
type Tagged = { [peerOf]?: string }

/** The member a session's connection was authenticated as (null without TLS). */
export function sessionPeer(session: ServerHttp2Session): string | null {
  return (session as unknown as Tagged)[peerOf] ?? null
}

/** The member a stream's connection was authenticated as (null without TLS). */
export function streamPeer(stream: ServerHttp2Stream): string | null {
  return (stream.session as unknown as Tagged | undefined)?.[peerOf] ?? null
}

export interface PeerServer {
  close(): Promise<void>
}

export async function listenPeerServer(options: PeerServerOptions): Promise<PeerServer> {
  const { security } = options
  const h2: Http2Server = http2.createServer({
    settings: { maxConcurrentStreams: options.streamsMax },
    // Bounds what one session may buffer in nghttp2 (headers, window) beyond stream data.
    maxSessionMemory: 64,
  })
  h2.on('session', (session: ServerHttp2Session) => {
    ;(session as unknown as Tagged)[peerOf] = (session.socket as unknown as Tagged)[peerOf]
    options.sessions.add(session)
    session.on('close', () => options.sessions.delete(session))
    session.on('error', () => {})
  })
  h2.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) =>
    options.onStream(stream, headers, streamPeer(stream)),
  )
  // A member needs a handful of connections (each transport keeps one per peer); more from
  // the network are refused before their handshake costs anything. Room for members added
  // while the node runs (a cluster may grow, one member at a time, well past this).
  const connectionsMax = 4 * (security.roster.memberCount + 8) + 16
  const port = Number(new URL(options.peerUrl).port)
  // Every socket of the port, so that close() can end them all: peers keep reconnecting, and a
  // connection still in its handshake when the server closes would otherwise hold it open.
  const sockets = new Set<Socket>()
  let closing = false
  const track = (socket: Socket): boolean => {
    if (closing) {
      socket.destroy()
      return false
    }
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
    return true
  }
  const closeAll = async (...servers: (tls.Server | Http2Server)[]): Promise<void> => {
    closing = true
    const closed = Promise.all(servers.map(closeServer))
    for (const socket of sockets) socket.destroy()
    await closed
  }
  const tlsSource = security.tls
  if (tlsSource === null) {
    h2.on('connection', (socket: Socket) => {
      if (track(socket)) socket.setNoDelay(true)
    })
    h2.maxConnections = connectionsMax
    await listen(h2, port, options.host)
    return { close: () => closeAll(h2) }
  }

  const server = tls.createServer({
    ...tlsSource.contextOptions(),
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    handshakeTimeout: security.handshakeTimeoutMs,
  })
  server.maxConnections = connectionsMax
  tlsSource.onReload(() => server.setSecureContext(tlsSource.contextOptions()))
  server.on('connection', (socket: Socket) => {
    if (track(socket)) socket.setNoDelay(true)
  })
  server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
    security.onRefused('handshake', {
      remote: socket.remoteAddress ?? null,
      reason: err.code ?? err.message,
    })
  })
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.on('error', () => {})
    if (closing) {
      socket.destroy()
      return
    }
    const san = socket.getPeerCertificate()?.subjectaltname
    const member = certificateIdentity(san, security.clusterId, 'member')
    if (member === null) {
      security.onRefused('no_member_identity', {
        remote: socket.remoteAddress ?? null,
        subjectAltName: san ?? null,
      })
      socket.destroy()
      return
    }
    // A member the configuration removed gets through the handshake only to have every stream
    // refused with KV_ERR_NOT_A_MEMBER (transport.ts): so a removed node that missed its own
    // removal learns of it, and stops campaigning, instead of retrying for ever.
    if (
      member === security.selfId ||
      (!security.roster.allowed(member) && !security.roster.isRemoved(member))
    ) {
      security.onRefused('not_a_member', { remote: socket.remoteAddress ?? null, member })
      socket.destroy()
      return
    }
    if (socket.alpnProtocol !== 'h2') {
      security.onRefused('handshake', {
        remote: socket.remoteAddress ?? null,
        member,
        reason: 'not h2',
      })
      socket.destroy()
      return
    }
    ;(socket as unknown as Tagged)[peerOf] = member
    h2.emit('connection', socket)
  })
  await listen(server, port, options.host)
  return { close: () => closeAll(server, h2) }
}

function listen(server: tls.Server | Http2Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.removeListener('error', reject)
      resolve()
    })
  })
}

function closeServer(server: tls.Server | Http2Server): Promise<void> {
  return new Promise<void>((resolve) => {
    if (!server.listening) {
      resolve()
      return
    }
    server.close(() => resolve())
  })
}
