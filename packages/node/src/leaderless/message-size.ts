/**
 * What a record costs an anti-entropy message, and where a message is cut (the budgets are in
 * ../limits.ts).
 */
import {
  aeBytesPerMessageMax,
  aeRecordsPerMessageMax,
  recordOverheadBytes,
  siblingOverheadBytes,
} from '../limits.js'

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

/** What one key digest costs a RangeDigests message, roughly: the key's bytes and framing. */
export function digestBytes(key: string): number {
  return utf8Bytes(key) + 12
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
