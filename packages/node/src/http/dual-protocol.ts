/**
 * One client port, two protocols, with or without TLS.
 *
 * - With a certificate the port speaks HTTPS: each connection's TLS handshake picks HTTP/2 or
 *   HTTP/1.1 by ALPN. Clients may present a certificate (it names a user); none is required.
 * - Without one (loopback, or --insecure) HTTP/1.1 serves curl and browsers and cleartext
 *   HTTP/2 with prior knowledge (h2c) serves the SDK. Each new connection is classified by its
 *   first bytes: an HTTP/2 client always opens with the preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
 *   and no HTTP/1 request starts with "PRI". The bytes read are pushed back first.
 *
 * Either way the connection is then handed to the matching Node.js server, and both call the
 * same fastify handler. Fastify owns the HTTP/1.1 server (listen, close, timeouts); HTTP/2
 * sessions are tracked here so that shutdown can close them gracefully.
 *
 * Guards against hostile clients, before any request is parsed:
 * - at most `connectionsPerIpMax` open connections per address (then closed at once);
 * - a TLS handshake must finish within `tlsHandshakeTimeoutMs`, and request headers must arrive
 *   within `headersTimeoutMs` (slowloris);
 * - an HTTP/2 connection that cancels streams faster than `h2ResetsPerSecondMax` (rapid reset,
 *   CVE-2023-44487) is closed with GOAWAY.
 */
import http, { type RequestListener } from 'node:http'
import http2, {
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
  type ServerHttp2Stream,
} from 'node:http2'
import type { Socket } from 'node:net'
import tls, { type TLSSocket } from 'node:tls'
import type { TlsSource } from '../security/tls.js'

const prefaceStart = Buffer.from('PRI', 'latin1')

export type ConnectionRefusal = 'per_ip' | 'rapid_reset' | 'handshake'

export interface DualProtocolOptions {
  requestTimeoutMs: number
  keepAliveTimeoutMs: number
  connectionsMax: number
  h2StreamsMax: number
  /** Largest request header block accepted, in bytes. */
  headerBytesMax: number
  /** The node's certificate: HTTPS when given, plaintext otherwise. */
  tls: TlsSource | null
  connectionsPerIpMax: number
  headersTimeoutMs: number
  tlsHandshakeTimeoutMs: number
  h2ResetsPerSecondMax: number
  onRefused(reason: ConnectionRefusal): void
}

export interface DualProtocolServer extends http.Server {
  /** Sends GOAWAY to every HTTP/2 session; in-flight streams finish. */
  closeHttp2Sessions(): void
  /** Destroys every HTTP/2 session at once (after the shutdown timeout). */
  destroyHttp2Sessions(): void
  /** True when the port speaks TLS. */
  readonly secure: boolean
}

/**
 * `handler` is fastify's request listener. HTTP/2 requests reach it through Node's HTTP/1
 * compatibility objects (Http2ServerRequest and Http2ServerResponse), which fastify supports.
 */
