/**
 * deploy/docker-compose.shards.yml (2 groups of 3 behind 2 kv-routers) read as docker-compose
 * reads it: every node's settings are options kv-node knows, each group's members agree with
 * the shard map file every node and router mounts, the routers alone are published (on
 * 127.0.0.1), and docker-compose accepts the file when it is installed.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'
import { configSpec } from '@kvstore/node'
import { shardMapOfFile } from '@kvstore/protocol'

const deploy = fileURLToPath(new URL('../../../deploy/', import.meta.url))
const composePath = `${deploy}docker-compose.shards.yml`
const mapPath = `${deploy}shard-map.shards.json`

interface Service {
  hostname?: string
  entrypoint?: string[]
  environment?: Record<string, string>
  ports?: string[]
  volumes?: string[]
  profiles?: string[]
}

const compose = parse(readFileSync(composePath, 'utf8'), { merge: true }) as {
  services: Record<string, Service>
  volumes: Record<string, unknown>
}
const map = shardMapOfFile(JSON.parse(readFileSync(mapPath, 'utf8')) as unknown)
const nodes = ['g1n1', 'g1n2', 'g1n3', 'g2n1', 'g2n2', 'g2n3']
const routers = ['r1', 'r2']
const service = (name: string) => compose.services[name] as Service
const env = (name: string) => service(name).environment ?? {}

/** The container path a service mounts `host` (relative to deploy/) at. */
function mountOf(s: Service, host: string): string | undefined {
  for (const v of s.volumes ?? []) {
    const [from, to] = v.split(':')
    if (from === host) return to
  }
  return undefined
}

describe('deploy/docker-compose.shards.yml', () => {
  it('runs 2 groups of 3 nodes and 2 routers, and copies the certificates first', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['certs', ...nodes, ...routers].sort())
    expect(service('certs').profiles).toEqual(['setup'])
    for (const name of nodes) expect(compose.volumes).toHaveProperty(`${name}-data`)
  })

  it('gives every node and router the shard map file, which splits the slots between g1 and g2', () => {
    expect(map.groups.map((g) => [g.id, g.members.map((m) => m.id)])).toEqual([
      ['g1', ['g1n1', 'g1n2', 'g1n3']],
      ['g2', ['g2n1', 'g2n2', 'g2n3']],
    ])
    expect(map.slots.map((c) => [c.first, c.last, c.group])).toEqual([
      [0, 2047, 'g1'],
      [2048, 4095, 'g2'],
    ])
    for (const name of nodes)
      expect(mountOf(service(name), './shard-map.shards.json'), name).toBe(env(name).KV_SHARD_MAP)
    for (const name of routers)
      expect(mountOf(service(name), './shard-map.shards.json'), name).toBe(
        env(name).KV_ROUTER_SHARD_MAP,
      )
  })

  it("starts each node as a member of its group, with the map file's members and URLs", () => {
    for (const name of nodes) {
      const e = env(name)
      const group = map.groups.find((g) => g.members.some((m) => m.id === name))
      expect(group, name).toBeDefined()
      expect(e.KV_NODE_ID).toBe(name)
      expect(service(name).hostname).toBe(name)
      expect(e.KV_SHARD_GROUP).toBe(group?.id)
      // --members: id@clientUrl@peerUrl, the client URLs being the map file's.
      const members = (e.KV_MEMBERS ?? '').split(',').map((m) => m.split('@'))
      expect(members.map(([id, url]) => ({ id, url }))).toEqual(group?.members)
      expect(e.KV_LEADER).toBe(group?.members[0]?.id)
      expect(new URL(group?.members.find((m) => m.id === name)?.url ?? '').port).toBe(e.KV_PORT)
      expect(e.KV_CERTS_DIR).toBe('/certs')
      expect(service(name).ports, `${name} publishes nothing`).toBeUndefined()
    }
  })

  it('sets on the nodes only options kv-node knows', () => {
    const known = new Set(configSpec.map((s) => s.env))
    // The sharding options land with the node side of sharding (issue 17).
    const pending = known.has('KV_SHARD_MAP') ? [] : ['KV_SHARD_MAP', 'KV_SHARD_GROUP']
    for (const name of nodes)
      for (const key of Object.keys(env(name)))
        if (!pending.includes(key)) expect(known, `${name}: ${key}`).toContain(key)
  })

  it('runs the routers from the image, published on 127.0.0.1 only, each with its own id', () => {
    const published = routers.map((name) => {
      const s = service(name)
      expect(s.entrypoint).toEqual(['node', '/app/router/dist/main.js'])
      for (const key of Object.keys(env(name))) expect(key).toMatch(/^KV_ROUTER_/)
      expect(env(name).KV_ROUTER_ID).toBe(name)
      expect(env(name).KV_ROUTER_CERTS_DIR).toBe('/certs')
      expect(s.ports).toHaveLength(1)
      const [ip, hostPort, containerPort] = (s.ports?.[0] ?? '').split(':')
      expect(ip).toBe('127.0.0.1')
      expect(containerPort).toBe(env(name).KV_ROUTER_PORT)
      return hostPort
    })
    expect(new Set(published).size).toBe(routers.length)
  })

  let compose1 = false
  try {
    execFileSync('docker-compose', ['version'], { stdio: 'ignore' })
    compose1 = true
  } catch {
    // not installed: the checks above stand alone
  }
  it.runIf(compose1)('is accepted by docker-compose config', () => {
    expect(() =>
      execFileSync('docker-compose', ['-f', composePath, 'config', '-q'], { stdio: 'pipe' }),
    ).not.toThrow()
  })
})
