/**
 * Online ring changes in leaderless mode (pure: no I/O, no clock, no randomness). A member
 * joins, leaves, or replaces a dead one while reads and writes go on, in the spirit of
 * Cassandra's bootstrap, decommission and replace_address (and Riak's join, leave, replace).
 *
 * The ring is versioned. A change goes through three versions, each agreed as below:
 *
 *   v+1  `streaming`: the new member is `joining` (or the old one `leaving`). Reads use the
 *        owners before the change. Writes go to the owners before AND after (pending ranges):
 *        they need W acks among the owners before and W + k acks in all, k being how many
 *        members the key gains (one, for a single join, leave or replace). The member gaining
 *        ranges streams them meanwhile (or the leaving one pushes them).
 *   v+2  `switched`: streaming is done. Reads use the owners after the change. Writes still go
 *        to both, now needing W among the owners after and W + k in all.
 *   v+3  the change is done: writes and reads use the owners after it; a leaving or replaced
 *        member is removed (its id stays in `removed`, refused on the peer port).
 *
 * Why this is safe: while writes go to both sets, an acknowledged write is on at least W of
 * the old owners AND W of the new ones (W + k acks in all, at most k of them outside either
 * set). So a read at R from either set meets it whatever version its coordinator is at,
 * within one step (the node package refuses a request from a member whose ring is older than
 * the receiver's, and only moves to v+3 once every live member holds v+2). A write acknowledged
 * before the change (W of the old owners) reaches the new owner through the stream: the
 * streaming source is the member it displaces, which keeps the key in the new set when it was
 * not displaced, or hands it over when it is.
 *
 * Agreement (`onPrepare`, `onAccept`, `chooseValue`): each version is decided by single-decree
 * Paxos among the members of the ring it replaces. A proposer for v+1 first gets promises from
 * a majority for a ballot (round, proposer id), learns any ring some acceptor already accepted
 * for v+1 (and must propose the one with the highest ballot instead of its own), then has a
 * majority accept it. Each acceptor keeps, durably, the highest ballot it promised and the ring
 * it accepted, and accepts only at or above its promise, so two majorities cannot choose two
 * rings for v+1: once one is chosen every higher ballot proposes that same ring. A bare
 * compare-and-set on v would stall forever when a proposer died between two acceptors (each
 * holding another tentative ring for v+1 and refusing the rest); the ballots let a later
 * proposer finish or replace an unfinished proposal. Only a chosen ring is committed (made the
 * member's ring); it is then pushed to every member, and any member learns it from any peer
 * message carrying a higher version.
 */
import { leaderlessLimits } from '@kvstore/protocol/limits'
import { invariant } from '../invariant.js'
import { majority } from '../quorum.js'
import { HashRing } from '../ring.js'

export type RingMemberState = 'owner' | 'joining' | 'leaving'
export type RingChangeKind = 'join' | 'leave' | 'replace'
/** streaming: reads on the owners before; switched: reads on the owners after. */
export type HandoffPhase = 'streaming' | 'switched'

export interface RingMember {
  id: string
  clientUrl: string
  peerUrl: string
  state: RingMemberState
  /** Whose points on the ring this member takes (its own id unless it replaced a member). */
  tokens: string
}

export interface RingChange {
  kind: RingChangeKind
  /** The member joining, leaving, or (replace) the new member. */
  member: string
  /** replace: the member being replaced; null otherwise. */
  replacing: string | null
  phase: HandoffPhase
  /** When the change was proposed (the proposer's clock, for display). */
  startedAtMs: number
}

export interface RingState {
  version: number
  /** Sorted by id. */
  members: readonly RingMember[]
  /** Ids removed from the cluster, oldest first (at most `ringRemovedMax`). */
  removed: readonly string[]
  change: RingChange | null
}

/** Members a ring names at most. */
export const ringMembersMax: number = leaderlessLimits.ringMembersMax
/** Removed ids a ring remembers at most (the oldest are forgotten first). */
export const ringRemovedMax: number = leaderlessLimits.ringRemovedMax

