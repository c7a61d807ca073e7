import { connect, type Socket } from 'node:net'
import { startTestNode } from './helpers.js'

function openSocket(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => resolve(socket))
    socket.on('error', reject)
  })
}

describe('one port for HTTP/1.1 and h2c', () => {
  it('a client that connects and sends nothing does not hold up shutdown', async () => {
    // The classification timeout is 10 s; shutdown must not wait for it.
    const t = await startTestNode(['--shutdown-timeout-ms', '60000'])
    const idle = await openSocket(t.url)
    const closed = new Promise((resolve) => idle.on('close', resolve))
    await t.stop()
    await closed
  }, 5000)

  it('classifies a request that arrives one byte at a time', async () => {
    const t = await startTestNode()
    try {
      const socket = await openSocket(t.url)
      const request = 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
      let response = ''
      socket.on('data', (chunk: Buffer) => (response += chunk.toString()))
      const ended = new Promise((resolve) => socket.on('close', resolve))
      for (const ch of request) {
        socket.write(ch)
        await new Promise((resolve) => setTimeout(resolve, 1))
      }
      await ended
      expect(response).toMatch(/^HTTP\/1\.1 200 OK/)
      expect(response).toContain('{"status":"ok"}')
    } finally {
      await t.stop()
    }
  })

  it('survives a client that resets the connection before sending anything', async () => {
    const t = await startTestNode()
    try {
      const socket = await openSocket(t.url)
      socket.resetAndDestroy()
      const res = await fetch(`${t.url}/health`)
      expect(res.status).toBe(200)
    } finally {
      await t.stop()
    }
  })
})
