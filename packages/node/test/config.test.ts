import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  clusterOf,
  ConfigError,
  configSpec,
  helpText,
  parseConfig,
  replicationFrameBytesMax,
} from '../src/index.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-config-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('parseConfig', () => {
  it('has sane defaults', () => {
    const { config, help } = parseConfig([], {})
    expect(help).toBe(false)
    expect(config).toMatchObject({
      nodeId: 'n1',
      dataDir: './data/n1',
      host: '127.0.0.1',
      port: 7001,
      fsync: true,
      keyBytesMax: 1024,
      valueBytesMax: 1024 * 1024,
    })
  })

  it('takes flags over environment over config file over defaults', async () => {
    const file = join(dir, 'node.json')
    await writeFile(
      file,
      JSON.stringify({ nodeId: 'from-file', port: 7100, logLevel: 'debug', fsync: false }),
    )
    const { config } = parseConfig(['--config', file, '--port=7300'], {
      KV_PORT: '7200',
      KV_NODE_ID: 'from-env',
    })
    expect(config.port).toBe(7300)
    expect(config.nodeId).toBe('from-env')
    expect(config.logLevel).toBe('debug')
    expect(config.fsync).toBe(false)
    expect(config.dataDir).toBe('./data/from-env')
  })

  it('reads sizes with units and booleans in every spelling', () => {
    const { config } = parseConfig(
      [
        '--value-bytes-max',
        '4MiB',
        '--request-body-bytes-max',
        '8m',
        '--no-fsync',
        '--read-cache-bytes',
        '0',
      ],
      {},
    )
    expect(config.valueBytesMax).toBe(4 * 1024 * 1024)
    expect(config.requestBodyBytesMax).toBe(8 * 1024 * 1024)
    expect(config.fsync).toBe(false)
    expect(config.readCacheBytes).toBe(0)
    expect(parseConfig(['--fsync', 'off'], {}).config.fsync).toBe(false)
    expect(parseConfig([], { KV_FSYNC: 'yes' }).config.fsync).toBe(true)
  })

  it.each([
    [['--bogus'], /unknown option --bogus/],
    [['--fsnc'], /unknown option --fsnc/],
    [['--port', '70000'], /--port .* at most 65535/],
    [['--port', 'abc'], /--port .* whole number/],
    [['--port'], /--port needs a value/],
    [['--value-bytes-max', '2TB'], /--value-bytes-max .* whole number/],
    [['--key-bytes-max', '64KiB'], /at most 8192/],
    [['--log-level', 'loud'], /one of fatal, error/],
    [['--fsync', 'perhaps'], /true or false/],
    [['--value-bytes-max', '8MiB'], /requestBodyBytesMax .* must be at least valueBytesMax/],
    [['--list-limit-default', '5000'], /listLimitDefault .* must not exceed listLimitMax/],
    [['--config', '/nonexistent/kv.json'], /cannot read config file/],
    [
      ['--write-queue-bytes-max', '1MiB'],
      /writeQueueBytesMax .* must be at least requestBodyBytesMax/,
    ],
  ])('refuses %j', (argv, message) => {
    expect(() => parseConfig(argv, {})).toThrow(ConfigError)
    expect(() => parseConfig(argv, {})).toThrow(message)
  })

  it('refuses bad config files', async () => {
    const bad = join(dir, 'bad.json')
    await writeFile(bad, '{ nodeId: n1 }')
    expect(() => parseConfig(['--config', bad], {})).toThrow(/not valid JSON/)
    const unknown = join(dir, 'unknown.json')
    await writeFile(unknown, JSON.stringify({ nodeID: 'n1' }))
    expect(() => parseConfig(['--config', unknown], {})).toThrow(/unknown option "nodeID"/)
  })

  it('--help lists every option with its environment variable', () => {
    expect(parseConfig(['--help'], {}).help).toBe(true)
    const text = helpText()
    for (const spec of configSpec) {
      expect(text).toContain(spec.flag)
      expect(text).toContain(spec.env)
    }
  })
})

