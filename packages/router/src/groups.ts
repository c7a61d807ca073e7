/**
 * One replica group as the router sees it: its members (each with its connections and its
 * health), which of them leads, and the read pool (the members that take reads now),
 * recomputed whenever a member's health or role changes so that picking a replica is a
 * round-robin step.
 *
 * Every --probe-interval-ms each member is asked for its view (GET /v1/cluster): who it is,
 * whether it leads and takes writes, and (from the leader) how far each follower lags and
 * whether the leader's stream to it is up. A member that does not answer in --probe-timeout-ms
 * is unresponsive. The leader is the member that says it takes writes, at the highest epoch; a
 * NOT_LEADER answer's hint is followed at once and checked by the next probe.
 */
import type { Logger } from 'pino'
import { shardLimits, type ClusterView, type ShardGroup } from '@kvstore/protocol'
import { ReplicaHealth, type HealthOptions, type ReplicaState } from './health.js'
import { Upstream, type UpstreamOptions } from './upstream.js'

export class Member {
  readonly url: string
  /** The id the directory gives it (numbered for --group, whose ids are not known). */
  readonly directoryId: string
  /** The id the node gives itself, once a probe has told it. */
  nodeId: string | null = null
  readonly upstream: Upstream
  readonly health: ReplicaHealth
  /** What the last probe said. */
  role: 'leader' | 'follower' | 'unknown' = 'unknown'
  epoch = 0
  appliedLsn: number | null = null
  lastProbeAtMs = 0
  lastError: string | null = null

  constructor(
    readonly group: GroupState,
    id: string,
    url: string,
    upstream: UpstreamOptions,
    health: HealthOptions,
  ) {
    this.directoryId = id
    this.url = url
    this.upstream = new Upstream(url, upstream)
    this.health = new ReplicaHealth(health)
  }

  /** The name in logs, metrics and kv-served-by: the node's own id once known. */
  get id(): string {
    return this.nodeId ?? this.directoryId
  }
}

export interface GroupOptions {
  upstream: UpstreamOptions
  health: HealthOptions
  readFromLeader: boolean
  probeTimeoutMs: number
  /** Headers every probe carries (none: the router's certificate speaks for it). */
  probeHeaders: Record<string, string>
  logger: Logger
  now: () => number
  onEjected(member: Member): void
  onStateChange(member: Member, from: ReplicaState, to: ReplicaState): void
}

function originOf(url: string): string {
  try {
    return new URL(url).origin
  } catch {
    return url
  }
}

export class GroupState {
  readonly id: string
  readonly index: number
  /** The directory's members, then those learnt from the leader's view. */
  readonly members: Member[]
  private readonly byOrigin = new Map<string, Member>()
  private readonly options: GroupOptions
  /** The member that takes writes, as last learnt; null while unknown (an election). */
  leader: Member | null = null
  /** The highest epoch any member reported. */
  epoch = 0
  /** Members that take reads now, in member order. */
  private readPool: Member[] = []
  private nextReader = 0
  private probing: Promise<void> | null = null
  private lastProbeStartMs = -Infinity
  private readonly lastStates = new Map<Member, ReplicaState>()

  constructor(group: ShardGroup, index: number, options: GroupOptions) {
    this.id = group.id
    this.index = index
    this.options = options
    this.members = []
    for (const m of group.members) this.addMember(m.id, m.url)
  }

  private addMember(id: string, url: string): Member {
    const member = new Member(this, id, originOf(url), this.options.upstream, this.options.health)
    this.members.push(member)
    this.byOrigin.set(member.url, member)
    this.lastStates.set(member, member.health.state)
    return member
  }

  /** A member the directory names now (a reloaded file): added unless known by its URL. */
  adopt(id: string, url: string): void {
    if (this.memberOf(url) !== null || this.members.length >= shardLimits.groupMembersMax) return
    this.addMember(id, url)
    this.refreshPool()
  }

