/**
 * A user-space TCP proxy that a nemesis can cut and heal: the link between two regions of a
 * `--regions` run. Each region's regions file names the other region's members at one of
 * these (same IP as the real member, another port, so TLS and its hostname check pass through
 * untouched: the proxy only copies bytes).
 *
 * Cut modes:
 * - `refuse`: open connections are reset, new ones are reset as soon as they arrive (a host
 *   that answers with RST: callers fail fast);
 * - `blackhole`: open connections stop carrying bytes (what arrives is dropped) and new ones
 *   are accepted but never forwarded (packets dropped: callers wait for their own timeouts).
 *
 * `heal` forwards new connections again and destroys every connection the cut held, so the
 * callers reconnect. Every socket is tracked and `close` destroys them all: nothing outlives
 * the run.
 */
import { connect, createServer, type Server, type Socket } from 'node:net'

export type CutMode = 'refuse' | 'blackhole'

export interface ProxyTarget {
  host: string
  port: number
}

export class CutProxy {
  private readonly server: Server
  /** Connections that forward (inbound, outbound). */
  private readonly pairs = new Set<[Socket, Socket]>()
  /** Sockets a blackhole holds: open, carrying nothing, destroyed at heal. */
  private readonly held = new Set<Socket>()
  private cutMode: CutMode | null = null
  /** Connections refused or held since the proxy started. */
  refused = 0
  heldTotal = 0

  private constructor(readonly target: ProxyTarget) {
    this.server = createServer((inbound) => this.accept(inbound))
  }

  static async start(host: string, target: ProxyTarget, port = 0): Promise<CutProxy> {
    const proxy = new CutProxy(target)
    await new Promise<void>((resolve, reject) => {
      proxy.server.once('error', reject)
      proxy.server.listen(port, host, () => {
        proxy.server.off('error', reject)
        resolve()
      })
    })
    return proxy
  }

  get port(): number {
    const address = this.server.address()
    return typeof address === 'object' && address !== null ? address.port : 0
  }

  /** The cut in force, or null when the link is whole. */
  get mode(): CutMode | null {
    return this.cutMode
  }

  /** Connections forwarding now. */
  get open(): number {
    return this.pairs.size
  }

  private accept(inbound: Socket): void {
    inbound.on('error', () => inbound.destroy())
    if (this.cutMode === 'refuse') {
      this.refused++
      inbound.resetAndDestroy()
      return
    }
    if (this.cutMode === 'blackhole') {
      this.hold(inbound)
      return
    }
    const outbound = connect(this.target.port, this.target.host)
    const pair: [Socket, Socket] = [inbound, outbound]
    this.pairs.add(pair)
    const close = () => {
      this.pairs.delete(pair)
      inbound.destroy()
      outbound.destroy()
    }
    for (const s of pair) {
      s.on('error', close)
      s.on('close', close)
    }
    inbound.pipe(outbound)
    outbound.pipe(inbound)
  }

  /** Keeps a socket open while dropping whatever arrives on it. */
  private hold(socket: Socket): void {
    this.heldTotal++
    this.held.add(socket)
    socket.on('data', () => {})
    socket.on('error', () => socket.destroy())
    socket.on('close', () => this.held.delete(socket))
    socket.resume()
  }

  /** Cuts the link: see the modes above. */
  cut(mode: CutMode): void {
    this.cutMode = mode
    for (const pair of [...this.pairs]) {
      this.pairs.delete(pair)
      const [inbound, outbound] = pair
      if (mode === 'refuse') {
        for (const s of pair) {
          s.removeAllListeners('close')
          if (!s.destroyed) s.resetAndDestroy()
        }
        continue
      }
      inbound.unpipe(outbound)
      outbound.unpipe(inbound)
      for (const s of pair) {
        s.removeAllListeners('close')
        s.removeAllListeners('error')
        this.hold(s)
      }
    }
  }

  /** Makes the link whole: new connections forward, the held ones are destroyed. */
  heal(): void {
    this.cutMode = null
    for (const s of [...this.held]) s.destroy()
    this.held.clear()
  }

  /** Stops listening and destroys every connection. */
  async close(): Promise<void> {
    this.heal()
    for (const [a, b] of [...this.pairs]) {
      a.destroy()
      b.destroy()
    }
    this.pairs.clear()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