export function createDualProtocolServer(
  handler: RequestListener,
  options: DualProtocolOptions,
): DualProtocolServer {
  const h1 = http.createServer(
    {
      maxHeaderSize: options.headerBytesMax,
      requestTimeout: options.requestTimeoutMs,
      // How often Node checks request timeouts (default 30 s, too coarse for short ones).
      connectionsCheckingInterval: Math.min(
        30_000,
        Math.max(250, Math.floor(Math.min(options.requestTimeoutMs, options.headersTimeoutMs) / 4)),
      ),
    },
    handler,
  ) as DualProtocolServer
  h1.keepAliveTimeout = options.keepAliveTimeoutMs
  h1.headersTimeout = Math.min(options.headersTimeoutMs, options.requestTimeoutMs)
  h1.maxConnections = options.connectionsMax
  Object.defineProperty(h1, 'secure', { value: options.tls !== null })

  // Node's HTTP/2 compatibility objects stand in for HTTP/1's, which fastify's listener takes.
  const serve = handler as unknown as (req: Http2ServerRequest, res: Http2ServerResponse) => void
  const h2 = http2.createServer(
    {
      settings: {
        maxConcurrentStreams: options.h2StreamsMax,
        maxHeaderListSize: options.headerBytesMax,
      },
      maxSessionMemory: 32,
      // nghttp2's own guards: a session that keeps sending refused streams or invalid frames
      // is closed.
      maxSessionRejectedStreams: 100,
      maxSessionInvalidFrames: 100,
    },
    (req: Http2ServerRequest, res: Http2ServerResponse) => {
      // Node hands a stream's request over as soon as its HEADERS frame is parsed, before the
      // frames read with it. Each request starts on the next turn instead (setImmediate), once
      // the whole read is parsed, and a stream its client cancelled meanwhile (rapid reset:
      // HEADERS then RST_STREAM) is dropped unrouted, as nothing could receive its answer.
      // Before, every cancelled stream cost a routed, authenticated 404, and a flood of them
      // held a probe's p99 at 390 ms on a 2-core machine.
      setImmediate(() => {
        if (req.stream.closed || req.stream.destroyed) return
        serve(req, res)
      })
    },
  )
  h2.setTimeout(options.keepAliveTimeoutMs)
  const sessions = new Set<Http2Session>()
  h2.on('session', (session) => {
    sessions.add(session)
    session.on('close', () => sessions.delete(session))
    guardRapidReset(session, options)
  })

  // Sockets whose protocol is not known yet (classifying, or in their TLS handshake). Node's
  // HTTP server does not know them, so its closeIdleConnections would miss them and a client
  // that connected but sent nothing would hold shutdown.
  const unclassified = new Set<Socket>()
  const http1Listeners = h1.listeners('connection') as ((socket: Socket) => void)[]
  h1.removeAllListeners('connection')
  const toHttp1 = (socket: Socket): void => {
    for (const listener of http1Listeners) listener.call(h1, socket)
  }
  const perIp = new Map<string, number>()

  // TLS: a tls.Server that never listens does the handshakes of the sockets handed to it, and
  // its ALPN choice decides the protocol.
  let tlsServer: tls.Server | null = null
  const tlsSource = options.tls
  if (tlsSource !== null) {
    const server = tls.createServer({
      ...tlsSource.contextOptions(),
      // A client certificate is optional: one the CA signed that names a user logs in as them.
      requestCert: true,
      rejectUnauthorized: false,
      ALPNProtocols: ['h2', 'http/1.1'],
      handshakeTimeout: options.tlsHandshakeTimeoutMs,
    })
    tlsSource.onReload(() => server.setSecureContext(tlsSource.contextOptions()))
    server.on('tlsClientError', (_err: Error, socket: TLSSocket) => {
      options.onRefused('handshake')
      socket.destroy()
    })
    server.on('secureConnection', (secure: TLSSocket) => {
      // The raw socket under it (Node keeps it as _parent) is no longer unclassified.
      const raw = (secure as TLSSocket & { _parent?: Socket })._parent
      if (raw !== undefined) unclassified.delete(raw)
      secure.on('error', () => secure.destroy())
      if (secure.alpnProtocol === 'h2') h2.emit('connection', secure)
      else toHttp1(secure)
    })
    tlsServer = server
  }

  h1.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? ''
    const open = perIp.get(address) ?? 0
    if (open >= options.connectionsPerIpMax) {
      options.onRefused('per_ip')
      socket.destroy()
      return
    }
    perIp.set(address, open + 1)
    socket.once('close', () => {
      const left = (perIp.get(address) ?? 1) - 1
      if (left <= 0) perIp.delete(address)
      else perIp.set(address, left)
    })
    // Until the protocol is known nobody else listens to this socket: handle its errors, and
    // drop a client that connects but says nothing.
    const onError = (): void => {
      socket.destroy()
    }
    socket.on('error', onError)
    if (tlsServer !== null) {
      // Sockets in their handshake are not known to the HTTP server: track them until the
      // handshake is over, so shutdown can close them.
      unclassified.add(socket)
      socket.once('close', () => unclassified.delete(socket))
      tlsServer.emit('connection', socket)
      return
    }
    unclassified.add(socket)
    socket.once('close', () => unclassified.delete(socket))
    classifyPlaintext(socket, onError)
  })

  const classifyPlaintext = (socket: Socket, onError: () => void): void => {
    const onTimeout = (): void => {
      socket.destroy()
    }
    socket.setTimeout(Math.min(options.headersTimeoutMs, options.requestTimeoutMs), onTimeout)
    const handOver = (): void => {
      unclassified.delete(socket)
      socket.removeListener('error', onError)
      socket.setTimeout(0)
      socket.removeListener('timeout', onTimeout)
    }
    // Bytes read so far. Reading them all empties the socket's buffer, so 'readable' fires
    // again only when more arrive (re-adding the listener with data still buffered would make
    // it fire at once, forever).
    let head: Buffer = Buffer.alloc(0)
    const onEnd = (): void => {
      socket.destroy()
    }
    socket.once('end', onEnd)
    const classify = (): void => {
      for (
        let chunk = socket.read() as Buffer | null;
        chunk !== null;
        chunk = socket.read() as Buffer | null
      ) {
        head = head.length === 0 ? chunk : Buffer.concat([head, chunk])
      }
      if (head.length === 0) return
      if (head.length < prefaceStart.length && prefaceStart.subarray(0, head.length).equals(head)) {
        return // "P" or "PR": HTTP/2 or a PUT/POST/PATCH; wait for more bytes
      }
      socket.removeListener('readable', classify)
      socket.removeListener('end', onEnd)
      socket.unshift(head)
      handOver()
      if (head.subarray(0, prefaceStart.length).equals(prefaceStart)) {
        h2.emit('connection', socket)
      } else {
        toHttp1(socket)
      }
    }
    socket.on('readable', classify)
  }

  // A socket that has sent nothing has no request in flight: it is idle by definition.
  const closeIdle = h1.closeIdleConnections.bind(h1)
  h1.closeIdleConnections = () => {
    closeIdle()
    for (const socket of unclassified) socket.destroy()
  }
  const closeAll = h1.closeAllConnections.bind(h1)
  h1.closeAllConnections = () => {
    closeAll()
    for (const socket of unclassified) socket.destroy()
  }
  h1.closeHttp2Sessions = () => {
    for (const session of sessions) session.close()
  }
  h1.destroyHttp2Sessions = () => {
    for (const session of sessions) session.destroy()
  }
  return h1
}

