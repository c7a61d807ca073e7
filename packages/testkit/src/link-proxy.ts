/**
 * A TCP proxy on 127.0.0.1 standing for a link between regions: `cut()` closes every
 * connection it carries and refuses new ones until `heal()`. The node's TLS goes through it
 * untouched (the certificate names 127.0.0.1, which the proxy listens on too).
 */
import { connect, createServer, type Server, type Socket } from 'node:net'

export class LinkProxy {
  private readonly server: Server
  private readonly sockets = new Set<Socket>()
  private isCut = false
  port = 0

  private constructor(private readonly targetPort: number) {
    this.server = createServer((inbound) => {
      if (this.isCut) {
        inbound.destroy()
        return
      }
      const outbound = connect(this.targetPort, '127.0.0.1')
      this.sockets.add(inbound)
      this.sockets.add(outbound)
      inbound.pipe(outbound)
      outbound.pipe(inbound)
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

  /** Listens on a free port of 127.0.0.1 and forwards to `targetPort` there. */
  static async start(targetPort: number): Promise<LinkProxy> {
    const proxy = new LinkProxy(targetPort)
    await new Promise<void>((resolve, reject) => {
      proxy.server.once('error', reject)
      proxy.server.listen(0, '127.0.0.1', () => resolve())
    })
    const address = proxy.server.address()
    if (address === null || typeof address === 'string') throw new Error('no port')
    proxy.port = address.port
    return proxy
  }

  get cut(): boolean {
    return this.isCut
  }

  /** Cuts the link: open connections close, new ones are refused. */
  cutLink(): void {
    this.isCut = true
    for (const s of this.sockets) s.destroy()
    this.sockets.clear()
  }

  heal(): void {
    this.isCut = false
  }

  async close(): Promise<void> {
    this.cutLink()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
