import { connect, createServer, type Server, type Socket } from 'node:net'
import { CutProxy } from '../src/region-proxy.js'

let echo: Server
let proxy: CutProxy

beforeEach(async () => {
  echo = createServer((s) => {
    s.on('error', () => s.destroy())
    s.pipe(s)
  })
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', () => resolve()))
  const address = echo.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  proxy = await CutProxy.start('127.0.0.1', { host: '127.0.0.1', port })
})

afterEach(async () => {
  await proxy.close()
  await new Promise<void>((resolve) => echo.close(() => resolve()))
})

function dial(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(proxy.port, '127.0.0.1', () => resolve(s))
    s.once('error', reject)
  })
}

/** What comes back within `ms` after writing `text` (null: nothing, or the socket ended). */
function roundTrip(s: Socket, text: string, ms = 300): Promise<string | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(null), ms)
    const done = (v: string | null) => {
      clearTimeout(timer)
      s.off('data', onData)
      resolve(v)
    }
    const onData = (b: Buffer) => done(b.toString())
    s.on('data', onData)
    s.once('close', () => done(null))
    s.write(text)
  })
}

const closed = (s: Socket) =>
  new Promise<void>((resolve) => {
    if (s.destroyed) resolve()
    else s.once('close', () => resolve())
  })

describe('CutProxy', () => {
  it('forwards, refuses (resetting open and new connections) and heals', async () => {
    const a = await dial()
    a.on('error', () => {})
    expect(await roundTrip(a, 'hello')).toBe('hello')
    expect(proxy.open).toBe(1)
    proxy.cut('refuse')
    await closed(a)
    // A new connection is reset at once.
    const b = await dial().catch(() => null)
    if (b !== null) {
      b.on('error', () => {})
      await closed(b)
    }
    expect(proxy.refused).toBeGreaterThanOrEqual(b === null ? 0 : 1)
    proxy.heal()
    const c = await dial()
    expect(await roundTrip(c, 'again')).toBe('again')
    c.destroy()
  })

  it('blackholes: open and new connections carry nothing until heal destroys them', async () => {
    const a = await dial()
    a.on('error', () => {})
    expect(await roundTrip(a, 'one')).toBe('one')
    proxy.cut('blackhole')
    expect(await roundTrip(a, 'two', 200)).toBeNull()
    expect(a.destroyed).toBe(false)
    const b = await dial()
    b.on('error', () => {})
    expect(await roundTrip(b, 'three', 200)).toBeNull()
    expect(proxy.mode).toBe('blackhole')
    proxy.heal()
    await Promise.all([closed(a), closed(b)])
    const c = await dial()
    expect(await roundTrip(c, 'four')).toBe('four')
    c.destroy()
  })
})