/**
 * Rapid reset (CVE-2023-44487): a client opens streams and cancels them at once, so the server
 * does work it can never answer, at no cost to the client. Cancellations spend a token bucket
 * of `h2ResetsPerSecondMax` a second (twice that as the burst); a session that empties it gets
 * GOAWAY (ENHANCE_YOUR_CALM) and is closed.
 */
function guardRapidReset(session: Http2Session, options: DualProtocolOptions): void {
  const rate = options.h2ResetsPerSecondMax
  const burst = 2 * rate
  let tokens = burst
  let last = performance.now()
  session.on('stream', (stream: ServerHttp2Stream) => {
    stream.once('close', () => {
      if (stream.rstCode === undefined || stream.rstCode === http2.constants.NGHTTP2_NO_ERROR)
        return
      const now = performance.now()
      tokens = Math.min(burst, tokens + ((now - last) / 1000) * rate)
      last = now
      tokens -= 1
      if (tokens < 0 && !session.destroyed && !session.closed) {
        options.onRefused('rapid_reset')
        session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM)
        session.destroy()
      }
    })
  })
}

/** The TLS socket of a request (HTTP/1.1 or HTTP/2), or null on a plaintext port. */
export function tlsSocketOf(raw: http.IncomingMessage | Http2ServerRequest): TLSSocket | null {
  const socket =
    'stream' in raw && raw.stream !== undefined
      ? (raw.stream.session?.socket as unknown as Socket | undefined)
      : (raw.socket as Socket | undefined)
  if (socket === undefined || !(socket as TLSSocket).encrypted) return null
  return socket as TLSSocket
}
