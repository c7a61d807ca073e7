/**
 * What every part of a leaderless member shares: its configuration, ring, storage, logger,
 * clock and counters. The engine (engine.ts) builds one and hands it to each part: the local
 * replica, peer health, the coordinator, hinted handoff, anti-entropy and tombstone collection.
 */
import type { Logger } from 'pino'
import type { HashRing, RingPlacement, VersionedState } from '@kvstore/core'
import type { KvError } from '@kvstore/protocol'
import { isErrorCode, type VersionedRecord } from '@kvstore/protocol'
import type { Sequencer, Store } from '@kvstore/storage'
import type { ClusterConfig, NodeConfig } from '../config.js'

export type State = VersionedState<Uint8Array>

/** Key prefixes inside the store's state: a member's copy of a key, a hint, metadata. */
export const dataPrefix = 0x64 // 'd'
export const hintPrefix = 0x68 // 'h'
export const metaPrefix = 0x6d // 'm'

export class LeaderlessStats {
  readRepairs = 0
  /** Values fetched in a second round trip because a versions-only answer held a newer one. */
  digestMismatches = 0
  hintsStored = 0
  hintsReplayed = 0
  hintsDropped = { window: 0, full: 0, expired: 0 }
  antiEntropyExchanges = 0
  antiEntropyKeysRepaired = 0
  antiEntropyRecordsSent = 0
  siblingsPruned = 0
  siblingWarnings = 0
  lwwDiscarded = 0
  tombstonesCollected = 0
  /** Tombstones old enough to collect, kept because a replica has not confirmed them. */
  tombstonesAwaitingReplicas = 0
  forwardedWrites = 0
  quorumFailures = { read: 0, write: 0 }
  /** Records from peers refused before any merge (see `peerRecordProblem`). */
  peerRecordsRefused = 0
  /** Keys and bytes moved by the ring handoffs this member drove (pulled or pushed). */
  handoffKeysStreamed = 0
  handoffBytesStreamed = 0
  /** Peer requests refused because their sender's ring was older (KV_ERR_STALE_RING). */
  staleRingRefusals = 0
}

export interface LeaderlessContext {
  readonly config: NodeConfig
  readonly cluster: ClusterConfig
  /** This member's id. */
  readonly self: string
  /** Replicas per key. */
  readonly n: number
  /** The hash ring reads and anti-entropy's replica sets use now (it changes with the ring). */
  readonly ring: HashRing
  /** Where keys go now, writes during a ring change included (see ring-state.ts). */
  readonly placement: RingPlacement
  /** The placement whatever this member's place in it (null before it knows any ring). */
  readonly placementOrNull: RingPlacement | null
  readonly store: Store
  readonly sequencer: Sequencer
  readonly log: Logger
  readonly now: () => number
  readonly stats: LeaderlessStats
  /** True once the engine is stopping: background loops end. */
  readonly stopped: boolean
  /** Runs a task off the caller's path; a failure is logged, and stop() waits for it. */
  runInBackground(task: Promise<unknown>): void
}

export function toState(record: VersionedRecord): State {
  return record as State
}

/** A peer's error code as ours, or KV_ERR_INTERNAL for one this version does not know. */
export function knownCode(code: string): ConstructorParameters<typeof KvError>[0] {
  return isErrorCode(code) ? code : 'KV_ERR_INTERNAL'
}
