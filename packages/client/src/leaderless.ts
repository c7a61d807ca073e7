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
import type { LeaderlessClusterView, LeaderlessMember, Quorum, RingArc } from '@kvstore/protocol'

export type { LeaderlessClusterView, LeaderlessMember, Quorum, RingArc }

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
