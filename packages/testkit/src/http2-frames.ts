/**
 * Raw HTTP/2 frames for the tests that play a hostile client (rapid reset), written by hand
 * because no client library sends a stream's HEADERS and its RST_STREAM in one write.
 */

/** The client connection preface and an empty SETTINGS frame: what opens every connection. */
export function http2Preface(): Buffer {
  return Buffer.concat([
    Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'),
    http2Frame(0x4, 0, 0),
  ])
}

/** One frame (RFC 9113 §4.1): 24-bit length, type, flags, stream id, payload. */
function http2Frame(
  type: number,
  flags: number,
  stream: number,
  payload = Buffer.alloc(0),
): Buffer {
  const head = Buffer.alloc(9)
  head.writeUIntBE(payload.length, 0, 3)
  head[3] = type
  head[4] = flags
  head.writeUInt32BE(stream, 5)
  return Buffer.concat([head, payload])
}

// HPACK: :method GET, :scheme http or https, :path / (indexed), :authority 127.0.0.1 (literal).
const authority = Buffer.from('127.0.0.1')
const getRoot = {
  http: Buffer.concat([Buffer.of(0x82, 0x86, 0x84, 0x41, authority.length), authority]),
  https: Buffer.concat([Buffer.of(0x82, 0x87, 0x84, 0x41, authority.length), authority]),
}
const cancel = Buffer.of(0, 0, 0, 0x8)

/**
 * A stream opened and cancelled at once: HEADERS for `GET /` (END_STREAM, END_HEADERS), then
 * RST_STREAM (CANCEL).
 */
export function rapidResetPair(stream: number, scheme: 'http' | 'https'): Buffer {
  return Buffer.concat([
    http2Frame(0x1, 0x5, stream, getRoot[scheme]),
    http2Frame(0x3, 0, stream, cancel),
  ])
}