/** A refusal of a planned change, with the code the API answers. */
export interface RingRefusal {
  code:
    | 'KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS'
    | 'KV_ERR_WOULD_LOSE_QUORUM'
    | 'KV_ERR_NOT_A_MEMBER'
    | 'KV_ERR_INVALID_ARGUMENT'
  message: string
}

export type RingPlan = { ring: RingState } | { refusal: RingRefusal }

const byId = (a: RingMember, b: RingMember) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

/** The first ring, from --members: version 1, every member an owner. */
export function seedRing(members: readonly Omit<RingMember, 'state' | 'tokens'>[]): RingState {
  return {
    version: 1,
    members: members.map((m) => ({ ...m, state: 'owner' as const, tokens: m.id })).sort(byId),
    removed: [],
    change: null,
  }
}

export function ringMember(ring: RingState, id: string): RingMember | undefined {
  return ring.members.find((m) => m.id === id)
}

/** Members that own ranges before the change in flight (all owners when none is). */
export function ownersBefore(ring: RingState): RingMember[] {
  return ring.members.filter((m) => m.state !== 'joining')
}

/** Members that own ranges once the change in flight is done. */
export function ownersAfter(ring: RingState): RingMember[] {
  return ring.members.filter((m) => m.state !== 'leaving')
}

/** Members whose copies reads use now. */
export function readOwners(ring: RingState): RingMember[] {
  return ring.change?.phase === 'switched' ? ownersAfter(ring) : ownersBefore(ring)
}

/** Why a ring is not well formed, or null. Every ring decoded or planned is checked. */
export function ringProblem(ring: RingState): string | null {
  if (!Number.isSafeInteger(ring.version) || ring.version < 1)
    return `version ${ring.version} is not a positive integer`
  if (ring.members.length === 0) return 'it names no member'
  if (ring.members.length > ringMembersMax)
    return `it names ${ring.members.length} members, more than ${ringMembersMax}`
  if (ring.removed.length > ringRemovedMax)
    return `it names ${ring.removed.length} removed ids, more than ${ringRemovedMax}`
  const ids = new Set<string>()
  const urls = new Set<string>()
  for (let i = 0; i < ring.members.length; i++) {
    const m = ring.members[i] as RingMember
    if (i > 0 && byId(ring.members[i - 1] as RingMember, m) >= 0)
      return 'members are not sorted by id, or repeat one'
    ids.add(m.id)
    for (const url of [m.clientUrl, m.peerUrl]) {
      if (urls.has(url)) return `two members share ${url}`
      urls.add(url)
    }
  }
  for (const id of ring.removed) if (ids.has(id)) return `${id} is both a member and removed`
  const change = ring.change
  const joining = ring.members.filter((m) => m.state === 'joining')
  const leaving = ring.members.filter((m) => m.state === 'leaving')
  if (change === null) {
    if (joining.length + leaving.length > 0) return 'a member is joining or leaving with no change'
  } else {
    const subject = ringMember(ring, change.member)
    if (subject === undefined) return `the change names ${change.member}, not a member`
    if (change.kind === 'join') {
      if (joining.length !== 1 || leaving.length !== 0 || subject.state !== 'joining')
        return `a join must have ${change.member} joining and nobody leaving`
      if (change.replacing !== null) return 'a join replaces nobody'
    } else if (change.kind === 'leave') {
      if (leaving.length !== 1 || joining.length !== 0 || subject.state !== 'leaving')
        return `a leave must have ${change.member} leaving and nobody joining`
      if (change.replacing !== null) return 'a leave replaces nobody'
    } else {
      const old = change.replacing === null ? undefined : ringMember(ring, change.replacing)
      if (old === undefined) return 'a replace must name the member it replaces'
      if (joining.length !== 1 || leaving.length !== 1 || subject.state !== 'joining')
        return 'a replace must have one member joining and the replaced one leaving'
      if (old.state !== 'leaving') return `the replaced ${old.id} must be leaving`
      if (subject.tokens !== old.tokens) return 'a replacement takes the tokens of the replaced'
    }
  }
  for (const owners of [ownersBefore(ring), ownersAfter(ring)]) {
    if (owners.length === 0) return 'no member would own anything'
    // Only a replacement shares tokens, with the member it replaces (never on the same side).
    if (new Set(owners.map((m) => m.tokens)).size !== owners.length)
      return 'two owners take the same tokens'
  }
  return null
}

