/**
 * A user-space TCP proxy that delays every chunk by a fixed time in each direction, keeping
 * the order: the slow link of the docker backend (tc netem does not exist on these kernels).
 * It listens on `host` (the container network's gateway, reachable from every container) and
 * forwards to `target`; closing it cuts every connection it carries.
 */
import { createServer, connect, type Server, type Socket } from 'node:net'

export class DelayProxy {
  private readonly server: Server
  private readonly sockets = new Set<Socket>()

  private constructor(target: { host: string; port: number }, delayMs: number) {
    this.server = createServer((inbound) => {
      const outbound = connect(target.port, target.host)
      this.sockets.add(inbound)
      this.sockets.add(outbound)
      const pipe = (from: Socket, to: Socket) => {
        // Each chunk leaves delayMs after it arrived; timers fire in order, so order is kept.
        from.on('data', (chunk: Buffer) => {
          setTimeout(() => {
            if (!to.destroyed) to.write(chunk)
          }, delayMs)
        })
        from.on('end', () => setTimeout(() => to.end(), delayMs))
      }
      pipe(inbound, outbound)
      pipe(outbound, inbound)
      const close = () => {
        inbound.destroy()
        outbound.destroy()
        this.sockets.delete(inbound)
        this.sockets.delete(outbound)
      }
      for (const s of [inbound, outbound]) {
        s.on('error', close)
        s.on('close', close)
      }
    })
  }

  get port(): number {
    const address = this.server.address()
    return typeof address === 'object' && address !== null ? address.port : 0
  }

  static async start(
    host: string,
    target: { host: string; port: number },
    delayMs: number,
  ): Promise<DelayProxy> {
    const proxy = new DelayProxy(target, delayMs)
    await new Promise<void>((resolve, reject) => {
      proxy.server.once('error', reject)
      proxy.server.listen(0, host, () => resolve())
    })
    return proxy
  }

  /** Stops listening and cuts every connection (both sides). */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    this.sockets.clear()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
