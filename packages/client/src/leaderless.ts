/**
 * Leaderless mode on the client side: the cluster view a leaderless node describes, the ring
 * rebuilt from it, and the order in which the SDK tries nodes for a key (pure: no I/O).
 *
 * A key's replicas are the first `replicas` distinct members met walking the consistent-hash
 * ring clockwise from the key's hash (its preference list). Any node coordinates any key, but
 * one outside the preference list forwards a write to one inside it, so the SDK sends each
 * request to the first member of the preference list that looks up, and falls back along the
 * ring from there.
 */
import { HashRing } from '@kvstore/core'
import { KvError } from '@kvstore/protocol/errors'

/** How many replicas must answer: a count, a majority of the key's replicas, or all of them. */
export type Quorum = number | 'quorum' | 'all'

/** A member as a leaderless node's GET /v1/cluster describes it. */
export interface LeaderlessMember {
  id: string
  clientUrl: string
  peerUrl: string
  /** Whether the node that answered sees this member up. */
  up: boolean
  /** True for the node that answered. */
  self?: boolean
  /** Milliseconds since the answering node last heard from this member; null if never. */
  lastContactMs?: number | null
  /** The member's share of the ring as the first replica (0 to 1). */
  share: number
  /** Arcs of the ring whose replicas include the member. */
  arcs: number
  /** Hints the answering node holds for this member (writes it missed while down); other nodes may hold more. */
  hintBacklog: number
  /** When the answering node last ran an anti-entropy exchange with it (epoch ms), or null. */
  lastAntiEntropyMs: number | null
  /** Keys repaired by the answering node's anti-entropy exchanges with this member. */
  antiEntropyKeysRepaired: number
}

/** One arc (start, end] of the ring and the replicas of keys hashing into it. */
export interface RingArc {
  start: number
  end: number
  replicas: string[]
}

/** GET /v1/cluster of a node in leaderless mode. */
export interface LeaderlessClusterView {
  mode: 'leaderless'
  clusterId: string
  /** Id of the node that answered. */
  self: string
  /** Replicas of each key (N). */
  replicas: number
  /** `siblings`: concurrent writes are all kept; `lww`: the latest timestamp wins. */
  conflicts: 'siblings' | 'lww'
  defaultW: number | 'quorum' | 'all'
  defaultR: number | 'quorum' | 'all'
  /** Points of each member on the ring. */
  vnodes: number
  members: LeaderlessMember[]
  ring: RingArc[]
  /** Hints the answering node holds, for every member together. */
  hintsHeld?: number
  /** How long a hint is kept for a member that stays down (ms). */
  hintWindowMs?: number
  antiEntropyIntervalMs?: number
  tombstoneGcMs?: number
}

/** True when `view` (a parsed GET /v1/cluster) comes from a node in leaderless mode. */
export function isLeaderlessView(view: { mode: string }): view is LeaderlessClusterView {
  return view.mode === 'leaderless'
}

/** The ring of a leaderless view, rebuilt exactly as the nodes build it. */
export function ringOf(view: LeaderlessClusterView): HashRing {
  return new HashRing(
    view.members.map((m) => m.id),
    view.vnodes,
  )
}

/**
 * The client URLs to try for `key`, best first: the members of the key's preference list that
 * look up (in list order), then the other members that look up (in ring order, so the next
 * ones after the list come first), then every member that looks down, in the same order (a
 * node seen down may be back). A member looks up when the view says so and `failed` does not
 * hold its URL (the client could not reach it lately).
 */
export function routeKey(
  ring: HashRing,
  view: LeaderlessClusterView,
  key: string,
  failed: ReadonlySet<string> = new Set(),
): string[] {
  const byId = new Map(view.members.map((m) => [m.id, m]))
  const walked = [...ring.walk(key)].map((id) => byId.get(id)).filter((m) => m !== undefined)
  const looksUp = (m: LeaderlessMember) => m.up && !failed.has(m.clientUrl)
  const preferred = walked.slice(0, view.replicas)
  const rest = walked.slice(view.replicas)
  return [
    ...preferred.filter(looksUp),
    ...rest.filter(looksUp),
    ...preferred.filter((m) => !looksUp(m)),
    ...rest.filter((m) => !looksUp(m)),
  ].map((m) => m.clientUrl)
}

/** Orders two timestamps `<wallMs>.<logical>.<node>` (negative: a is older). */
export function compareTimestamps(a: string, b: string): number {
  const parse = (t: string) => {
    const [wall, logical, ...node] = t.split('.')
    return { wall: Number(wall), logical: Number(logical), node: node.join('.') }
  }
  const x = parse(a)
  const y = parse(b)
  if (x.wall !== y.wall) return x.wall - y.wall
  if (x.logical !== y.logical) return x.logical - y.logical
  return x.node < y.node ? -1 : x.node > y.node ? 1 : 0
}

/** Checks a `w` or `r` option and gives its query-string form. */
export function quorumParam(name: 'w' | 'r', value: Quorum): string {
  if (value === 'quorum' || value === 'all') return value
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 1) return String(value)
  throw new KvError(
    'KV_ERR_INVALID_ARGUMENT',
    `${name} must be a whole number of at least 1, 'quorum' or 'all', not ${String(value)}`,
  )
}