/** Whether two rings are the same (versions, members, states, removed ids and change). */
export function sameRing(a: RingState, b: RingState): boolean {
  const member = (m: RingMember) => [m.id, m.clientUrl, m.peerUrl, m.state, m.tokens].join('\u0000')
  const change = (c: RingChange | null) =>
    c === null ? '' : [c.kind, c.member, c.replacing ?? '', c.phase, c.startedAtMs].join('\u0000')
  return (
    a.version === b.version &&
    a.members.length === b.members.length &&
    a.members.every((m, i) => member(m) === member(b.members[i] as RingMember)) &&
    a.removed.length === b.removed.length &&
    a.removed.every((id, i) => id === b.removed[i]) &&
    change(a.change) === change(b.change)
  )
}

function refuse(code: RingRefusal['code'], message: string): RingPlan {
  return { refusal: { code, message } }
}

function inProgress(ring: RingState): RingPlan {
  const c = ring.change as RingChange
  const what =
    c.kind === 'replace'
      ? `${c.member} replacing ${c.replacing ?? '?'}`
      : `${c.member} ${c.kind === 'join' ? 'joining' : 'leaving'}`
  return refuse(
    'KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS',
    `ring version ${ring.version} has a change in flight (${what}, ${c.phase}); one change at a time: retry when GET /admin/v1/members shows none`,
  )
}

function checkNewMember(
  ring: RingState,
  member: Omit<RingMember, 'state' | 'tokens'>,
): RingPlan | null {
  if (ringMember(ring, member.id) !== undefined)
    return refuse('KV_ERR_INVALID_ARGUMENT', `${member.id} is already a member of the ring`)
  if (ring.removed.includes(member.id))
    return refuse(
      'KV_ERR_INVALID_ARGUMENT',
      `${member.id} was removed from the cluster and may not come back; give the new member a new id`,
    )
  for (const m of ring.members) {
    for (const url of [member.clientUrl, member.peerUrl]) {
      if (url === m.clientUrl || url === m.peerUrl)
        return refuse('KV_ERR_INVALID_ARGUMENT', `${url} is already ${m.id}'s`)
    }
  }
  if (ring.members.length >= ringMembersMax)
    return refuse('KV_ERR_INVALID_ARGUMENT', `the ring has ${ringMembersMax} members already`)
  return null
}

function withMembers(ring: RingState, members: RingMember[], change: RingChange | null) {
  return { version: ring.version + 1, members: members.sort(byId), removed: ring.removed, change }
}

/** A member joins: version + 1, the member `joining`, phase streaming. */
export function planJoin(
  ring: RingState,
  member: Omit<RingMember, 'state' | 'tokens'>,
  nowMs: number,
): RingPlan {
  if (ring.change !== null) return inProgress(ring)
  const bad = checkNewMember(ring, member)
  if (bad !== null) return bad
  const joining: RingMember = { ...member, state: 'joining', tokens: member.id }
  return {
    ring: withMembers(ring, [...ring.members, joining], {
      kind: 'join',
      member: member.id,
      replacing: null,
      phase: 'streaming',
      startedAtMs: nowMs,
    }),
  }
}

/**
 * A member leaves (DELETE /admin/v1/members/:id): it streams its ranges to their next owners
 * first. Refused when fewer than `n` owners would remain (a key could not have N replicas),
 * or when the member is down (its copies would have to come from the others: replace it
 * instead). Removing the member a change in flight adds aborts that change instead.
 */
