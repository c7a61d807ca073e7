/** Free loopback ports for tests that start `kv-cluster`, which numbers its members' ports. */
import { createServer } from 'node:net'

function free(port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/** A base port with `count` consecutive free ports on 127.0.0.1 (kv-cluster numbers them). */
export async function freePorts(count: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000)
    let ok = true
    for (let i = 0; i < count && ok; i++) ok = await free(base + i)
    if (ok) return base
  }
  throw new Error(`no ${count} consecutive free ports`)
}

/** The offset of the RESP ports kv-cluster gives its members by default (client port + 300). */
export const respPortOffset = 300

/**
 * Client and peer base ports, `count` each, far enough apart not to overlap, with the RESP
 * ports kv-cluster adds by default (client + 300) free too.
 */
export async function clusterPorts(count: number): Promise<{ client: number; peer: number }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const client = await freePorts(count)
    if ((await freePortsAt(client + respPortOffset, count)) === false) continue
    let peer = await freePorts(count)
    const overlaps = (base: number) => Math.abs(peer - base) < count
    while (overlaps(client) || overlaps(client + respPortOffset)) peer = await freePorts(count)
    return { client, peer }
  }
  throw new Error(`no ${count} consecutive free client ports with free RESP ports`)
}

async function freePortsAt(base: number, count: number): Promise<boolean> {
  for (let i = 0; i < count; i++) if (!(await free(base + i))) return false
  return true
}
