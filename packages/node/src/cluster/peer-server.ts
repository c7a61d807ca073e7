/**
 * The HTTP/2 (h2c) server on a node's peer port, shared by the single-leader transport and the
 * leaderless RPC: no Nagle delay, inbound sessions tracked so they can be closed on stop.
 */
import http2, {
  type Http2Server,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2'
import type { Socket } from 'node:net'

export interface PeerServerOptions {
  /** This node's peer URL: the server listens on its port. */
  peerUrl: string
  host: string
  /** Concurrent streams one peer session may open. */
  streamsMax: number
  /** Inbound sessions, added while open. */
  sessions: Set<ServerHttp2Session>
  onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void
}

export async function listenPeerServer(options: PeerServerOptions): Promise<Http2Server> {
  const server = http2.createServer({ settings: { maxConcurrentStreams: options.streamsMax } })
  // Frames are small and latency-bound: never let Nagle hold one back for an ACK.
  server.on('connection', (socket: Socket) => socket.setNoDelay(true))
  server.on('session', (session) => {
    options.sessions.add(session)
    session.on('close', () => options.sessions.delete(session))
    session.on('error', () => {})
  })
  server.on('stream', options.onStream)
  const port = Number(new URL(options.peerUrl).port)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, options.host, () => {
      server.removeListener('error', reject)
      resolve()
    })
  })
  return server
}