  /**
   * Members the leader names that the directory did not (a member added or replaced since the
   * router started) join the group, up to the directory's bound, with the directory's scheme.
   */
  private learnMembers(view: ClusterView): void {
    const scheme = this.members[0]?.url.slice(0, this.members[0].url.indexOf(':')) ?? 'https'
    for (const m of view.members) {
      if (this.members.length >= shardLimits.groupMembersMax) return
      if (typeof m.clientUrl !== 'string' || this.memberOf(m.clientUrl) !== null) continue
      let parsed: URL
      try {
        parsed = new URL(m.clientUrl)
      } catch {
        continue
      }
      if (parsed.protocol !== `${scheme}:` || parsed.origin !== m.clientUrl) continue
      const member = this.addMember(typeof m.id === 'string' ? m.id : parsed.host, parsed.origin)
      this.options.logger.info(
        { group: this.id, member: member.id, url: member.url },
        'member learnt from the leader',
      )
    }
  }

  /** The member with this client URL (or id), if it is one of ours. */
  memberOf(urlOrId: string | null | undefined): Member | null {
    if (typeof urlOrId !== 'string') return null
    return (
      this.byOrigin.get(originOf(urlOrId)) ??
      this.members.find((m) => m.nodeId === urlOrId || m.directoryId === urlOrId) ??
      null
    )
  }

  /**
   * The next replica for a read: round-robin over the read pool; the leader when the pool is
   * empty; any reachable member when there is no leader either; null when none is left.
   */
  pickReader(): Member | null {
    const pool = this.readPool
    if (pool.length > 0) {
      const i = this.nextReader
      this.nextReader = i + 1 >= pool.length ? 0 : i + 1
      return pool[i < pool.length ? i : 0] as Member
    }
    return this.leader ?? this.members.find((m) => m.health.reachable) ?? null
  }

  /** Members a write may try while the leader is unknown, reachable ones first. */
  writeCandidates(): Member[] {
    const reachable = this.members.filter((m) => m.health.reachable)
    return reachable.length > 0 ? reachable : this.members
  }

  /** Whether the member takes reads now. */
  inReadPool(member: Member): boolean {
    return this.readPool.includes(member)
  }

  /** Recomputes the read pool (after any change of health or role). */
  refreshPool(): void {
    const pool: Member[] = []
    for (const m of this.members) {
      const state = m.health.state
      const before = this.lastStates.get(m)
      if (before !== state) {
        this.lastStates.set(m, state)
        this.options.onStateChange(m, before ?? 'unknown', state)
      }
      if (!m.health.readable) continue
      if (m === this.leader ? this.options.readFromLeader : m.role !== 'leader') pool.push(m)
    }
    this.readPool = pool
    if (this.nextReader >= pool.length) this.nextReader = 0
  }

  /** The member answered a request: counts toward its health. */
  requestSucceeded(member: Member): void {
    if (member.health.failuresInARow > 0 && member.health.onRequestSuccess(this.options.now()))
      this.refreshPool()
  }

  /** A request to the member failed (unreachable, timed out, shutting down, not ready). */
  requestFailed(member: Member, why: string): void {
    member.lastError = why
    if (member.health.onRequestFailure(this.options.now())) {
      this.options.logger.warn(
        {
          group: this.id,
          member: member.id,
          url: member.url,
          ejectedForMs: member.health.ejectedUntil - this.options.now(),
          why,
        },
        'member ejected after failures in a row',
      )
      this.options.onEjected(member)
    }
    if (this.leader === member) this.leader = null
    this.refreshPool()
  }

  /** A read said how far the member lags (kv-lag-ms). */
  lagReported(member: Member, lagMs: number): void {
    if (member.health.onLagReport(this.options.now(), lagMs)) this.refreshPool()
  }

  /** A node named the leader (a NOT_LEADER hint); the next probe confirms it. */
  leaderHint(urlOrId: unknown, epoch?: unknown): Member | null {
    const member = this.memberOf(typeof urlOrId === 'string' ? urlOrId : null)
    if (member === null) return null
    if (typeof epoch === 'number' && epoch < this.epoch) return this.leader
    // A follower may still name a leader that just died: the probes know better.
    if (!member.health.reachable) return this.leader
    if (this.leader !== member) {
      this.leader = member
      this.refreshPool()
    }
    return member
  }

