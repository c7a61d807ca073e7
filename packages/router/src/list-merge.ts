/**
 * A listing across groups: each group answers the same request (prefix, start, cursor, limit),
 * and the pages are merged in key order into one page of at most `limit` keys.
 *
 * The cursor is the node's own (`{v: 1, after: <last key>, prefix}` in base64url): "continue
 * after this key", which every group understands, since each holds only its own slots' keys.
 * A group that stopped early (its page was full, by count or bytes, `nextCursor` set) may hold
 * keys past its last one, so the merged page stops at the smallest last key among such groups:
 * nothing a group has not shown yet can fall before the cursor.
 */
import type { ListItem } from '@kvstore/protocol'

export interface GroupPage {
  items: ListItem[]
  /** The group has more keys after its last item. */
  more: boolean
}

export interface MergedPage {
  items: ListItem[]
  /** The last key returned, when there is more to read after it; null on the last page. */
  after: string | null
}

/**
 * Compares keys as their UTF-8 bytes compare (the nodes' order, LevelDB's): by code point.
 * JavaScript's `<` compares UTF-16 units, which puts U+E000..U+FFFF after the astral planes.
 */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x === y) continue
    // A surrogate (D800..DFFF) stands for a code point above every BMP unit.
    const xs = x >= 0xd800 && x <= 0xdfff
    const ys = y >= 0xd800 && y <= 0xdfff
    if (xs !== ys) return xs ? 1 : -1
    return x - y
  }
  return a.length - b.length
}

/** Merges each group's page (each already in key order) into one of at most `limit` keys. */
export function mergeListPages(pages: readonly GroupPage[], limit: number): MergedPage {
  // The smallest last key of a group that has more: the page may not go past it.
  let bound: string | null = null
  for (const page of pages) {
    if (!page.more) continue
    const last = page.items[page.items.length - 1]
    if (last === undefined) continue
    if (bound === null || compareKeys(last.key, bound) < 0) bound = last.key
  }
  const all: ListItem[] = []
  for (const page of pages) for (const item of page.items) all.push(item)
  all.sort((a, b) => compareKeys(a.key, b.key))
  const items: ListItem[] = []
  let cut = false
  for (const item of all) {
    if (items.length >= limit || (bound !== null && compareKeys(item.key, bound) > 0)) {
      cut = true
      break
    }
    // Two groups never hold one key (each holds its own slots); should a stale copy show up
    // during a move, the first is kept.
    const previous = items[items.length - 1]
    if (previous !== undefined && previous.key === item.key) continue
    items.push(item)
  }
  const last = items[items.length - 1]
  const more = cut || bound !== null
  return { items, after: more && last !== undefined ? last.key : null }
}

/** The node's cursor for "after this key" (see packages/node/src/http/routes/kv.ts). */
export function encodeListCursor(after: string, prefix: string): string {
  return Buffer.from(JSON.stringify({ v: 1, after, prefix }), 'utf8').toString('base64url')
}
