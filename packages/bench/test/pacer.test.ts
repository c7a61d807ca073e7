import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { runPaced } from '../src/pacer.js'

let server: Server | null = null
afterEach(async () => {
  server?.closeAllConnections()
  await new Promise<void>((resolve) =>
    server === null ? resolve() : server.close(() => resolve()),
  )
  server = null
})

/** A local HTTP/1.1 server answering every PUT with 200 (`closeFirst`: the first says close). */
async function start(options: { headersTimeoutMs: number; closeFirst?: boolean }): Promise<string> {
  let answered = 0
  server = createServer(
    {
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: options.headersTimeoutMs,
      connectionsCheckingInterval: 50,
    },
    (req, res) => {
      req.resume()
      req.on('end', () => {
        const close = options.closeFirst === true && answered === 0
        answered++
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': '2',
          ...(close ? { connection: 'close' } : {}),
        })
        res.end('{}')
      })
    },
  )
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', () => resolve()))
  return `http://127.0.0.1:${(server?.address() as AddressInfo).port}`
}

describe('runPaced', () => {
  it('keeps every connection in use at a low rate, so none is timed out unused', async () => {
    // A new connection that sends nothing for 500 ms gets 408 and is closed.
    const url = await start({ headersTimeoutMs: 500 })
    const result = await runPaced({
      url,
      rate: 40,
      durationS: 1.5,
      connections: 6,
      valueBytes: 10,
      prefix: 'k/',
    })
    expect(result.errors).toBe(0)
    expect(result.completed).toBe(result.scheduled)
  })

  it('stops using a connection the server said it would close', async () => {
    const url = await start({ headersTimeoutMs: 10_000, closeFirst: true })
    const result = await runPaced({
      url,
      rate: 50,
      durationS: 1,
      connections: 3,
      valueBytes: 10,
      prefix: 'k/',
    })
    expect(result.errors).toBe(0)
    expect(result.completed).toBe(result.scheduled)
  })
})
