/**
 * Every limit of leaderless mode's node side (the engine and the peer channel), in one place,
 * with checks at load that they fit each other and the protocol's limits.
 */
import { invariant } from '@kvstore/core'
import { leaderlessLimits } from '@kvstore/protocol'

/** Leaf buckets per replica-set Merkle tree: 2^treeDepth. */
export const treeDepth = 10
/** Dots reserved per durable write of the counter. */
export const counterReservation = 10_000
/** Records sent in one anti-entropy RangeKeys message, at most. */
export const aeRecordsPerMessageMax = 2000
/** How long an anti-entropy call may take (a batch of merges on a busy peer) (ms). */
export const aeCallTimeoutMs = 30_000
/** Leaves asked for in one RangeKeys message, at most. */
export const aeLeavesPerMessageMax = 64
/**
 * Bytes of keys and values in one anti-entropy message, roughly, at most: a message is cut
 * before the record that would cross it (a record alone always goes).
 */
export const aeBytesPerMessageMax = 8 * 1024 * 1024
/** Anti-entropy records merged at once (their writes share LevelDB batches). */
export const aeMergeConcurrency = 32
/** Bytes counted per record beside its key and values (vector, dots, timestamps, framing). */
export const recordOverheadBytes = 64
/** Bytes counted per sibling beside its value (dot, timestamp, framing). */
export const siblingOverheadBytes = 48
/** Hints read per page when replaying. */
export const hintReplayBatch = 256
/** Hints in flight at once to one member while replaying. */
export const hintReplayConcurrency = 16
/** Longest a replay pass to one member runs before the next pass takes over (ms). */
export const hintReplayBudgetMs = 5000
/** How far ahead of this clock a peer's timestamp may be before it is refused. */
export const clockSkewMaxMs = 60_000
/** Entries read per page when loading the local state and counting hints at start. */
export const loadPageEntries = 10_000

/** Calls waiting on one peer at most; past it a call fails at once. */
export const callsInFlightMax = 16_384
/** Bytes waiting to be sent to one peer at most; past it a call fails at once. */
export const channelBufferBytesMax = 64 * 1024 * 1024
/** Requests from one peer in service at once; past it the channel is not read. */
export const servesInFlightMax = 1024
/** Bytes of requests from one peer's channel in service at once; past it the channel is not read. */
export const servesBytesMax = 128 * 1024 * 1024
/** One-request streams (`/peer/v1/ll`) one peer session may have open at once. */
export const oneShotStreamsMax = 8
/** Bytes one peer session may have buffered across its one-request streams. */
export const oneShotBytesMax = leaderlessLimits.messageBytesMax + 16 * 1024 * 1024

// An anti-entropy message holds at most its byte budget, or one record alone (the
// configuration checks that a record of siblingsMax values of valueBytesMax fits a peer
// message); the budget leaves room in a peer message for the framing around the records.
invariant(
  aeBytesPerMessageMax + aeRecordsPerMessageMax * recordOverheadBytes <=
    leaderlessLimits.messageBytesMax,
  'the anti-entropy message budget must fit a peer message',
)
invariant(
  aeRecordsPerMessageMax <= leaderlessLimits.recordsPerMessageMax,
  'an anti-entropy message holds no more records than a peer decodes',
)
invariant(
  aeLeavesPerMessageMax <= 2 ** treeDepth && treeDepth <= 20,
  'a RangeKeys message asks for at most every leaf of a tree',
)
invariant(
  oneShotBytesMax >= leaderlessLimits.messageBytesMax,
  'a peer session buffers at least one whole message',
)
invariant(
  channelBufferBytesMax >= leaderlessLimits.messageBytesMax,
  'a channel buffers at least one whole message',
)
invariant(servesBytesMax >= leaderlessLimits.messageBytesMax, 'a channel serves one message')

/** UTF-8 bytes of a string, without encoding it. */
function utf8Bytes(text: string): number {
  let bytes = 0
  for (const char of text) {
    const c = char.codePointAt(0) as number
    bytes += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4
  }
  return bytes
}

/**
 * What one record costs an anti-entropy message, roughly: the key's UTF-8 bytes (not its
 * characters: a key of 1,000 CJK characters is 3,000 bytes), its values' bytes and overheads.
 */
export function recordBytes(
  key: string,
  state: { siblings: readonly { value: { value: Uint8Array | null } }[] },
): number {
  let bytes = utf8Bytes(key) + recordOverheadBytes
  for (const s of state.siblings) bytes += (s.value.value?.length ?? 0) + siblingOverheadBytes
  return bytes
}

/**
 * Whether one more record of `size` bytes fits a message holding `records` records of `bytes`:
 * a message stays within the record count and byte budget, except that a lone record always
 * goes (the configuration checks that one record fits a peer message).
 */
export function aeMessageFits(records: number, bytes: number, size: number): boolean {
  if (records === 0) return true
  return records + 1 <= aeRecordsPerMessageMax && bytes + size <= aeBytesPerMessageMax
}
