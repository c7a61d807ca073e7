/**
 * A request refused before its body was read (401, 403, 429, 503 from a hook that runs before
 * body parsing) must not make the node read that body anyway: the client would go on sending
 * it, and on HTTP/2 Node drains it before the response counts as finished.
 *
 * - HTTP/2: once the response is written, RST_STREAM with NO_ERROR tells the client to stop
 *   sending (RFC 9113 8.1: "a server MAY request that the client abort transmission of a request
 *   without error by sending a RST_STREAM with an error code of NO_ERROR after sending a complete
 *   response").
 * - HTTP/1.1: `Connection: close`, so the connection ends with the response instead of waiting
 *   for the body to keep the connection alive.
 */
import { constants } from 'node:http2'
import type { FastifyReply, FastifyRequest } from 'fastify'

interface H2Stream {
  destroyed: boolean
  close(code: number): void
}

export function stopUnreadBody(request: FastifyRequest, reply: FastifyReply): void {
  const length = request.headers['content-length']
  const hasBody =
    (length !== undefined && length !== '0') || request.headers['transfer-encoding'] !== undefined
  const raw = request.raw as unknown as {
    httpVersionMajor: number
    complete?: boolean
    stream?: H2Stream
  }
  if (raw.httpVersionMajor === 2) {
    const stream = raw.stream
    if (stream === undefined || raw.complete === true) return
    // Once the response is written (its frames are queued ahead of the reset).
    reply.raw.once('finish', () => {
      if (!stream.destroyed) stream.close(constants.NGHTTP2_NO_ERROR)
    })
    return
  }
  if (hasBody) void reply.header('connection', 'close')
}
