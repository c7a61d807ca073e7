/**
 * The single-leader configuration on this node: the seed from --members, what the data
 * directory holds, and the conversions between the stored record (with URLs) and the core's
 * view (ids only).
 */
import type { CoreMembership, MembershipAt } from '@kvstore/core'
import {
  EntryKind,
  decodeMembership,
  membershipKeyBytes,
  membershipOfEntry,
  type MembershipConfig,
} from '@kvstore/protocol'
import type { Store } from '@kvstore/storage'
import type { ClusterConfig } from '../config.js'

/** A configuration and the LSN of the entry that made it (0: the seed). */
export interface ConfigAt {
  lsn: number
  config: MembershipConfig
}

/**
 * The configuration --members describes: every member a voter. A node that joins a running
 * cluster (--join) is left out of it: it stays a passive follower until the cluster's
 * configuration, which reaches it by log or snapshot, names it.
 */
export function seedMembership(cluster: ClusterConfig, join: boolean): MembershipConfig {
  return {
    members: cluster.members
      .filter((m) => !(join && m.id === cluster.self.id))
      .map((m) => ({ id: m.id, clientUrl: m.clientUrl, peerUrl: m.peerUrl, voter: true })),
    removed: [],
  }
}

export function coreMembershipOf(config: MembershipConfig): CoreMembership {
  return {
    voters: config.members.filter((m) => m.voter).map((m) => m.id),
    learners: config.members.filter((m) => !m.voter).map((m) => m.id),
  }
}

export function coreMembershipsOf(configs: readonly ConfigAt[]): MembershipAt[] {
  return configs.map((c) => ({ lsn: c.lsn, membership: coreMembershipOf(c.config) }))
}

/** The configuration the state holds now (with the LSN that wrote it), or null. */
export function storedMembership(store: Store): ConfigAt | null {
  const record = store.getSync(membershipKeyBytes)
  if (record === null || record.tombstone) return null
  return { lsn: record.version, config: decodeMembership(record.value) }
}

/**
 * The configurations the core starts with: the last one at or below the commit LSN, then any
 * in the uncommitted tail of the log, oldest first. The state is applied up to the log's end,
 * so it holds the newest; when that one is above the commit LSN, the tail is read for the
 * others and the undo record of the first of them gives the one before (the seed when the
 * state held none).
 */
export async function loadMemberships(store: Store, seed: MembershipConfig): Promise<ConfigAt[]> {
  const latest = storedMembership(store)
  if (latest === null) return [{ lsn: 0, config: seed }]
  const commitLsn = store.meta.commitLsn
  if (latest.lsn <= commitLsn) return [latest]
  const tail: ConfigAt[] = []
  let from = commitLsn + 1
  while (from <= store.appliedLsn) {
    const entries = await store.readLog(from)
    if (entries.length === 0) break
    for (const entry of entries) {
      if (entry.kind !== EntryKind.Membership) continue
      tail.push({ lsn: entry.lsn, config: membershipOfEntry(entry) as MembershipConfig })
    }
    from = (entries[entries.length - 1]?.lsn ?? from) + 1
  }
  const first = tail[0]
  if (first === undefined || tail[tail.length - 1]?.lsn !== latest.lsn) {
    throw new Error(
      `the state's configuration (LSN ${latest.lsn}) is not the last configuration entry of the log's uncommitted tail`,
    )
  }
  const prior = await store.priorRecord(first.lsn, membershipKeyBytes)
  if (prior === undefined) {
    throw new Error(`the configuration entry at LSN ${first.lsn} has no undo record`)
  }
  const base: ConfigAt =
    prior === null
      ? { lsn: 0, config: seed }
      : { lsn: prior.version, config: decodeMembership(prior.value) }
  return [base, ...tail]
}