describe('cluster configuration', () => {
  const members =
    'n1@https://127.0.0.1:7001@https://127.0.0.1:7101,n2@https://127.0.0.1:7002@https://127.0.0.1:7102,n3@https://127.0.0.1:7003@https://127.0.0.1:7103'
  // parseConfig names the files; the node reads and checks them when it starts.
  const certs = ['--certs-dir', '/etc/kv/certs']

  it('reads the members from a flag, the environment or JSON, and leads with the first by default', () => {
    const fromFlag = parseConfig(['--id', 'n2', '--members', members, ...certs], {}).config
    expect(fromFlag.mode).toBe('single-leader')
    const cluster = clusterOf(fromFlag)
    expect(cluster.self).toEqual({
      id: 'n2',
      clientUrl: 'https://127.0.0.1:7002',
      peerUrl: 'https://127.0.0.1:7102',
    })
    expect(cluster.leaderId).toBe('n1')
    const json = JSON.stringify(
      members.split(',').map((m) => {
        const [id, clientUrl, peerUrl] = m.split('@')
        return { id, clientUrl, peerUrl }
      }),
    )
    const fromEnv = parseConfig([], {
      KV_NODE_ID: 'n3',
      KV_MEMBERS: json,
      KV_LEADER: 'n2',
      KV_CERTS_DIR: '/etc/kv/certs',
    }).config
    expect(fromEnv.certFile).toBe('/etc/kv/certs/n3.crt')
    expect(fromEnv.keyFile).toBe('/etc/kv/certs/n3.key')
    expect(fromEnv.caFile).toBe('/etc/kv/certs/ca.crt')
    expect(clusterOf(fromEnv)).toMatchObject({ leaderId: 'n2', self: { id: 'n3' } })
    expect(clusterOf(fromEnv).members).toEqual(cluster.members)
    expect(parseConfig([], {}).config.mode).toBe('standalone')
  })

  it('a joining leaderless member may name fewer members than N: the ring it learns has them', () => {
    const seedsAndSelf = members.split(',').slice(0, 2).join(',')
    const args = ['--id', 'n2', '--mode', 'leaderless', '--members', seedsAndSelf, ...certs]
    expect(() => parseConfig(args, {})).toThrow(/replicas \(3\) must be at most/)
    const { config } = parseConfig([...args, '--join', '--handoff-max-rate', '8MiB'], {})
    expect(config.join).toBe(true)
    expect(config.handoffBytesPerSMax).toBe(8 * 1024 * 1024)
  })

  it.each([
    [['--id', 'n9', '--members', members, ...certs], /n9.*is not among --members/],
    [['--members', members, '--leader', 'n7', ...certs], /--leader "n7" is not among --members/],
    [['--members', 'n1@https://127.0.0.1:7001'], /must be id@clientURL@peerURL/],
    [['--members', 'n1@ftp://h:1@https://h:2'], /must look like https:\/\/host:port/],
    [['--members', 'n1@https://h@https://h:2'], /must look like https:\/\/host:port/],
    [['--members', `${members},n1@https://127.0.0.1:7004@https://127.0.0.1:7104`], /repeats n1/],
    [['--members', `${members},n4@https://127.0.0.1:7001@https://127.0.0.1:7104`], /repeats/],
    // Security: members always talk mutual TLS, and URLs say so.
    [['--members', members], /needs certificates: members talk mutual TLS/],
    [
      ['--members', members.replaceAll('https://127.0.0.1:71', 'http://127.0.0.1:71'), ...certs],
      /peer URL of n1 \(http:\/\/127.0.0.1:7101\) must start with https:/,
    ],
    [
      ['--members', members.replaceAll('https://127.0.0.1:70', 'http://127.0.0.1:70'), ...certs],
      /client URL of n1 \(http:\/\/127.0.0.1:7001\) must start with https:/,
    ],
    [['--cert-file', '/x.crt'], /--cert-file and --key-file go together/],
    [['--host', '0.0.0.0'], /refusing to serve plaintext HTTP on 0.0.0.0/],
    [
      [
        '--host',
        '10.0.0.5',
        '--unsafe-plaintext-peers',
        '--insecure',
        '--members',
        'n1@http://10.0.0.5:1@http://10.0.0.5:2',
      ],
      /plaintext peer ports are for tests on loopback only/,
    ],
    [['--unsafe-plaintext-peers'], /needs a cluster mode/],
    [
      ['--inflight-body-bytes-max', '2MiB'],
      /inflightBodyBytesMax \(2097152\) must be at least requestBodyBytesMax/,
    ],
    [['--members', '[{"id": 1}]'], /needs string id, clientUrl and peerUrl/],
    [['--members', '[oops'], /--members is not valid JSON/],
    [['--mode', 'single-leader'], /needs --members/],
    [['--mode', 'standalone', '--join'], /--join needs a cluster mode/],
    [
      ['--mode', 'leaderless', '--members', members, ...certs, '--handoff-max-rate', '1KiB'],
      /--handoff-max-rate .*must be at least 65536/,
    ],
    [
      [
        '--members',
        members,
        ...certs,
        '--log-retention-entries',
        '5000',
        '--log-retention-entries-max',
        '1000',
      ],
      /logRetentionEntriesMax \(1000\) must be at least logRetentionEntries \(5000\)/,
    ],
  ])('refuses %j', (args, message) => {
    expect(() => parseConfig(args, {})).toThrow(ConfigError)
    expect(() => parseConfig(args, {})).toThrow(message)
  })

  it('sizes replication frames for the largest write, and refuses limits no frame can carry', () => {
    const { config } = parseConfig(['--members', members, ...certs], {})
    // A 4 MiB batch body still fits one frame with a full 1 MiB append before it.
    expect(replicationFrameBytesMax(config)).toBeGreaterThan(
      config.requestBodyBytesMax + config.replicationAppendBytesMax,
    )
    const big = ['--value-bytes-max', '64MiB', '--request-body-bytes-max', '64MiB']
    // Alone, a node may take such values; in a cluster no frame could carry them.
    expect(parseConfig(big, {}).config.valueBytesMax).toBe(64 * 1024 * 1024)
    expect(() => parseConfig(['--members', members, ...certs, ...big], {})).toThrow(
      /replication frames must carry the largest write/,
    )
  })

  it('serves plaintext off loopback only when told --insecure, and peers in plaintext only on loopback', () => {
    expect(parseConfig(['--host', '0.0.0.0', '--insecure'], {}).config.insecure).toBe(true)
    expect(parseConfig(['--host', '0.0.0.0', ...certs], {}).config.certFile).toBe(
      '/etc/kv/certs/n1.crt',
    )
    const plain = members.replaceAll('https://', 'http://')
    const { config } = parseConfig(['--members', plain, '--unsafe-plaintext-peers'], {})
    expect(config.unsafePlaintextPeers).toBe(true)
  })
})
