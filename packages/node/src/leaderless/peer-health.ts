/**
 * Peer health: which members this one believes up, from every call and request, and the
 * periodic pings that notice a member coming back. Calls to peers go through here.
 */
import { KvError, type PeerReply } from '@kvstore/protocol'
import { knownCode, type LeaderlessContext } from './context.js'
import { PeerUnreachable, type LeaderlessRpc } from './rpc.js'

export interface MemberHealth {
  up: boolean
  /** When it last answered (ms), 0 if never. */
  lastContactMs: number
  /** Since when it has been down (ms), 0 while up. */
  downSinceMs: number
}

export class PeerHealth {
  /** Every other member's health. */
  readonly health = new Map<string, MemberHealth>()
  /**
   * Called when a peer refused a request because this member's ring is older
   * (KV_ERR_STALE_RING): the caller learns the newer ring before the refusal reaches it.
   */
  onStaleRing: ((member: string) => Promise<void>) | null = null

  constructor(
    private readonly ctx: LeaderlessContext,
    private readonly rpc: LeaderlessRpc,
  ) {
    this.setMembers(ctx.cluster.members.map((m) => m.id))
  }

  /** The ring changed: these are the other members now (a new one starts as up). */
  setMembers(ids: readonly string[]): void {
    const wanted = new Set(ids.filter((id) => id !== this.ctx.self))
    for (const id of [...this.health.keys()]) if (!wanted.has(id)) this.health.delete(id)
    for (const id of wanted) {
      if (!this.health.has(id)) this.health.set(id, { up: true, lastContactMs: 0, downSinceMs: 0 })
    }
  }

  /** Every other member. */
  get peers(): string[] {
    return [...this.health.keys()]
  }

  isUp(member: string): boolean {
    if (member === this.ctx.self) return true
    return this.health.get(member)?.up ?? false
  }

  markUp(member: string): void {
    const h = this.health.get(member)
    if (!h) return
    if (!h.up) this.ctx.log.info({ member }, 'member is reachable again')
    h.up = true
    h.downSinceMs = 0
    h.lastContactMs = this.ctx.now()
  }

  markDown(member: string, reason: string): void {
    const h = this.health.get(member)
    if (!h || !h.up) return
    h.up = false
    h.downSinceMs = this.ctx.now()
    this.ctx.log.warn({ member, reason }, 'member is unreachable')
  }

  async call(
    member: string,
    body: Parameters<LeaderlessRpc['call']>[1],
    timeoutMs = this.ctx.config.quorumTimeoutMs,
  ): Promise<PeerReply> {
    try {
      const reply = await this.rpc.call(member, body, timeoutMs)
      this.markUp(member)
      if (reply.kind === 'refusal') {
        if (reply.code === 'KV_ERR_STALE_RING' && this.onStaleRing !== null)
          await this.onStaleRing(member)
        throw new KvError(knownCode(reply.code), `${member} refused: ${reply.message}`)
      }
      return reply
    } catch (err) {
      if (err instanceof PeerUnreachable) this.markDown(member, err.message)
      throw err
    }
  }

  async pingAll(timeoutMs: number): Promise<void> {
    await Promise.allSettled(
      [...this.health.keys()].map((m) => this.call(m, { kind: 'ping' }, timeoutMs)),
    )
  }
}
