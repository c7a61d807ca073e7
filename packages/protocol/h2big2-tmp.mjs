import http2 from 'node:http2'
import { readFileSync as r } from 'node:fs'
import { Agent, setGlobalDispatcher } from 'undici'
setGlobalDispatcher(new Agent({ connect: { ca: r('/tmp/tlsproto/ca.crt') } }))
const url = 'https://127.0.0.1:17301'
const { token } = await (await fetch(url + '/v1/auth/token', { method: 'POST', body: JSON.stringify({ user: 'root', password: 's3cret-root-pw' }) })).json()
const body = Buffer.alloc(1024 * 1024, 0x61)
const statuses = {}
const t0 = Date.now()
const sessions = [0, 1].map(() => http2.connect(url, { ca: r('/tmp/tlsproto/ca.crt'), maxSessionMemory: 2048 }))
for (const s of sessions) { s.on('error', (e) => console.log('session error', e.message)); s.on('goaway', (c) => console.log('goaway', c)) }
let done = 0
const timer = setInterval(() => console.log('progress', done, JSON.stringify(statuses), Date.now() - t0), 2000)
await Promise.all(sessions.flatMap((session) => Array.from({ length: 256 }, (_, i) => new Promise((resolve) => {
  const stream = session.request({ ':method': 'PUT', ':path': `/v1/kv/big/${i}?ack=async`, 'content-length': String(body.length), authorization: `Bearer ${token}` })
  stream.on('response', (h) => { statuses[h[':status']] = (statuses[h[':status']] ?? 0) + 1 })
  stream.on('error', (e) => { statuses['err ' + e.message.slice(-25)] = (statuses['err ' + e.message.slice(-25)] ?? 0) + 1 })
  stream.on('close', () => { done++; resolve() })
  stream.resume()
  stream.end(body)
}))))
clearInterval(timer)
console.log(statuses, Date.now() - t0, 'ms')
for (const s of sessions) s.destroy()
