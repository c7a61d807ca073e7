/**
 * deploy/docker-compose.regions.yml (two regions of 3 on one compose network) read as
 * docker-compose reads it: every node's settings are options kv-node knows, each region's
 * members agree with the regions file every node mounts (which the nodes accept, and whose URLs
 * are the members' network names and ports, covered by their certificates), the client ports
 * are published on 127.0.0.1 as kv-cluster --regions 2 lays them out, and docker-compose
 * accepts the file when it is installed.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'
import { configSpec } from '@kvstore/node'
import { regionsOfFile } from '@kvstore/protocol'
import { regionsLayout } from '../src/kv-cluster-regions.js'

const deploy = fileURLToPath(new URL('../../../deploy/', import.meta.url))
const composePath = `${deploy}docker-compose.regions.yml`
const regionsPath = `${deploy}regions.json`

interface Service {
  hostname?: string
  environment?: Record<string, string>
  ports?: string[]
  volumes?: string[]
  profiles?: string[]
}

const compose = parse(readFileSync(composePath, 'utf8'), { merge: true }) as {
  services: Record<string, Service>
  volumes: Record<string, unknown>
}
const regions = regionsOfFile(JSON.parse(readFileSync(regionsPath, 'utf8')) as unknown)
const nodes = ['n1', 'n2', 'n3', 'n4', 'n5', 'n6']
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

describe('deploy/docker-compose.regions.yml', () => {
  it('runs 2 regions of 3 nodes, and copies the certificates first', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['certs', ...nodes].sort())
    expect(service('certs').profiles).toEqual(['setup'])
    expect(service('certs').volumes).toContain('./certs-regions:/host-certs:ro')
    for (const name of nodes) expect(compose.volumes).toHaveProperty(`${name}-data`)
  })

  it('gives every node the regions file: us n1-n3, eu n4-n6, by network name and port', () => {
    expect(regions.map((r) => [r.id, r.members.map((m) => m.id)])).toEqual([
      ['us', ['n1', 'n2', 'n3']],
      ['eu', ['n4', 'n5', 'n6']],
    ])
    for (const name of nodes) {
      expect(mountOf(service(name), './regions.json'), name).toBe(env(name).KV_REGIONS)
      const member = regions.flatMap((r) => r.members).find((m) => m.id === name)
      // The member's certificate names its id: the URL's host. Its port is the one it listens on.
      const url = new URL(member?.url ?? '')
      expect(url.protocol).toBe('https:')
      expect(url.hostname).toBe(name)
      expect(url.port).toBe(env(name).KV_PORT)
    }
  })

  it("starts each node in its region, with the region's members as its own", () => {
    for (const name of nodes) {
      const e = env(name)
      const region = regions.find((r) => r.members.some((m) => m.id === name))
      expect(e.KV_NODE_ID).toBe(name)
      expect(service(name).hostname).toBe(name)
      expect(e.KV_REGION).toBe(region?.id)
      // --members: id@clientUrl@peerUrl, this region's members (the ids the regions file lists).
      const members = (e.KV_MEMBERS ?? '').split(',').map((m) => m.split('@'))
      expect(members.map(([id]) => id)).toEqual(region?.members.map((m) => m.id))
      for (const [id, clientUrl, peerUrl] of members) {
        // Advertised to clients as the published host address; peers on the network.
        expect(new URL(clientUrl ?? '').port).toBe(env(id ?? '').KV_PORT)
        expect(new URL(clientUrl ?? '').hostname).toBe('127.0.0.1')
        expect(peerUrl).toBe(`https://${id}:7101`)
      }
      expect(e.KV_LEADER).toBe(region?.members[0]?.id)
      expect(e.KV_CERTS_DIR).toBe('/certs')
    }
  })

  it('publishes the client ports on 127.0.0.1 as kv-cluster --regions 2 does, and no peer port', () => {
    const local = regionsLayout({
      regions: 2,
      nodes: 3,
      host: '127.0.0.1',
      clientPort: 7001,
      peerPort: 7101,
    })
    for (const region of local.regions)
      for (const member of region.members) {
        const port = new URL(member.clientUrl).port
        expect(service(member.id).ports, member.id).toEqual([`127.0.0.1:${port}:${port}`])
        expect(env(member.id).KV_PORT).toBe(port)
        expect(env(member.id).KV_REGION).toBe(region.id)
      }
  })

  it('sets on the nodes only options kv-node knows', () => {
    const known = new Set(configSpec.map((s) => s.env))
    for (const name of nodes)
      for (const key of Object.keys(env(name))) expect(known, `${name}: ${key}`).toContain(key)
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
