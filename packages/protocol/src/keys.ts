/**
 * Rules for keys. A key is a non-empty UTF-8 string of at most `keyBytesMax` bytes with no
 * control characters (U+0000 to U+001F and U+007F). It may contain `/`, so keys can form
 * paths, but no segment may be `.` or `..`: HTTP clients normalise those away, so such a key
 * would silently read or overwrite another one. In URLs, characters outside the unreserved
 * set must be percent-encoded.
 */
import { KvError } from './errors.js'

// eslint-disable-next-line no-control-regex
const controlCharacter = /[\u0000-\u001f\u007f]/
// "." or ".." as a whole segment between slashes (or at either end).
const dotSegment = /(^|\/)\.\.?(\/|$)/
const loneSurrogate = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

/**
 * Checks a key and returns its UTF-8 bytes. Throws `KV_ERR_INVALID_KEY` or
 * `KV_ERR_KEY_TOO_LARGE`.
 */
export function keyToBytes(key: string, keyBytesMax: number): Buffer {
  if (key.length === 0) throw new KvError('KV_ERR_INVALID_KEY', 'the key is empty')
  const bytes = Buffer.from(key, 'utf8')
  if (bytes.length > keyBytesMax) {
    throw new KvError(
      'KV_ERR_KEY_TOO_LARGE',
      `the key is ${bytes.length} bytes; the limit is ${keyBytesMax}`,
      { keyBytes: bytes.length, keyBytesMax },
    )
  }
  if (loneSurrogate.test(key)) {
    throw new KvError('KV_ERR_INVALID_KEY', 'the key is not valid UTF-8 (it has a lone surrogate)')
  }
  if (controlCharacter.test(key)) {
    throw new KvError('KV_ERR_INVALID_KEY', 'the key contains a control character')
  }
  if (dotSegment.test(key)) {
    throw new KvError(
      'KV_ERR_INVALID_KEY',
      'the key has a "." or ".." path segment; HTTP clients such as curl rewrite those before sending, so they would reach another key',
    )
  }
  return bytes
}