export function planLeave(
  ring: RingState,
  id: string,
  n: number,
  up: (id: string) => boolean,
  nowMs: number,
): RingPlan {
  const member = ringMember(ring, id)
  if (member === undefined) {
    return refuse(
      'KV_ERR_NOT_A_MEMBER',
      ring.removed.includes(id)
        ? `${id} was removed from the cluster already`
        : `${id} is not a member of the ring (members: ${ring.members.map((m) => m.id).join(', ')})`,
    )
  }
  if (ring.change !== null) {
    if (ring.change.member === id && ring.change.kind !== 'leave') return planAbort(ring)
    return inProgress(ring)
  }
  const remaining = ring.members.length - 1
  if (remaining < n) {
    return refuse(
      'KV_ERR_WOULD_LOSE_QUORUM',
      `removing ${id} would leave ${remaining} members, fewer than the ${n} replicas each key needs`,
    )
  }
  if (!up(id)) {
    return refuse(
      'KV_ERR_WOULD_LOSE_QUORUM',
      `${id} is down: a leaving member streams its ranges to their next owners, and ${id} cannot. Replace it (POST /admin/v1/members/${id}/replace) so a new member takes its ranges from the other replicas`,
    )
  }
  const members = ring.members.map((m) => (m.id === id ? { ...m, state: 'leaving' as const } : m))
  return {
    ring: withMembers(ring, members, {
      kind: 'leave',
      member: id,
      replacing: null,
      phase: 'streaming',
      startedAtMs: nowMs,
    }),
  }
}

/**
 * Replaces member `id` (typically dead) by a new member with a new id, which takes its points
 * on the ring (exactly its ranges) and streams them from the other replicas. When `id` is down
 * its copies can only come from the others, so every other member must be up: a key `id` held
 * may be acknowledged on `id` and one other replica only.
 */
export function planReplace(
  ring: RingState,
  id: string,
  next: Omit<RingMember, 'state' | 'tokens'>,
  up: (id: string) => boolean,
  nowMs: number,
): RingPlan {
  const old = ringMember(ring, id)
  if (old === undefined) {
    return refuse(
      'KV_ERR_NOT_A_MEMBER',
      ring.removed.includes(id)
        ? `${id} was removed from the cluster already`
        : `${id} is not a member of the ring (members: ${ring.members.map((m) => m.id).join(', ')})`,
    )
  }
  if (ring.change !== null) return inProgress(ring)
  const bad = checkNewMember(ring, next)
  if (bad !== null) return bad
  if (!up(id)) {
    const down = ring.members.filter((m) => m.id !== id && !up(m.id)).map((m) => m.id)
    if (down.length > 0) {
      return refuse(
        'KV_ERR_WOULD_LOSE_QUORUM',
        `${id} is down and so is ${down.join(', ')}: the replacement takes ${id}'s data from the other replicas, and a key held only by down members could not be had. Bring ${down.join(', ')} back first`,
      )
    }
  }
  const members = ring.members.map((m) => (m.id === id ? { ...m, state: 'leaving' as const } : m))
  members.push({ ...next, state: 'joining', tokens: old.tokens })
  return {
    ring: withMembers(ring, members, {
      kind: 'replace',
      member: next.id,
      replacing: id,
      phase: 'streaming',
      startedAtMs: nowMs,
    }),
  }
}

/**
 * Aborts the join or replace in flight (the new member is dropped; a replaced member owns its
 * ranges again). Safe in either phase: the owners before the change had every write.
 */
export function planAbort(ring: RingState): RingPlan {
  const change = ring.change
  invariant(change !== null && change.kind !== 'leave', 'only a join or replace aborts')
  const members = ring.members
    .filter((m) => m.id !== change.member)
    .map((m) => (m.state === 'owner' ? m : { ...m, state: 'owner' as const }))
  return { ring: withMembers(ring, members, null) }
}

/** The next step of the change in flight: streaming to switched, switched to done. */
export function planAdvance(ring: RingState): RingState {
  const change = ring.change
  invariant(change !== null, 'no change to advance')
  if (change.phase === 'streaming')
    return withMembers(ring, [...ring.members], { ...change, phase: 'switched' })
  const gone = ring.members.filter((m) => m.state === 'leaving').map((m) => m.id)
  const members = ring.members
    .filter((m) => m.state !== 'leaving')
    .map((m) => (m.state === 'owner' ? m : { ...m, state: 'owner' as const }))
  const removed = [...ring.removed, ...gone].slice(-ringRemovedMax)
  return { version: ring.version + 1, members, removed, change: null }
}

// ---- placement ------------------------------------------------------------------------------

