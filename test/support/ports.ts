/** Free loopback ports for tests that start `kv-cluster`, which numbers its members' ports. */
import { createServer } from 'node:net'

/** A base port with `count` consecutive free ports on 127.0.0.1 (kv-cluster numbers them). */
export async function freePorts(count: number): Promise<number> {
  const free = (port: number) =>
    new Promise<boolean>((resolve) => {
      const server = createServer()
      server.once('error', () => resolve(false))
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
    })
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000)
    let ok = true
    for (let i = 0; i < count && ok; i++) ok = await free(base + i)
    if (ok) return base
  }
  throw new Error(`no ${count} consecutive free ports`)
}

/** Client and peer base ports, `count` each, far enough apart not to overlap. */
export async function clusterPorts(count: number): Promise<{ client: number; peer: number }> {
  const client = await freePorts(count)
  let peer = await freePorts(count)
  while (Math.abs(peer - client) < count) peer = await freePorts(count)
  return { client, peer }
}
