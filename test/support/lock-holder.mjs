// A lock holder as its own process (test/leases.test.ts): takes the lock with the SDK, writes
// one fenced write, says so on stdout, then (after the test SIGSTOPs and SIGCONTs it) writes
// again with the same token when it reads a line on stdin, and prints what the store said.
// Usage: node lock-holder.mjs <url,url,...> <lock> <resourceKey> <ttlMs>
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { KvClient, lock } from '@kvstore/client'

const [urls, name, resource, ttl] = process.argv.slice(2)
const env = process.env
const client = new KvClient({
  url: urls.split(','),
  tls: {
    ca: readFileSync(env.KV_CACERT),
    cert: readFileSync(env.KV_CERT),
    key: readFileSync(env.KV_KEY),
  },
})
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`)
const held = await lock(client, name, { ttlMs: Number(ttl) })
await client.put(resource, `holder-${held.token}-1`, { fence: held.fence })
say({ event: 'held', token: held.token, lease: held.lease })
const lines = createInterface({ input: process.stdin })
for await (const _ of lines) {
  try {
    const put = await client.put(resource, `holder-${held.token}-2`, { fence: held.fence })
    say({ event: 'wrote', version: put.version })
  } catch (err) {
    say({ event: 'refused', code: err.code, details: err.details })
  }
  break
}
await client.close?.()
process.exit(0)