/** Where a key's write goes during a change: W is counted in `countSet`, `extra` get it too. */
export interface WritePlacement {
  /** The owners reads use now (W acks must come from them). */
  countSet: string[]
  /** Owners of the other side of the change that are not in countSet (pending replicas). */
  extra: string[]
}

function hashRingOf(members: readonly RingMember[], vnodes: number): HashRing {
  const tokens = new Map(members.map((m) => [m.id, m.tokens]))
  return new HashRing(
    members.map((m) => m.id),
    vnodes,
    (id) => tokens.get(id) ?? id,
  )
}

/**
 * A ring's placement of keys: the hash rings before and after the change in flight (the same
 * ring when none is), which reads use, and where writes go.
 */
export class RingPlacement {
  readonly ring: RingState
  readonly n: number
  readonly before: HashRing
  readonly after: HashRing
  /** The hash ring reads (and anti-entropy's replica sets) use now. */
  readonly read: HashRing
  /** The other side of the change (null when none is in flight). */
  private readonly other: HashRing | null

  constructor(ring: RingState, n: number, vnodes: number) {
    this.ring = ring
    this.n = n
    this.before = hashRingOf(ownersBefore(ring), vnodes)
    this.after = ring.change === null ? this.before : hashRingOf(ownersAfter(ring), vnodes)
    const switched = ring.change?.phase === 'switched'
    this.read = switched ? this.after : this.before
    this.other = ring.change === null ? null : switched ? this.before : this.after
  }

  get version(): number {
    return this.ring.version
  }

  /** The owners reads ask for a key. */
  readList(key: string): string[] {
    return this.read.preferenceList(key, this.n)
  }

  writePlacement(key: string): WritePlacement {
    const countSet = this.read.preferenceList(key, this.n)
    if (this.other === null) return { countSet, extra: [] }
    const extra = this.other.preferenceList(key, this.n).filter((m) => !countSet.includes(m))
    return { countSet, extra }
  }

  /** The key's owners before and after the change (equal when none is in flight). */
  listsOf(key: string): { before: string[]; after: string[] } {
    return {
      before: this.before.preferenceList(key, this.n),
      after: this.after.preferenceList(key, this.n),
    }
  }
}

/**
 * Whether a handoff source should send `key` to `target`: the key gains `target` in the
 * change, `displaced` loses it, and `source` held it before.
 */
export function handsOver(
  lists: { before: readonly string[]; after: readonly string[] },
  source: string,
  target: string,
  displaced: string,
): boolean {
  return (
    lists.before.includes(source) &&
    lists.before.includes(displaced) &&
    !lists.after.includes(displaced) &&
    lists.after.includes(target) &&
    !lists.before.includes(target)
  )
}

/**
 * The streams of a handoff to `target` (the joining or new member): per member it displaces
 * somewhere, the number of ring arcs (ranges) it takes from that member. An arc is the run of
 * keys between two consecutive points of the two rings together.
 */
export function handoffStreams(placement: RingPlacement, target: string): Map<string, number> {
  const streams = new Map<string, number>()
  for (const position of arcEnds(placement)) {
    const before = placement.before.preferenceListAt(position, placement.n)
    const after = placement.after.preferenceListAt(position, placement.n)
    if (!after.includes(target) || before.includes(target)) continue
    for (const displaced of before) {
      if (!after.includes(displaced)) streams.set(displaced, (streams.get(displaced) ?? 0) + 1)
    }
  }
  return streams
}

/** Per member gaining ranges from `source` (a leaving member), the number of arcs. */
export function handoffTargets(placement: RingPlacement, source: string): Map<string, number> {
  const targets = new Map<string, number>()
  for (const position of arcEnds(placement)) {
    const before = placement.before.preferenceListAt(position, placement.n)
    const after = placement.after.preferenceListAt(position, placement.n)
    if (!before.includes(source) || after.includes(source)) continue
    for (const gainer of after) {
      if (!before.includes(gainer)) targets.set(gainer, (targets.get(gainer) ?? 0) + 1)
    }
  }
  return targets
}

