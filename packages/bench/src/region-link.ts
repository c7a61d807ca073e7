/**
 * The link between two regions in the regions suite: a TCP proxy on 127.0.0.1 that holds
 * every chunk `delayMs` before passing it on, in each direction (so a round trip costs
 * 2 x `delayMs` more), keeping the order, and that can be cut (open connections reset, new
 * ones refused) and healed. The nodes' TLS goes through untouched: the proxy only copies bytes.
 *
 * The kernel has no `tc netem` (docs/DESIGN.md), hence a proxy in user space. Each direction
 * queues at most `queuedBytesMax` bytes: past that the sending side is paused until the
 * queue drains below half of it, so a fast sender meets backpressure instead of growing the
 * queue without bound.
 */
import { connect, createServer, type Server, type Socket } from 'node:net'

/** Items each released `delayMs` after it was pushed, in push order (pure: time is passed in). */
export class DelayQueue<T> {
  private readonly items: { dueAt: number; item: T; bytes: number }[] = []
  private head = 0
  /** Bytes pushed and not yet taken. */
  bytes = 0

  constructor(readonly delayMs: number) {
    if (!(delayMs >= 0)) throw new Error(`delayMs must be >= 0, not ${delayMs}`)
  }

  get length(): number {
    return this.items.length - this.head
  }

  push(item: T, nowMs: number, bytes = 0): void {
    this.items.push({ dueAt: nowMs + this.delayMs, item, bytes })
    this.bytes += bytes
  }

  /** When the oldest item is due, or null when the queue is empty. */
  nextDueAt(): number | null {
    return this.items[this.head]?.dueAt ?? null
  }

  /** Removes and returns, in order, every item due by `nowMs`. */
  take(nowMs: number): T[] {
    const out: T[] = []
    while (this.head < this.items.length) {
      const next = this.items[this.head] as { dueAt: number; item: T; bytes: number }
      if (next.dueAt > nowMs) break
      out.push(next.item)
      this.bytes -= next.bytes
      this.head++
    }
    // Compact now and then, so the array does not keep what was taken.
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items.splice(0, this.head)
      this.head = 0
    }
    return out
  }
}

const endOfStream = Symbol('end')

/** One direction of one connection: chunks from `from` reach `to` `delayMs` later. */
function delayedPipe(from: Socket, to: Socket, delayMs: number, queuedBytesMax: number): void {
  const queue = new DelayQueue<Buffer | typeof endOfStream>(delayMs)
  let timer: NodeJS.Timeout | null = null
  const flush = () => {
    timer = null
    for (const item of queue.take(performance.now())) {
      if (to.destroyed) return
      if (item === endOfStream) to.end()
      else to.write(item)
    }
    if (from.isPaused() && queue.bytes < queuedBytesMax / 2) from.resume()
    schedule()
  }
  const schedule = () => {
    const due = queue.nextDueAt()
    if (timer !== null || due === null) return
    timer = setTimeout(flush, Math.max(0, due - performance.now()))
  }
  from.on('data', (chunk: Buffer) => {
    queue.push(chunk, performance.now(), chunk.length)
    if (queue.bytes > queuedBytesMax) from.pause()
    schedule()
  })
  from.on('end', () => {
    queue.push(endOfStream, performance.now())
    schedule()
  })
  const stop = () => {
    if (timer !== null) clearTimeout(timer)
    timer = null
  }
  from.on('close', stop)
  to.on('close', stop)
}

export class RegionLink {
  private readonly server: Server
  private readonly sockets = new Set<Socket>()
  private isCut = false
  /** Connections refused while cut, since the start. */
  refused = 0

  private constructor(
    private readonly targetPort: number,
    readonly delayMs: number,
    private readonly queuedBytesMax: number,
  ) {
    this.server = createServer((inbound) => this.accept(inbound))
  }

  /** Listens on a free port of 127.0.0.1 and forwards to `targetPort` there. */
  static async start(
    targetPort: number,
    delayMs: number,
    queuedBytesMax = 64 * 2 ** 20,
  ): Promise<RegionLink> {
    const link = new RegionLink(targetPort, delayMs, queuedBytesMax)
    await new Promise<void>((resolve, reject) => {
      link.server.once('error', reject)
      link.server.listen(0, '127.0.0.1', () => {
        link.server.off('error', reject)
        resolve()
      })
    })
    return link
  }

  get port(): number {
    const address = this.server.address()
    return typeof address === 'object' && address !== null ? address.port : 0
  }

  get cut(): boolean {
    return this.isCut
  }

  private accept(inbound: Socket): void {
    inbound.on('error', () => inbound.destroy())
    if (this.isCut) {
      this.refused++
      inbound.resetAndDestroy()
      return
    }
    inbound.setNoDelay(true)
    const outbound = connect(this.targetPort, '127.0.0.1')
    outbound.setNoDelay(true)
    this.sockets.add(inbound)
    this.sockets.add(outbound)
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
    if (this.delayMs === 0) {
      inbound.pipe(outbound)
      outbound.pipe(inbound)
      return
    }
    delayedPipe(inbound, outbound, this.delayMs, this.queuedBytesMax)
    delayedPipe(outbound, inbound, this.delayMs, this.queuedBytesMax)
  }

  /** Cuts the link: open connections are reset, new ones refused until `heal`. */
  cutLink(): void {
    this.isCut = true
    for (const s of [...this.sockets]) if (!s.destroyed) s.resetAndDestroy()
    this.sockets.clear()
  }

  heal(): void {
    this.isCut = false
  }

  /** Stops listening and destroys every connection. */
  async close(): Promise<void> {
    this.cutLink()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
