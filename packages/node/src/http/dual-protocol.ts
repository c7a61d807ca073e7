/**
 * One port, two protocols. HTTP/1.1 serves curl and browsers; cleartext HTTP/2 with prior
 * knowledge (h2c) serves the SDK and peers. Each new connection is classified by its first
 * bytes: an HTTP/2 client always opens with the preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
 * and no HTTP/1 request starts with "PRI". The bytes read are pushed back before the
 * connection is handed to the matching Node.js server, and both servers call the same
 * fastify handler.
 *
 * Fastify owns the HTTP/1.1 server (listen, close, timeouts). HTTP/2 sessions are tracked
 * here so that shutdown can close them gracefully.
 */
import http, { type RequestListener } from 'node:http'
import http2, {
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
} from 'node:http2'
import type { Socket } from 'node:net'

const prefaceStart = Buffer.from('PRI', 'latin1')

export interface DualProtocolOptions {
  requestTimeoutMs: number
  keepAliveTimeoutMs: number
  connectionsMax: number
  h2StreamsMax: number
  /** Largest request header block accepted, in bytes. */
  headerBytesMax: number
}

export interface DualProtocolServer extends http.Server {
  /** Sends GOAWAY to every HTTP/2 session; in-flight streams finish. */
  closeHttp2Sessions(): void
  /** Destroys every HTTP/2 session at once (after the shutdown timeout). */
  destroyHttp2Sessions(): void
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
        Math.max(250, Math.floor(options.requestTimeoutMs / 4)),
      ),
    },
    handler,
  ) as DualProtocolServer
  h1.keepAliveTimeout = options.keepAliveTimeoutMs
  h1.headersTimeout = Math.min(60_000, options.requestTimeoutMs)
  h1.maxConnections = options.connectionsMax

  const h2 = http2.createServer(
    {
      settings: {
        maxConcurrentStreams: options.h2StreamsMax,
        maxHeaderListSize: options.headerBytesMax,
      },
      maxSessionMemory: 32,
    },
    handler as unknown as (req: Http2ServerRequest, res: Http2ServerResponse) => void,
  )
  h2.setTimeout(options.keepAliveTimeoutMs)
  const sessions = new Set<Http2Session>()
  h2.on('session', (session) => {
    sessions.add(session)
    session.on('close', () => sessions.delete(session))
  })

  // Sockets whose protocol is not known yet. Node's HTTP server does not know them, so its
  // closeIdleConnections would miss them and a client that connected but sent nothing would
  // hold shutdown for the whole classification timeout.
  const unclassified = new Set<Socket>()
  const http1Listeners = h1.listeners('connection') as ((socket: Socket) => void)[]
  h1.removeAllListeners('connection')
  const classifyTimeoutMs = Math.min(10_000, options.requestTimeoutMs)
  h1.on('connection', (socket: Socket) => {
    // Until the protocol is known nobody else listens to this socket: handle its errors, and
    // drop a client that connects but says nothing.
    const onError = (): void => {
      socket.destroy()
    }
    const onTimeout = (): void => {
      socket.destroy()
    }
    socket.on('error', onError)
    socket.setTimeout(classifyTimeoutMs, onTimeout)
    unclassified.add(socket)
    socket.once('close', () => unclassified.delete(socket))
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
        for (const listener of http1Listeners) listener.call(h1, socket)
      }
    }
    socket.on('readable', classify)
  })

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
