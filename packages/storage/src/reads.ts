/**
 * Reads of the applied state that go to LevelDB asynchronously: one key, or one page of keys.
 * (The synchronous read is `StoreContext.readRecordSync`.)
 */
import type { StoredRecord } from '@kvstore/protocol'
import type { StoreContext } from './context.js'
import { Prefix, prefixRange, stateKey, stateRangeForPrefix, userKeyOf } from './layout.js'
import { storageLimits } from './limits.js'
import type { ListItem, ListOptions } from './types.js'

/** A key's record: from the cache, or else from LevelDB in libuv's thread pool. */
export async function readRecord(ctx: StoreContext, key: Uint8Array): Promise<StoredRecord | null> {
  // Inside the async function, so a refusal is a rejected promise, never a throw.
  ctx.assertReadable()
  const id = Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1')
  const cached = ctx.cache.get(id)
  if (cached !== undefined) return cached
  ctx.cache.beginFill(id)
  let record: StoredRecord | null = null
  try {
    const bytes = await ctx.db.get(stateKey(key))
    if (ctx.readHook) await ctx.readHook(Buffer.from(key))
    record = bytes === undefined ? null : ctx.decodeRecordFromDisk(bytes, key)
  } finally {
    // Cached only if no write of this key landed while the read was in flight.
    ctx.cache.endFill(id, record)
  }
  return record
}

/**
 * The state keys a listing covers: the prefix's range, or without one everything past the
 * reserved space (keys starting with U+0000, the auth store), which no client key can be in
 * (user keys hold no control characters); from `start`, or strictly after `after`.
 */
export function listBounds(options: ListOptions): {
  gte: Buffer | undefined
  gt: Buffer | undefined
  lt: Buffer
} {
  const range = options.prefix
    ? stateRangeForPrefix(options.prefix)
    : { gte: stateKey(Buffer.of(0x01)), lt: prefixRange(Prefix.State).lt }
  let gte: Buffer | undefined = range.gte
  let gt: Buffer | undefined
  if (options.start && Buffer.compare(stateKey(options.start), gte) > 0) {
    gte = stateKey(options.start)
  }
  if (options.after) {
    const afterKey = stateKey(options.after)
    if (Buffer.compare(afterKey, gte) >= 0) {
      gt = afterKey
      gte = undefined
    }
  }
  return { gte, gt, lt: range.lt }
}

/** One page of keys in key order, from a single consistent LevelDB iterator. */
export async function listPage(
  ctx: StoreContext,
  options: ListOptions,
): Promise<{ items: ListItem[]; more: boolean }> {
  ctx.assertReadable()
  const { gte, gt, lt } = listBounds(options)
  const bytesMax = options.bytesMax ?? Infinity
  const iterator = ctx.db.iterator({
    ...(gte ? { gte } : {}),
    ...(gt ? { gt } : {}),
    lt,
    limit: options.limit + 1,
  })
  try {
    const items: ListItem[] = []
    let bytes = 0
    // Read in chunks and stop at the byte budget: a page of large values must not be
    // loaded whole.
    for (;;) {
      const rows = await iterator.nextv(
        Math.min(storageLimits.listReadChunkEntries, options.limit + 1 - items.length),
      )
      if (rows.length === 0) return { items, more: false }
      for (const [key, value] of rows) {
        if (items.length === options.limit || (items.length > 0 && bytes >= bytesMax)) {
          return { items, more: true }
        }
        const userKey = userKeyOf(key)
        const record = ctx.decodeRecordFromDisk(value, userKey)
        if (record.tombstone) continue
        items.push({ key: Buffer.from(userKey), record })
        bytes += key.length + record.value.length
      }
    }
  } finally {
    await iterator.close()
  }
}
