import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  RouterConfigError,
  parseRouterConfig,
  routerHelpText,
  routerOptions,
} from '../src/config.js'

const group = ['--group', 'g1=http://127.0.0.1:7001']

function problem(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    parseRouterConfig(argv, env)
  } catch (err) {
    expect(err).toBeInstanceOf(RouterConfigError)
    return (err as Error).message
  }
  throw new Error('the configuration was accepted')
}

describe('the router configuration', () => {
  it('has defaults that make sense together', () => {
    const { config } = parseRouterConfig(group, {})
    expect(config).toMatchObject({
      routerId: 'r1',
      host: '127.0.0.1',
      port: 7100,
      maxLagMs: 1000,
      probeTimeoutMs: 1000,
      rateLimitPerAddressPerSecond: 0,
      rateLimitPerAddressBurst: 1,
      upstreamProtocol: 'http1',
      certFile: undefined,
      identityCert: undefined,
    })
  })

  it('wants exactly one of --group and --shard-map', () => {
    expect(problem([])).toMatch(/--shard-map FILE .* or --group/)
    expect(problem([...group, '--shard-map', 'x.json'])).toMatch(/not both/)
  })

  it('refuses unknown options, bad values and values out of bounds, naming the option', () => {
    expect(problem([...group, '--max-lag'])).toMatch(
      /unknown option --max-lag \(did you mean --max-lag-ms\?\)/,
    )
    expect(problem([...group, '--max-lag-ms', 'soon'])).toMatch(
      /--max-lag-ms \(from command line\) must be a whole number/,
    )
    expect(problem([...group, '--probe-interval-ms', '1'])).toMatch(/at least 20/)
    expect(problem([...group, '--upstream-protocol', 'h3'])).toMatch(/one of http1, h2/)
    expect(problem([...group, '--id', 'no/slash'])).toMatch(/--id "no\/slash" is not valid/)
    expect(problem([...group, '--eject-ms', '5000', '--eject-ms-max', '1000'])).toMatch(
      /--eject-ms-max/,
    )
  })

  it('serves plaintext off loopback only with --insecure', () => {
    expect(problem([...group, '--host', '0.0.0.0'])).toMatch(/only with --insecure/)
    expect(
      parseRouterConfig([...group, '--host', '0.0.0.0', '--insecure'], {}).config.insecure,
    ).toBe(true)
  })

  it('takes the node-style certificate flags, their --tls-* synonyms, and derives the identity from them', () => {
    const { config } = parseRouterConfig(
      [...group, '--tls-cert', 'r.crt', '--tls-key', 'r.key', '--tls-ca', 'ca.crt'],
      {},
    )
    expect(config).toMatchObject({
      certFile: 'r.crt',
      keyFile: 'r.key',
      caFile: 'ca.crt',
      identityCert: 'r.crt',
      identityKey: 'r.key',
    })
    const fromDir = parseRouterConfig([...group, '--certs-dir', '/c', '--id', 'r7'], {}).config
    expect(fromDir).toMatchObject({
      certFile: '/c/r7.crt',
      keyFile: '/c/r7.key',
      caFile: '/c/ca.crt',
    })
    expect(problem([...group, '--cert-file', 'a.crt'])).toMatch(/go together/)
  })

  it('reads the environment and a config file, the command line first', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kv-router-config-'))
    const file = join(dir, 'router.json')
    await writeFile(file, JSON.stringify({ maxLagMs: 250, readFromLeader: true }))
    const { config } = parseRouterConfig([...group, '--config', file, '--max-lag-ms', '300'], {
      KV_ROUTER_RATE_LIMIT_PER_ADDRESS: '50',
    })
    expect(config.maxLagMs).toBe(300)
    expect(config.readFromLeader).toBe(true)
    expect(config.rateLimitPerAddressPerSecond).toBe(50)
    expect(config.rateLimitPerAddressBurst).toBe(100)
    await writeFile(file, JSON.stringify({ maxLag: 1 }))
    expect(problem([...group, '--config', file])).toMatch(/unknown option "maxLag"/)
  })

  it('documents every option in --help', () => {
    const help = routerHelpText()
    for (const spec of routerOptions) {
      expect(help).toContain(spec.flag)
      expect(help).toContain(spec.env)
    }
    expect(parseRouterConfig(['--help'], {}).help).toBe(true)
  })
})