function arcEnds(placement: RingPlacement): number[] {
  const ends = new Set<number>()
  for (const r of placement.before.ranges()) ends.add(r.end)
  for (const r of placement.after.ranges()) ends.add(r.end)
  return [...ends].sort((a, b) => a - b)
}

// ---- agreement (single-decree Paxos per ring version) ----------------------------------------

export interface Ballot {
  round: number
  proposer: string
}

export function compareBallots(a: Ballot, b: Ballot): number {
  if (a.round !== b.round) return a.round < b.round ? -1 : 1
  return a.proposer < b.proposer ? -1 : a.proposer > b.proposer ? 1 : 0
}

/** An acceptor's durable state for the version after its committed ring's. */
export interface AcceptorState {
  /** The version being decided: the committed ring's version + 1. */
  version: number
  promised: Ballot | null
  accepted: { ballot: Ballot; ring: RingState } | null
}

/** The acceptor state for deciding the version after `committedVersion` (fresh if it moved). */
export function acceptorFor(committedVersion: number, state: AcceptorState | null): AcceptorState {
  if (state !== null && state.version === committedVersion + 1) return state
  return { version: committedVersion + 1, promised: null, accepted: null }
}

export type AcceptorReply =
  | { kind: 'promise'; accepted: { ballot: Ballot; ring: RingState } | null }
  | { kind: 'accepted' }
  /** A higher ballot was promised: retry above it. */
  | { kind: 'rejected'; promised: Ballot }
  /** The acceptor committed that version or a later one already: learn its ring. */
  | { kind: 'stale' }
  /** The acceptor's ring is older than the proposer's: it learns first. */
  | { kind: 'behind' }

function position(committedVersion: number, version: number): 'stale' | 'behind' | 'current' {
  if (committedVersion >= version) return 'stale'
  if (committedVersion < version - 1) return 'behind'
  return 'current'
}

/** Phase 1: promise `ballot` for `version` unless a higher one was promised. */
export function onPrepare(
  committedVersion: number,
  current: AcceptorState | null,
  version: number,
  ballot: Ballot,
): { state: AcceptorState; reply: AcceptorReply; persist: boolean } {
  const state = acceptorFor(committedVersion, current)
  const where = position(committedVersion, version)
  if (where !== 'current') return { state, reply: { kind: where }, persist: false }
  if (state.promised !== null && compareBallots(ballot, state.promised) <= 0) {
    return { state, reply: { kind: 'rejected', promised: state.promised }, persist: false }
  }
  const next = { ...state, promised: ballot }
  return { state: next, reply: { kind: 'promise', accepted: state.accepted }, persist: true }
}

/** Phase 2: accept `ring` under `ballot` unless a higher ballot was promised. */
export function onAccept(
  committedVersion: number,
  current: AcceptorState | null,
  ballot: Ballot,
  ring: RingState,
): { state: AcceptorState; reply: AcceptorReply; persist: boolean } {
  const state = acceptorFor(committedVersion, current)
  const where = position(committedVersion, ring.version)
  if (where !== 'current') return { state, reply: { kind: where }, persist: false }
  if (state.promised !== null && compareBallots(ballot, state.promised) < 0) {
    return { state, reply: { kind: 'rejected', promised: state.promised }, persist: false }
  }
  const next: AcceptorState = {
    version: state.version,
    promised: ballot,
    accepted: { ballot, ring },
  }
  return { state: next, reply: { kind: 'accepted' }, persist: true }
}

/**
 * The ring a proposer must ask acceptors to accept, given a majority of promises: the one
 * accepted under the highest ballot if any acceptor accepted one, else its own.
 */
export function chooseValue(
  promises: readonly ({ ballot: Ballot; ring: RingState } | null)[],
  own: RingState,
): { ring: RingState; own: boolean } {
  let best: { ballot: Ballot; ring: RingState } | null = null
  for (const p of promises) {
    if (p !== null && (best === null || compareBallots(p.ballot, best.ballot) > 0)) best = p
  }
  return best === null
    ? { ring: own, own: true }
    : { ring: best.ring, own: sameRing(best.ring, own) }
}

/** Promises or acceptances needed among the members of the ring being replaced. */
export function agreementQuorum(ring: RingState): number {
  return majority(ring.members.length)
}
