/**
 * Who may talk to this node on the peer port, as the configuration says now. Both cluster
 * modes keep it current as their membership changes (single-leader: the configuration in the
 * log; leaderless: the ring).
 *
 * A member of the configuration may connect. So may a certificate the cluster's CA signed for
 * a member id the configuration does not name yet: a member added while this node was behind
 * (cut off, or down) must be able to reach it to bring it up to date, as Raft has servers take
 * appends from a leader outside their configuration. Such a peer's votes count for nothing (the
 * core only counts its configuration's voters). An id the configuration removed is refused
 * outright, at the handshake: a removed member that comes back, with or without its old data,
 * cannot disrupt elections or write anything.
 */
export class PeerRoster {
  private membersValue: ReadonlySet<string>
  private removedValue: ReadonlySet<string>
  private readonly selfId: string

  constructor(selfId: string, members: readonly string[], removed: readonly string[] = []) {
    this.selfId = selfId
    this.membersValue = new Set(members)
    this.removedValue = new Set(removed)
  }

  /** The configuration changed. */
  update(members: readonly string[], removed: readonly string[]): void {
    this.membersValue = new Set(members)
    this.removedValue = new Set(removed)
  }

  /** Whether a peer whose certificate names `id` may talk to this node. */
  allowed(id: string): boolean {
    return id !== this.selfId && !this.removedValue.has(id)
  }

  /** Whether the configuration removed `id`. */
  isRemoved(id: string): boolean {
    return this.removedValue.has(id)
  }

  get memberCount(): number {
    return this.membersValue.size
  }
}