  /**
   * Probes every member now, unless a round is running (then waits for it) or one started
   * within `minGapMs`.
   */
  probe(minGapMs = 0): Promise<void> {
    if (this.probing !== null) return this.probing
    const now = this.options.now()
    if (now - this.lastProbeStartMs < minGapMs) return Promise.resolve()
    this.lastProbeStartMs = now
    this.probing = this.probeRound().finally(() => {
      this.probing = null
    })
    return this.probing
  }

  private async probeRound(): Promise<void> {
    const views = await Promise.all(this.members.map((m) => this.probeMember(m)))
    const now = this.options.now()
    // The leader: a member that says it takes writes, at the highest epoch.
    let leader: Member | null = null
    let leaderView: ClusterView | null = null
    let hinted: { url: string | null; epoch: number } | null = null
    views.forEach((view, i) => {
      if (view === null) return
      const member = this.members[i] as Member
      if (view.epoch > this.epoch) this.epoch = view.epoch
      if (view.writable === true && view.leaderId === view.self) {
        if (leaderView === null || view.epoch > leaderView.epoch) {
          leader = member
          leaderView = view
        }
      } else if (hinted === null || view.epoch > hinted.epoch) {
        hinted = { url: view.leaderUrl, epoch: view.epoch }
      }
    })
    const chosen = leader as Member | null
    if (chosen !== null) {
      if (this.leader !== chosen)
        this.options.logger.info(
          { group: this.id, leader: chosen.id, epoch: (leaderView as ClusterView | null)?.epoch },
          'group leader found',
        )
      this.leader = chosen
    } else if (hinted !== null) {
      // Nobody takes writes right now (an election, or a leader not ready yet): keep what a
      // majority-elected leader's followers name, if it is ours; writes will find out.
      const h = hinted as { url: string | null; epoch: number }
      const named = this.memberOf(h.url)
      this.leader = named !== null && views[this.members.indexOf(named)] !== null ? named : null
    } else {
      this.leader = null
    }
    // Lag and connection of each follower: the leader's measure when it answered.
    const fromLeader = new Map<Member, { lagMs: number; connected: boolean }>()
    const lv = leaderView as ClusterView | null
    if (lv !== null) {
      this.learnMembers(lv)
      for (const m of lv.members) {
        const member = this.memberOf(m.clientUrl) ?? this.memberOf(m.id)
        if (member !== null) fromLeader.set(member, { lagMs: m.lagMs, connected: m.connected })
      }
    }
    views.forEach((view, i) => {
      const member = this.members[i] as Member
      if (view === null) return
      const self = view.members.find((m) => m.id === view.self)
      member.nodeId = view.self
      member.role = member === this.leader ? 'leader' : 'follower'
      member.epoch = view.epoch
      member.appliedLsn = self?.appliedLsn ?? null
      const reported = fromLeader.get(member)
      const ownLag = self?.lagMs ?? 0
      member.health.onProbeSuccess(now, {
        lagMs: member === this.leader ? 0 : Math.max(ownLag, reported?.lagMs ?? 0),
        connected: member === this.leader ? true : (reported?.connected ?? true),
      })
    })
    this.refreshPool()
  }

  /** One member's view, or null when it did not answer (its health is told either way). */
  private async probeMember(member: Member): Promise<ClusterView | null> {
    const started = this.options.now()
    member.lastProbeAtMs = started
    try {
      const res = await member.upstream.request(
        'GET',
        '/v1/cluster',
        this.options.probeHeaders,
        null,
        this.options.probeTimeoutMs,
      )
      if (res.status !== 200) {
        member.lastError = `GET /v1/cluster answered ${res.status}: ${res.body.toString('utf8').slice(0, 200)}`
        // It answers, but will not say (auth): alive, nothing more is known.
        member.health.onProbeSuccess(this.options.now(), {
          lagMs: member.health.lagMs,
          connected: member.health.connected,
        })
        return null
      }
      const view = JSON.parse(res.body.toString('utf8')) as ClusterView
      if (typeof view !== 'object' || view === null || !Array.isArray(view.members)) {
        member.lastError = 'GET /v1/cluster answered something else than a cluster view'
        return null
      }
      member.lastError = null
      return view
    } catch (err) {
      member.lastError = (err as Error).message
      member.health.onProbeFailure(this.options.now())
      if (this.leader === member) this.leader = null
      return null
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.members.map((m) => m.upstream.close()))
  }
}
